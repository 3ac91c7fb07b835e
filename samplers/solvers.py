"""Training-free ODE solvers for the probability-flow ODE: one update rule per solver, registered once.

Every solver integrates dx/dsigma = d(x; sigma) = (x - D(x; sigma)) / sigma (Karras et al. 2022, EDM, eq. 1 with the
score of eq. 3, sigma(t) = t, s(t) = 1) over a schedule t_0 > ... > t_{N-1} > 0. The shared stepping loop
(`samplers.stepping.integrate`: net calls, AFS, history, callbacks) hands each rule one `Step` `s` with the
first-stage derivative `s.d` at (x_i, t_i); the rule returns x_{i+1}:

    rule(s, **options) -> x_next

Options are checked and prepared once per run by the spec's `prepare(t_steps, **options)` (e.g. DEIS's
coefficient table). The state stays in the dtype of `x`; `samplers.sample` runs them in float32, as the GITS
toolbox (zju-pi/diff-sampler) does, so outputs match it to float32 round-off.

NFE below is for N timestamps, without AFS (saves one) and without denoise_to_zero (adds one); the registry
entries at the end of this file hold the same counts for `samplers.solver_nfe`.
"""

import numpy as np
import torch

from .registry import SolverSpec, register_solver
from .schedules import vp_fit

# ----------------------------------------------------------------------------
# Shared pieces.


def dynamic_threshold(x0, quantile=0.995):
    """Dynamic thresholding (Saharia et al. 2022, Imagen): s = max(1, q_0.995(|x0|)) per sample.

    Returns clip(x0, -s, s) / s. Kept as in the GITS toolbox: always on for DPM-Solver++ and UniPC in
    data-prediction mode (it is inactive when |x0| <= 1 everywhere).
    """
    s = torch.quantile(x0.abs().reshape(x0.shape[0], -1), quantile, dim=1).clamp(min=1)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _model_output(s, predict_x0):
    """Output of the exponential-integrator solvers at the first stage: thresholded D in data mode, d in noise
    mode (D = x - t d, the inverse of d = (x - D) / t)."""
    return dynamic_threshold(s.x_eval - s.t_cur * s.d) if predict_x0 else s.d


def _lambda(t):
    # Half log-SNR (Lu et al. 2022a, DPM-Solver: lambda = ln(alpha / sigma)) with alpha = 1: lambda = -ln(sigma).
    return -torch.log(t)


def _check_order(name, max_order, highest):
    if not isinstance(max_order, (int, np.integer)) or not 1 <= max_order <= highest:
        raise ValueError(f'{name}: max_order must be an integer in 1..{highest} (got {max_order!r})')
    return int(max_order)


def _order_check(name, highest):
    """`prepare` hook that validates max_order."""
    def prepare(t_steps, max_order, **options):
        return dict(max_order=_check_order(name, max_order, highest), **options)
    return prepare

# ----------------------------------------------------------------------------
# Single-step solvers.


def euler(s):
    """Euler (= DDIM, Song et al. 2021). NFE = N - 1."""
    return s.x + s.h * s.d  # explicit Euler step (Karras et al. 2022, Alg. 1, Euler part)


def heun(s):
    """Heun's 2nd-order method (Karras et al. 2022, EDM, Algorithm 1), corrected on every step. NFE = 2 (N - 1).

    On the AFS step only the first evaluation is replaced; the corrector still calls the net.
    """
    x_pred = s.x + s.h * s.d  # Karras et al. 2022, Alg. 1: Euler predictor
    d_prime = s.model.derivative(x_pred, s.t_next)  # Alg. 1: derivative at the predictor
    return s.x + s.h * (0.5 * s.d + 0.5 * d_prime)  # Alg. 1: trapezoidal correction


def _dpm_prepare(t_steps, r):
    if not 0 < r <= 1:
        raise ValueError(f'dpm: r must be in (0, 1] (got {r!r})')
    return dict(r=r)


