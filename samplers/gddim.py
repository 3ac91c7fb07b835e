"""gDDIM for CLD (Zhang, Tao & Chen, ICLR 2023) and the Euler-Maruyama baseline on the same reverse SDE.

Net contract: see `samplers.cld` (net(u, t, class_labels) -> eps, u = (x, v) stacked on the channel axis); the
process comes from the net (`net.cld`) or the `cld=` argument.
Reverse-time family of gDDIM (lambda = `langevin` >= 0; 0 is the probability-flow ODE, 1 the reverse SDE):
    du = [F_t u + (1 + lambda^2) / 2 G_t G_t^T R_t^-T eps(u, t)] dt + lambda G_t dW.
Every sampler here is a linear multistep recursion per pixel,
    u_{i+1} = Psi_i u_i + sum_j C_ij eps_{i-j} + sqrt(P_i) z_i,    z_i = randn_like(u),
with 2x2 matrices computed in float64 once per grid (docs/cld_gddim.md):
- deterministic gDDIM (lambda = 0): Psi_i = Psi(t_{i+1}, t_i) and C_ij = int_{t_i}^{t_{i+1}} Psi(t_{i+1}, tau)
  G G^T R_tau^-T / 2 l_ij(tau) dtau, with l_ij the Lagrange basis in t through t_i .. t_{i-q} (q = min(max_order - 1,
  i)), integrated by parts (so R^-1 never appears) with Gauss-Legendre panels. q = 0 is the closed form
  C_i0 = R_{t_{i+1}} - Psi(t_{i+1}, t_i) R_{t_i}, exact for point-mass data.
- stochastic gDDIM (lambda > 0, order 0): the Dirac-approximation step of gDDIM with the exact transition of
  F_hat = F + (1 + lambda^2) / 2 G G^T Sigma^-1 and its noise covariance P (which solves dP/dtau = F_hat P + P F_hat^T
  - lambda^2 G G^T, i.e. P = Sigma_t - Psi_hat Sigma_s Psi_hat^T), integrated in the frame of R. Exact for
  point-mass data at any step count.
- Euler-Maruyama: Psi_i = I - h F_{t_i}, C_i0 = -h (1 + lambda^2) / 2 G G^T R^-T, P_i = lambda^2 h G G^T.
The final step (on by default) is gDDIM's noise-free Euler step of the reverse-SDE drift from t_min to 0:
u <- u - t_min (F u + G G^T R^-T eps), one more network evaluation. So NFE = len(t_steps) - 1 + denoise_final.
"""

import math

import numpy as np
import torch

from .registry import SolverSpec, register_solver
from .schedules import gddim_schedule as time_steps  # (re-exported: samplers.gddim.time_steps)
from .stepping import StepRecord

_GL_X, _GL_W = (torch.as_tensor(g, dtype=torch.float64) for g in np.polynomial.legendre.leggauss(16))

# ----------------------------------------------------------------------------
# Time grid: `time_steps(num_steps)` (samplers.schedules.gddim_schedule).


def _check_steps(t_steps):
    t = torch.as_tensor(t_steps, dtype=torch.float64).cpu().reshape(-1)
    if len(t) < 2 or not bool((t[1:] < t[:-1]).all()) or not bool(t[-1] > 0):
        raise ValueError('t_steps must be a decreasing sequence of at least two positive times')
    return t

# ----------------------------------------------------------------------------
# Coefficients (float64, on the CPU).


def _prod(factors, like):
    out = torch.ones_like(like)
    for f in factors:
        out = out * f
    return out


def _lagrange(nodes, tau):
    """Lagrange basis through nodes [n, m] and its derivative at tau [n, P]: two tensors [n, m, P]."""
    m = nodes.shape[1]
    values, slopes = [], []
    for j in range(m):
        others = [nodes[:, o, None] for o in range(m) if o != j]
        denom = _prod([nodes[:, j, None] - o for o in others], nodes[:, :1])
        factors = [tau - o for o in others]
        values.append(_prod(factors, tau) / denom)
        slopes.append(sum((_prod(factors[:r] + factors[r + 1:], tau) for r in range(m - 1)), 0 * tau) / denom)
    return torch.stack(values, 1), torch.stack(slopes, 1)


def _basis(t_all, max_order, tau):
    """Lagrange basis of every step i (nodes t_i, t_{i-1}, .., t_{i-q_i}, q_i = min(max_order - 1, i)) and its
    derivative at tau [N, P]: two tensors [N, max_order, P], zero for j > q_i."""
    if max_order not in (1, 2, 3, 4):
        raise ValueError(f'max_order must be 1, 2, 3 or 4 (got {max_order})')
    n = len(t_all) - 1
    values = torch.zeros(n, max_order, tau.shape[1], dtype=torch.float64)
    slopes = torch.zeros_like(values)
    for q in range(max_order):
        steps = [i for i in range(n) if min(max_order - 1, i) == q]
        if steps:
            nodes = torch.stack([t_all[[i - j for j in range(q + 1)]] for i in steps])
            values[steps, :q + 1], slopes[steps, :q + 1] = _lagrange(nodes, tau[steps])
    return values, slopes


def gddim_coefficients(cld, t_steps, max_order=3):
    """Deterministic gDDIM: (Psi [N, 2, 2], C [N, max_order, 2, 2], None) for the N steps of t_steps.

    C_ij = l_ij(t_{i+1}) R_{t_{i+1}} - l_ij(t_i) Psi(t_{i+1}, t_i) R_{t_i} - int_{t_i}^{t_{i+1}} l_ij'(tau)
    Psi(t_{i+1}, tau) R_tau dtau (integration by parts of gDDIM's coefficient, using d/dtau [Psi(t, tau) R_tau]
    = Psi(t, tau) G G^T R_tau^-T / 2); the integral uses 16-point Gauss-Legendre on geometric panels (ratio <= 1.25).
    """
    t_all = _check_steps(t_steps)
    s, t = t_all[:-1], t_all[1:]
    psi = cld.psi(t, s)
    r = cld.R(t_all)
    ell_t, _ = _basis(t_all, max_order, t[:, None])
    c = ell_t[..., None] * r[1:, None]                            # boundary term at t_{i+1}
    c[:, 0] -= psi @ r[:-1]                                       # boundary term at t_i (l_ij(t_i) = delta_j0)
    if max_order > 1:
        n = max(1, math.ceil(float((s / t).log().max()) / math.log(1.25)))
        edges = t[:, None] * (s / t)[:, None] ** (torch.arange(n + 1, dtype=torch.float64) / n)
        a, b = edges[:, :-1, None], edges[:, 1:, None]
        tau = (a + 0.5 * (b - a) * (_GL_X + 1)).flatten(1)
        weight = (0.5 * (b - a) * _GL_W).flatten(1)
        _, slope = _basis(t_all, max_order, tau)
        f = cld.psi(t[:, None], tau) @ cld.R(tau)
        c += torch.einsum('ijn,in,inab->ijab', slope, weight, f)  # - int_s^t = + int_t^s
    return psi, c, None


def _psd_sqrt(p):
    """Symmetric square root of PSD 2x2 matrices: (P + sqrt(det) I) / sqrt(tr P + 2 sqrt(det))."""
    p = 0.5 * (p + p.transpose(-1, -2))
    sd = (p[..., 0, 0] * p[..., 1, 1] - p[..., 0, 1] ** 2).clamp(min=0).sqrt()
    norm = (p[..., 0, 0] + p[..., 1, 1] + 2 * sd).clamp(min=0).sqrt()
    root = (p + sd[..., None, None] * torch.eye(2, dtype=p.dtype)) / norm.clamp(min=1e-300)[..., None, None]
    return torch.where(norm[..., None, None] > 0, root, torch.zeros_like(p))


_RHO_SCALE, _RHO_STEP = 0.1, 0.01  # RK4 substeps: uniform in log(tau) + tau / 0.1, i.e. h ~ min(tau, 0.1) / 100


def _substeps(s, t):
    """[N, M + 1] times from s down to t, uniform in rho(tau) = log(tau) + tau / _RHO_SCALE (bisection)."""
    def rho(x):
        return x.log() + x / _RHO_SCALE
    m = max(8, math.ceil(float((rho(s) - rho(t)).max()) / _RHO_STEP))
    target = rho(s)[:, None] + (rho(t) - rho(s))[:, None] * torch.arange(m + 1, dtype=torch.float64) / m
    lo, hi = t.log()[:, None].expand_as(target), s.log()[:, None].expand_as(target)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = rho(mid.exp()) > target
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    edges = (0.5 * (lo + hi)).exp()
    edges[:, 0], edges[:, -1] = s, t
    return edges