def dpm(s, r=0.5):
    """DPM-Solver-2 (Lu et al. 2022a) written in sigma, as in the GITS toolbox. NFE = 2 (N - 1).

    In VE form a first-order DPM-Solver (DDIM) step is an Euler step in sigma, so both stages are Euler steps.
    The intermediate point is t_mid = t_next^r t_cur^(1-r) (r = 1/2: the midpoint in lambda = -ln sigma).
    """
    t_mid = (s.t_next ** r) * (s.t_cur ** (1 - r))  # Lu et al. 2022a, DPM-Solver-2: lambda_mid = lambda_cur + r h
    x_mid = s.x + (t_mid - s.t_cur) * s.d
    d_mid = s.model.derivative(x_mid, t_mid)
    # Lu et al. 2022a, DPM-Solver-2 (general r): weights 1/(2r) on the midpoint, 1 - 1/(2r) on the start.
    return s.x + s.h * ((1 / (2 * r)) * d_mid + (1 - 1 / (2 * r)) * s.d)

# ----------------------------------------------------------------------------
# Linear multistep solvers on the derivative d (Adams-Bashforth family).

# Adams-Bashforth coefficients for equal steps (Hairer, Norsett & Wanner, Solving ODEs I, sec. III.1), newest
# first. iPNDM (Zhang & Chen 2023, DEIS) applies them to the sigma increment.
# Stored as (numerators, denominator).
_AB_COEFFS = {1: ((1,), 1), 2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24)}


def _combine(coeffs, s):
    """sum_k c_k d_{i-k}: coefficients newest first over the current and the past derivatives."""
    total = coeffs[0] * s.d
    for c, past in zip(coeffs[1:], s.history):
        total = total + c * past.keep
    return total


def ipndm(s, max_order=4):
    """Improved PNDM (iPNDM of Zhang & Chen 2023, DEIS): equal-step Adams-Bashforth weights on dsigma.

    Order min(max_order, i + 1) at step i (warm-up 1, 2, 3, 4, 4, ...); the weights ignore the uneven sigma
    spacing, which makes the method second order on a non-uniform grid. max_order 1..4 (1 is Euler; the GITS
    toolbox crashed there, as for ipndm_v and deis). NFE = N - 1.
    """
    numerators, denominator = _AB_COEFFS[min(max_order, s.i + 1)]
    return s.x + s.h * _combine(numerators, s) / denominator  # iPNDM (DEIS paper): x += dsigma * AB combination