def sdeis_coefficients(cld, t_steps, langevin=1.0):
    """Stochastic gDDIM (order 0): (Psi [N, 2, 2], C [N, 1, 2, 2], sqrt(P) [N, 2, 2]).

    gDDIM's Dirac-approximation step u_t = Psi(t, s) u_s + (Psi_hat(t, s) - Psi(t, s)) R_s eps_s + xi, xi ~ N(0, P),
    where Psi_hat is the transition of F_hat = F + (1 + lambda^2) / 2 G G^T Sigma^-1. In the frame of R
    (s = t_i > t = t_{i+1}): Psi_hat(tau, s) = R_tau W(tau) R_s^-1 with dW/dtau = lambda^2 H W,
    H = R^-1 G G^T R^-T / 2, W(s) = I (integrated with RK4), so C = R_t W - Psi(t, s) R_s and
    P = Sigma_t - Psi_hat Sigma_s Psi_hat^T = R_t (I - W W^T) R_t^T, the solution of
    dP/dtau = F_hat P + P F_hat^T - lambda^2 G G^T from P(s) = 0.
    """
    lam2 = float(langevin) ** 2
    t_all = _check_steps(t_steps)
    s, t = t_all[:-1], t_all[1:]
    edges = _substeps(s, t)
    tau = torch.cat([torch.stack([edges[:, :-1], 0.5 * (edges[:, :-1] + edges[:, 1:])], 2).flatten(1),
                     edges[:, -1:]], 1)                           # tau_0, mid_0, tau_1, ..., tau_M
    r_inv = torch.linalg.inv(cld.R(tau))
    rate = 0.5 * lam2 * r_inv @ cld.diffusion_sq(tau) @ r_inv.transpose(-1, -2)  # lambda^2 H
    eye = torch.eye(2, dtype=torch.float64)
    w = eye.expand(len(s), 2, 2)
    for m in range(edges.shape[1] - 1):
        h = (edges[:, m + 1] - edges[:, m])[:, None, None]
        k1 = rate[:, 2 * m] @ w
        k2 = rate[:, 2 * m + 1] @ (w + 0.5 * h * k1)
        k3 = rate[:, 2 * m + 1] @ (w + 0.5 * h * k2)
        k4 = rate[:, 2 * m + 2] @ (w + h * k3)
        w = w + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    psi, r_t = cld.psi(t, s), cld.R(t)
    c = r_t @ w - psi @ cld.R(s)
    p = r_t @ (eye - w @ w.transpose(-1, -2)) @ r_t.transpose(-1, -2)
    return psi, c[:, None], _psd_sqrt(p)


def em_coefficients(cld, t_steps, langevin=1.0):
    """Euler-Maruyama on the reverse SDE of strength lambda: (I - h F, -h (1 + lambda^2) / 2 G G^T R^-T,
    lambda sqrt(h) G), all evaluated at t_i, h = t_i - t_{i+1}."""
    lam2 = float(langevin) ** 2
    t_all = _check_steps(t_steps)
    s, h = t_all[:-1], (t_all[:-1] - t_all[1:])[:, None, None]
    gg = cld.diffusion_sq(s)
    c = -h * 0.5 * (1 + lam2) * gg @ torch.linalg.inv(cld.R(s)).transpose(-1, -2)
    noise = (lam2 * h * gg).sqrt() if lam2 > 0 else None
    return torch.eye(2, dtype=torch.float64) - h * cld.drift(s), c[:, None], noise

# ----------------------------------------------------------------------------
# Samplers.


def _run(net, u, t_all, coefs, class_labels, cld, randn_like, callback, model_kwargs, denoise_final, return_u):
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(dtype)
    randn_like = torch.randn_like if randn_like is None else randn_like
    model_kwargs = model_kwargs or {}

    def eps_at(u, t):
        return net(u, torch.full([u.shape[0]], t, dtype=dtype, device=u.device), class_labels,
                   **model_kwargs).to(dtype)

    psi, c, noise = coefs
    history = []
    for i in range(len(t_all) - 1):
        eps = eps_at(u, float(t_all[i]))
        history = [eps] + history[:c.shape[1] - 1]                # eps_i, eps_{i-1}, ..., eps_{i-k+1}
        u_next = cld.apply(psi[i], u)
        for j, e in enumerate(history):
            u_next = u_next + cld.apply(c[i, j], e)
        if noise is not None:
            u_next = u_next + cld.apply(noise[i], randn_like(u).to(dtype))
        if callback is not None:
            callback(StepRecord(i, t_all[i], t_all[i + 1], u, u_next, eps))
        u = u_next
    if denoise_final:  # gDDIM's final step: reverse-SDE drift (full G G^T), no noise, from t_min to 0.
        t_min = float(t_all[-1])
        eps = eps_at(u, t_min)
        gg_r = cld.diffusion_sq(t_min) @ torch.linalg.inv(cld.R(t_min)).T
        u = u - t_min * (cld.apply(cld.drift(t_min), u) + cld.apply(gg_r, eps))
    return u if return_u else cld.split(u)[0]


def _process_of(net, cld):
    cld = getattr(net, 'cld', None) if cld is None else cld
    if cld is None:
        raise ValueError(f'the CLD samplers need a CLD net (one with a `cld` process) or cld=...; got '
                         f'{type(net).__name__}, which has none')
    return cld


def _check_options(max_order=1, langevin=0.0):
    """Validated (max_order, langevin) of the CLD samplers."""
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or not 1 <= max_order <= 4:
        raise ValueError(f'max_order must be 1, 2, 3 or 4 (got {max_order!r})')
    if isinstance(langevin, bool) or not isinstance(langevin, (int, float)) or not 0 <= langevin < math.inf:
        raise ValueError(f'langevin must be a number >= 0 (got {langevin!r})')
    if langevin > 0 and max_order != 1:
        raise ValueError(f'langevin > 0 runs the order-0 stochastic gDDIM step: set max_order=1 (got {max_order}); '
                         'extrapolating eps across the injected noise is unstable (docs/cld_gddim.md)')
    return int(max_order), float(langevin)


def gddim(net, u, t_steps, class_labels=None, *, cld=None, max_order=3, langevin=0.0, randn_like=None, callback=None,
          model_kwargs=None, denoise_final=True, return_u=False):
    """gDDIM from the state u at t_steps[0] (e.g. `cld.prior(latents, randn_like)`) along `t_steps` (e.g.
    `time_steps(num_steps)`), returning x (or the full state with `return_u`).

    cld: the process (default `net.cld`).
    max_order: number k of past noise predictions in the multistep extrapolation, 1..4 (gDDIM's deis_order = k - 1;
      1 is the order-0 gDDIM step). langevin: lambda >= 0 (0 deterministic, 1 the reverse SDE); lambda > 0 needs
      max_order=1.
    randn_like: the only noise source (stochastic steps call it once per step with u; default torch.randn_like).
    callback: called after each step with a `samplers.StepRecord(i, t_cur, t_next, u_cur, u_next, eps)`.
    The state is float64 if u is, else float32.
    """
    cld = _process_of(net, cld)
    max_order, langevin = _check_options(max_order, langevin)
    t_all = _check_steps(t_steps)
    if langevin == 0:
        coefs = gddim_coefficients(cld, t_all, max_order)
    else:
        coefs = sdeis_coefficients(cld, t_all, langevin)
    return _run(net, u, t_all, coefs, class_labels, cld, randn_like, callback, model_kwargs, denoise_final, return_u)


def euler_maruyama(net, u, t_steps, class_labels=None, *, cld=None, langevin=1.0, randn_like=None, callback=None,
                   model_kwargs=None, denoise_final=True, return_u=False):
    """Euler-Maruyama on the reverse-time family of strength `langevin` (1: reverse SDE, 0: Euler on the
    probability-flow ODE), same arguments and final step as `gddim`."""
    cld = _process_of(net, cld)
    _, langevin = _check_options(langevin=langevin)
    t_all = _check_steps(t_steps)
    coefs = em_coefficients(cld, t_all, langevin)
    return _run(net, u, t_all, coefs, class_labels, cld, randn_like, callback, model_kwargs, denoise_final, return_u)

# ----------------------------------------------------------------------------
# Registry entries (kind 'cld': `samplers.sample` builds `time_steps(num_steps)`, draws the state with the prior hook
# and calls the sampler; NFE = num_steps with the final denoising step).


def _nfe(num_steps, options):
    return num_steps


def _prepare(t_steps, **options):
    """Check the options before any work (`samplers.sample`, generate.py); the coefficients depend on the net's
    process and are built by the sampler."""
    _check_options(**options)
    return options


register_solver(SolverSpec('gddim', gddim, dict(max_order=3, langevin=0.0), kind='cld', needs='cld', nfe=_nfe,
                           prepare=_prepare, max_order=4, order=3, teacher=False,
                           doc='gDDIM for CLD (exponential multistep; stochastic with langevin > 0)'))
register_solver(SolverSpec('cld_em', euler_maruyama, dict(langevin=1.0), kind='cld', needs='cld', nfe=_nfe,
                           prepare=_prepare, order=1, stochastic=True, teacher=False,
                           doc='Euler-Maruyama on the CLD reverse SDE (baseline)'))