def _ipndm_v_coeffs(order, h0, h1=None, h2=None, h3=None):
    """Weights c_k (newest first) of the variable-step iPNDM update x_{i+1} = x_i + h0 sum_k c_k d_{i-k}.

    h0 = t_{i+1} - t_i, h1 = t_i - t_{i-1}, h2 = t_{i-1} - t_{i-2}, h3 = t_{i-2} - t_{i-3} (signed). These are the
    GITS toolbox's weights (zju-pi/diff-sampler `ipndm_v`), kept as published. Order 2 is variable-step AB2
    (cf. Hairer, Norsett & Wanner, sec. III.5). Order 3 reduces to AB3 on equal steps; on uneven steps it is exact
    only for linear d but still converges at third order. Order 4 gives (57, -65, 43, -11)/24 on equal steps
    instead of AB4's (55, -59, 37, -9)/24, and on uneven steps its weights do not sum to one
    (sum = 1 + T2 A (h2/h3 - h1/h2)); it converges only once step ratios vary slowly (measured order ~2).
    """
    if order == 1:
        return (1.0,)
    a = h0 / (2 * h1)
    if order == 2:
        return (1 + a, -a)  # variable-step AB2: integral of the line through d_i, d_(i-1)
    t1 = 0.5 * (1 - h0 ** 2 / (3 * h1 * (h1 + h2)))  # toolbox's third-order term (5/12 on equal steps)
    if order == 3:
        return (1 + a + t1, -a - (1 + h1 / h2) * t1, t1 * h1 / h2)
    # Order 4 exactly as the toolbox (see docstring).
    t2 = ((0.5 * (1 - h0 / (3 * (h0 + h1))) + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
          * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
    big_a = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return (1 + a + t1 + t2,
            -a - (1 + h1 / h2) * t1 - (1 + h1 / h2 + big_a) * t2,
            t1 * h1 / h2 + (h1 / h2 + big_a * (1 + h2 / h3)) * t2,
            -t2 * big_a * h1 / h2)


def ipndm_v(s, max_order=4):
    """Variable-step iPNDM (Zhang & Chen 2023; GITS toolbox `ipndm_v`). NFE = N - 1.

    Order min(max_order, i + 1) with the toolbox's step-size-dependent weights (see `_ipndm_v_coeffs`: order 2
    is variable-step AB2; orders 3 and 4 are kept as published, including the non-AB4 order-4 weights, which
    can be unstable on very uneven schedules). max_order 1..4 (1 is Euler).
    """
    t, i = s.t_steps, s.i
    order = min(max_order, i + 1)
    hs = [s.h] + [t[i - k] - t[i - k - 1] for k in range(order - 1)]
    return s.x + s.h * _combine(_ipndm_v_coeffs(order, *hs), s)


# DEIS-tAB: VP map hard-coded to (sigma_min, sigma_max) = (0.002, 80) whatever the model (as the toolbox does).
_DEIS_VP_RANGE = (0.002, 80.0)
_DEIS_NODES = 10000


def _deis_tab_table(t_steps, max_order):
    """C[i][k] of DEIS-tAB (Zhang & Chen 2023): integrals of Lagrange polynomials in VP time tau.

    C_{i,k} = int_{tau_i}^{tau_{i+1}} (dsigma/dtau) l_k(tau) dtau, with l_k the Lagrange basis on tau_i, ...,
    tau_{i-p+1}. As in the GITS toolbox, the integral is the Riemann sum (tau_{i+1} - tau_i) / M sum_m f(s_m) l_k(s_m)
    over M = 10000 float32-linspace nodes including both ends (relative error ~1e-5; kept for bit-compatibility).
    """
    beta_d, beta_min = (float(v) for v in vp_fit(*_DEIS_VP_RANGE, dtype=torch.float32))
    t32 = t_steps.detach().to(torch.float32).cpu()
    # EDM Table 1, VP sigma^{-1}: tau = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d.
    tau = ((beta_min ** 2 + 2 * beta_d * torch.log(t32 ** 2 + 1)).sqrt() - beta_min) / beta_d
    table = []
    for i in range(len(t32) - 1):
        order = min(max_order, i + 1)
        if order == 1:
            table.append([t_steps[i + 1] - t_steps[i]])  # first order is plain Euler in sigma (as the toolbox)
            continue
        s = torch.linspace(float(tau[i]), float(tau[i + 1]), _DEIS_NODES, dtype=torch.float32).numpy()
        s = s.astype(np.float64)
        # dsigma/dtau = (beta_d tau + beta_min) / (2 sqrt(abar (1 - abar))), ln abar = -beta_d tau^2/2 - beta_min tau
        # (Song et al. 2021, VP-SDE marginals; sigma = sqrt((1 - abar) / abar)).
        abar = np.exp(-0.5 * beta_d * s ** 2 - beta_min * s)
        f = 0.5 * (beta_d * s + beta_min) / np.sqrt(abar * (1 - abar))
        nodes = [float(tau[i - j]) for j in range(order)]
        width = (float(tau[i + 1]) - float(tau[i])) / _DEIS_NODES
        row = []
        for k in range(order):
            ell = np.ones_like(s)
            for j in range(order):
                if j != k:
                    ell = ell * (s - nodes[j]) / (nodes[k] - nodes[j])  # Lagrange basis l_k
            row.append(float(np.sum(f * ell)) * width)
        table.append(row)
    return table


def _rhoab_table(t_steps, max_order):
    """C[i][k] of DEIS rhoAB (Zhang & Chen 2023): Adams-Bashforth in rho = sigma.

    C_{i,k} = int_{t_i}^{t_{i+1}} l_k(sigma) dsigma, with l_k the Lagrange basis on t_i, ..., t_{i-p+1}; the
    integrals are exact (Gauss-Legendre with 4 points is exact up to degree 7).
    """
    t64 = t_steps.detach().to(torch.float64).cpu().numpy()
    gx, gw = np.polynomial.legendre.leggauss(4)
    table = []
    for i in range(len(t64) - 1):
        order = min(max_order, i + 1)
        a, b = t64[i], t64[i + 1]
        sig = 0.5 * (b - a) * gx + 0.5 * (a + b)
        nodes = [t64[i - j] for j in range(order)]
        row = []
        for k in range(order):
            ell = np.ones_like(sig)
            for j in range(order):
                if j != k:
                    ell = ell * (sig - nodes[j]) / (nodes[k] - nodes[j])
            row.append(float(0.5 * (b - a) * np.sum(gw * ell)))
        table.append(row)
    return table


DEIS_MODES = ('tab', 'rhoab')


def _deis_prepare(t_steps, max_order, deis_mode):
    max_order = _check_order('deis', max_order, 4)
    if deis_mode not in DEIS_MODES:
        raise ValueError(f"deis: deis_mode must be one of {', '.join(DEIS_MODES)} (got {deis_mode!r})")
    table = (_deis_tab_table if deis_mode == 'tab' else _rhoab_table)(t_steps, max_order)
    return dict(table=table)


def deis(s, table):
    """DEIS (Zhang & Chen 2023): x_{i+1} = x_i + sum_k C_{i,k} d_{i-k}, order min(max_order, i + 1). NFE = N - 1.

    deis_mode='tab': polynomial extrapolation of d in VP time tau (DEIS-tAB, as in the toolbox).
    deis_mode='rhoab': polynomial extrapolation in rho = sigma, i.e. variable-step Adams-Bashforth (DEIS-rhoAB).
      The GITS toolbox's 'rhoab' used one node too many (crashing for max_order 2, 3 and freezing the
      coefficients from step 4 on for max_order 4); this implementation follows the paper.
    max_order 1..4. The coefficient table C is computed once per run (`_deis_prepare`).
    """
    coeffs = table[s.i]
    x_next = s.x + coeffs[0] * s.d  # DEIS multistep update in sigma: x += sum_k C_ik d_(i-k)
    for c, past in zip(coeffs[1:], s.history):
        x_next = x_next + c * past.keep
    return x_next

# ----------------------------------------------------------------------------
# Exponential-integrator multistep solvers (VE form, alpha = 1).


def _dpmpp_order(i, n_steps, max_order, lower_order_final):
    """Order of step i of N-1 steps: warm-up first, then optionally lower orders on the final steps."""
    if i + 1 < max_order:
        return i + 1
    return min(max_order, n_steps - i) if lower_order_final else max_order


def dpmpp(s, max_order=3, predict_x0=True, lower_order_final=True):
    """Multistep DPM-Solver++ (Lu et al. 2022b: 2M, and 3M as in the authors' code), VE form. NFE = N - 1.

    predict_x0=True: data prediction (DPM-Solver++) with 0.995-quantile dynamic thresholding, kept from the
    toolbox; predict_x0=False: noise prediction (multistep DPM-Solver). Order min(max_order, i + 1) during
    warm-up; with lower_order_final the last steps use min(max_order, steps left). max_order 1..3.
    """
    x, t_cur, t_next = s.x, s.t_cur, s.t_next
    m = s.keep = _model_output(s, predict_x0)
    s.d_report = (x - m) / t_cur if predict_x0 else m
    ms = [p.keep for p in reversed(s.history[:2])] + [m]  # model outputs, newest last
    ts = [p.t_cur for p in reversed(s.history[:2])] + [t_cur]
    order = _dpmpp_order(s.i, s.num, max_order, lower_order_final)
    h = _lambda(t_next) - _lambda(t_cur)
    if predict_x0:
        phi_1 = torch.exp(-h) - 1
        x_next = (t_next / t_cur) * x - phi_1 * m  # Lu et al. 2022b, DPM-Solver++(1) = DDIM, data prediction
    else:
        phi_1 = torch.exp(h) - 1
        x_next = x - t_next * phi_1 * m  # Lu et al. 2022a, DPM-Solver-1 = DDIM, noise prediction
    if order >= 2:
        r0 = (_lambda(ts[-1]) - _lambda(ts[-2])) / h
        d1_0 = (ms[-1] - ms[-2]) / r0
        if order == 2:
            d1 = d1_0
            # Lu et al. 2022b, DPM-Solver++(2M): x_t = (t/s) x - phi_1 m - phi_1 D1 / 2.
            x_next = x_next - 0.5 * phi_1 * d1 if predict_x0 else x_next - 0.5 * t_next * phi_1 * d1
        else:
            r1 = (_lambda(ts[-2]) - _lambda(ts[-3])) / h
            d1_1 = (ms[-2] - ms[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # DPM-Solver++(3M): D1, D2 from three outputs
            d2 = (d1_0 - d1_1) / (r0 + r1)
            if predict_x0:
                phi_2 = phi_1 / h + 1
                phi_3 = phi_2 / h - 0.5
                x_next = x_next + phi_2 * d1 - phi_3 * d2  # DPM-Solver++(3M) update (data prediction)
            else:
                phi_2 = phi_1 / h - 1
                phi_3 = phi_2 / h - 0.5
                x_next = x_next - t_next * (phi_2 * d1 + phi_3 * d2)  # 3M update, noise prediction
    return x_next


UNIPC_VARIANTS = ('bh1', 'bh2')


def _unipc_update(x, t, ms, ts, order, predict_x0, variant, corrector):
    """One UniPC step of order p from the buffer (newest last) to time t (Zhao et al. 2023, UniPC, VE form).

    Returns (x_t predicted, function(m_t) -> corrected x_t or None).
    """
    m0, t0 = ms[-1], ts[-1]
    h = _lambda(t) - _lambda(t0)
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lambda(ts[-(k + 1)]) - _lambda(t0)) / h  # UniPC: r_k = (lambda_k - lambda_0) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)  # D_k = (m_k - m_0) / r_k
    rks.append(torch.ones_like(h))
    rks = torch.stack(rks)
    hh = -h if predict_x0 else h  # data prediction integrates e^{-h}, noise prediction e^{h}
    h_phi_1 = torch.exp(hh) - 1  # phi_1(hh) * hh
    b_h = hh if variant == 'bh1' else torch.exp(hh) - 1  # Zhao et al. 2023, B_1(h) = h, B_2(h) = e^h - 1
    # g_1 = phi_1/hh - 1, g_{j+1} = g_j / hh - 1/(j+1)!; b_j = j! g_j / B(h) (Zhao et al. 2023, UniPC).
    g = h_phi_1 / hh - 1
    fact = 1
    rows, b = [], []
    for j in range(1, order + 1):
        rows.append(rks ** (j - 1))  # R_{jk} = r_k^{j-1}
        b.append(g * fact / b_h)
        fact *= j + 1
        g = g / hh - 1 / fact
    big_r = torch.stack(rows)
    b = torch.stack(b)

    if len(d1s) > 0:
        d1s = torch.stack(d1s, dim=1)  # [B, p-1, ...]
        # Predictor weights (UniP-p): rho = [1/2] for p = 2, else solve R_{p-1} rho = b_{p-1}.
        rhos_p = torch.tensor([0.5], dtype=x.dtype, device=x.device) if order == 2 \
            else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        pred_res = torch.einsum('k,bk...->b...', rhos_p, d1s)
    else:
        d1s, pred_res = None, 0
    if predict_x0:
        x_base = (t / t0) * x - h_phi_1 * m0  # UniP-p, data prediction (Zhao et al. 2023), alpha = 1
        x_pred = x_base - b_h * pred_res
    else:
        x_base = x - t * h_phi_1 * m0  # UniP-p, noise prediction (Zhao et al. 2023), alpha = 1
        x_pred = x_base - t * b_h * pred_res
    if not corrector:
        return x_pred, None
    # Corrector weights (UniC-p): rho = [1/2] for p = 1, else solve R rho = b.
    rhos_c = torch.tensor([0.5], dtype=x.dtype, device=x.device) if order == 1 else torch.linalg.solve(big_r, b)

    def correct(m_t):
        corr_res = torch.einsum('k,bk...->b...', rhos_c[:-1], d1s) if d1s is not None else 0
        corr = corr_res + rhos_c[-1] * (m_t - m0)
        return x_base - b_h * corr if predict_x0 else x_base - t * b_h * corr  # UniC update

    return x_pred, correct


def _unipc_prepare(t_steps, max_order, variant, **options):
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unipc: variant must be one of {', '.join(UNIPC_VARIANTS)} (got {variant!r})")
    return dict(max_order=_check_order('unipc', max_order, 3), variant=variant, **options)


def unipc(s, max_order=3, predict_x0=True, lower_order_final=True, variant='bh2'):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector, B(h) variant 'bh1' or 'bh2'. max_order 1..3.

    NFE = N - 1: one evaluation at t_0 plus one corrector evaluation per step except the last. As in the GITS
    toolbox, a step that is still in warm-up (i + 1 < max_order) runs the corrector even if it is the last step,
    which costs one more evaluation when N - 1 < max_order (the toolbox did not count it; `solver_nfe` does).
    The corrector's evaluation at the predicted point is reused as the next step's model output.
    Data-prediction mode applies 0.995-quantile dynamic thresholding (kept from the toolbox).
    """
    i, x = s.i, s.x
    m = s.keep = _model_output(s, predict_x0)
    s.d_report = (x - m) / s.t_cur if predict_x0 else m
    warmup = i + 1 < max_order
    if warmup:
        order, corrector = i + 1, True
    else:
        order = min(max_order, s.num - i) if lower_order_final else max_order
        corrector = i < s.num - 1
    ms = [p.keep for p in reversed(s.history[:max_order - 1])] + [m]  # newest last
    ts = [p.t_cur for p in reversed(s.history[:max_order - 1])] + [s.t_cur]
    x_next, correct = _unipc_update(x, s.t_next, ms, ts, order, predict_x0, variant, corrector)
    if correct is None:
        return x_next
    # The model output at the predicted point is both the corrector input and the next step's model output.
    d_pred = s.model.derivative(x_next, s.t_next)
    s.reuse = (x_next, d_pred)
    return correct(dynamic_threshold(x_next - s.t_next * d_pred) if predict_x0 else d_pred)

# ----------------------------------------------------------------------------
# Registry entries (GITS toolbox defaults, except max_order 3 for dpmpp/unipc, whose toolbox default of 4 fails).


def _unipc_nfe(num_steps, options):
    n = num_steps - 1
    return n + int(n < options['max_order'])  # warm-up corrector on the final step (see `unipc`)


for _spec in (
    SolverSpec('euler', euler, order=1, teacher=True, doc='Euler (DDIM)'),
    SolverSpec('heun', heun, evals_per_step=2, order=2, doc='Heun (EDM Algorithm 1)'),
    SolverSpec('dpm', dpm, dict(r=0.5), evals_per_step=2, order=2, doc='DPM-Solver-2', prepare=_dpm_prepare),
    SolverSpec('dpmpp', dpmpp, dict(max_order=3, predict_x0=True, lower_order_final=True), max_order=3, order=2,
               doc='multistep DPM-Solver++', prepare=_order_check('dpmpp', 3)),
    SolverSpec('ipndm', ipndm, dict(max_order=4), max_order=4, order=2, doc='improved PNDM',
               prepare=_order_check('ipndm', 4)),
    SolverSpec('ipndm_v', ipndm_v, dict(max_order=4), max_order=4, order=2, doc='variable-step iPNDM',
               prepare=_order_check('ipndm_v', 4)),
    SolverSpec('deis', deis, dict(max_order=4, deis_mode='tab'), max_order=4, order=3, doc='DEIS',
               prepare=_deis_prepare),
    SolverSpec('unipc', unipc, dict(max_order=3, predict_x0=True, lower_order_final=True, variant='bh2'),
               max_order=3, order=3, nfe=_unipc_nfe, teacher=False, doc='UniPC',
               prepare=_unipc_prepare),
):
    register_solver(_spec)

__all__ = ['dynamic_threshold', 'euler', 'heun', 'dpm', 'ipndm', 'ipndm_v', 'deis', 'dpmpp', 'unipc',
           'DEIS_MODES', 'UNIPC_VARIANTS']
