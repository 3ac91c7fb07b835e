"""Second-order Itô–Taylor sampler for EDM's reverse-time SDE, derivatives by forward-mode AD of the denoiser.

With sigma(t) = t, s(t) = 1 and reverse time tau (dt = -d tau), the family of EDM eq. 6 with Langevin rate
beta(t) = lambda^2 / t (`langevin` = lambda) reads

    dx = A(x, t) d tau + b(t) dW,   A = c (D(x; t) - x) / t,   c = 1 + lambda^2,   b(t) = lambda sqrt(2 t),

lambda = 0 is the probability-flow ODE, lambda = 1 the standard reverse-time SDE (drift 2 (D - x) / t, noise
sqrt(2 t)). Noise is additive (b depends on t only), so the weak-order-2 / strong-order-1.5 Taylor scheme of
Kloeden & Platen (1992, ch. 10 and 14, additive noise) over a step t -> t' = t - h is

    x' = x + h A + b dW + (L^1 A) dZ + h^2/2 L^0 A + (L^0 b)(h dW - dZ),
    L^0 A = d_tau A + (grad A) A + b^2/2 Lap A,   L^1 A dZ = b (grad A) dZ,   L^0 b = -db/dt.

In terms of the denoiser (J = d_x D, d_sigma D and the per-component Laplacian Lap D at (x, t)), every first-derivative
term is one Jacobian-vector product with the tangent (v_x, v_sigma) = (h^2/2 A + b dZ, -h^2/2):

    JV = J v_x + d_sigma D v_sigma,
    x' = x + h A + b dW + c/t (JV - b dZ) - lambda^2 c h^2/2 (D - x) / t^2 - db/dt (h dW - dZ)
         + lambda^2 c h^2/2 Lap D.

For lambda = 0 this is the deterministic Taylor-2 step x' = x + dsigma f - dsigma^2 / (2 sigma) (J f + d_sigma D),
f = (x - D) / sigma, dsigma = t' - t. The increments per element are dW = sqrt(h) xi_1 and
dZ = h^(3/2) (xi_1 + xi_2 / sqrt(3)) / 2 (Var dW = h, Var dZ = h^3/3, Cov = h^2/2; Kloeden & Platen, ch. 10),
xi_i from the per-seed `randn_like`. Lap D (zero for Gaussian data) is estimated from one probe per step, a
Rademacher vector v with E[v v^T] = I: 'hutchinson' takes d^2 D[v, v] from a nested (forward-over-forward) JVP
(unbiased; Hutchinson 1990), 'symmetric' the central second difference of D along v (unbiased up to O(step^2)),
'none' drops the term (the scheme is then weak order 1 on non-Gaussian data). docs/itotaylor.md has the
derivation, the measured orders and costs, and the comparison of the two estimators.

Cost per step (network-evaluation equivalents, see `itotaylor_cost`): a noisy step is one nested JVP (which also
returns D) plus one JVP with 'hutchinson', three forward passes plus one JVP with 'symmetric'; a noise-free step
(lambda = 0 or t outside [S_min, S_max]) is one forward pass plus one JVP; the last step, to t = 0, is EDM's
Euler step x' = D(x; t_{N-1}) (one forward pass).
"""

import math

import torch

from .registry import SolverSpec, register_solver
from .stepping import StepRecord

LAPLACIAN_METHODS = ('hutchinson', 'symmetric', 'none')
DEFAULT_LAPLACIAN = 'hutchinson'
SYMMETRIC_REL_STEP = 0.3  # 'symmetric': probe step eta * t / sqrt(dim), i.e. |step| = eta * t (docs/itotaylor.md).

# ----------------------------------------------------------------------------
# Pieces shared by the Taylor step and the Euler-Maruyama baseline.


def _denoiser(net, class_labels, model_kwargs, dtype):
    """(x, sigma) -> D(x; sigma) in the state dtype: the function that is differentiated."""
    return lambda x, sigma: net(x, sigma, class_labels, **(model_kwargs or {})).to(dtype)


def sde_coefficients(t, langevin):
    """(c, b, db/dt) of dx = c (D - x) / t d tau + b dW with beta(t) = langevin^2 / t (EDM eq. 6, sigma(t) = t)."""
    c = 1 + langevin ** 2
    b = langevin * math.sqrt(2 * t)
    return c, b, langevin / math.sqrt(2 * t)


def increments(randn_like, x, h):
    """The correlated pair (dW, dZ = int_0^h W dr) per element over a step of length h (Kloeden & Platen, ch. 10).

    Draws two standard normal tensors from `randn_like`, in this order.
    """
    xi_1, xi_2 = randn_like(x), randn_like(x)
    dW = math.sqrt(h) * xi_1
    dZ = 0.5 * h ** 1.5 * (xi_1 + xi_2 / math.sqrt(3))
    return dW, dZ


def rademacher_like(randn_like, x):
    """A +-1 probe with E[v v^T] = I, from one draw of `randn_like`."""
    return torch.where(randn_like(x) >= 0, 1.0, -1.0).to(x.dtype)


def laplacian_estimate(denoiser, x, sigma, probe, method=DEFAULT_LAPLACIAN, rel_step=None):
    """(D(x; sigma), an estimate of the per-component Laplacian sum_j d^2 D / dx_j^2) from one probe.

    `denoiser(x, sigma)`; `probe` with E[v v^T] = I per sample (Rademacher or standard normal). 'hutchinson':
    d^2 D[v, v] by a nested JVP, exactly unbiased (Hutchinson 1990). 'symmetric': (D(x + e v) + D(x - e v) - 2 D) / e^2
    with e = rel_step * sigma / sqrt(dim) (default SYMMETRIC_REL_STEP), unbiased up to O(rel_step^2) and rounding in
    the network's precision.
    """
    if method == 'hutchinson':
        def first_order(y):
            value, tangent = torch.func.jvp(lambda z: denoiser(z, sigma), (y,), (probe,))
            return tangent, value
        # torch's second-order forward rule for silu exists only through its grad-mode decomposition (under no_grad
        # silu_backward has no forward derivative), so grad mode is on here; nothing is recorded unless the
        # network's parameters require grad, and the results are detached when the caller had grad mode off.
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            _, second, value = torch.func.jvp(first_order, (x,), (probe,), has_aux=True)
        return (value, second) if grad_mode else (value.detach(), second.detach())
    if method == 'symmetric':
        eps = (SYMMETRIC_REL_STEP if rel_step is None else rel_step) * float(sigma) / math.sqrt(x[0].numel())
        value = denoiser(x, sigma)
        return value, (denoiser(x + eps * probe, sigma) + denoiser(x - eps * probe, sigma) - 2 * value) / eps ** 2
    raise ValueError(f"laplacian must be one of {', '.join(LAPLACIAN_METHODS[:2])} here (got {method!r})")

# ----------------------------------------------------------------------------
# One step t_cur -> t_next > 0 with given increments (the affine map that the tests propagate exactly).


def itotaylor_step(net, x, t_cur, t_next, class_labels=None, *, langevin=1.0, dW=None, dZ=None, probe=None,
                   laplacian=DEFAULT_LAPLACIAN, model_kwargs=None):
    """One Itô–Taylor step of the SDE above from t_cur to t_next (0 < t_next < t_cur); returns (x_next, D(x; t_cur)).

    With langevin > 0, `dW`, `dZ` (shaped like x; see `increments`) and, unless laplacian='none', a `probe`
    (see `rademacher_like`) are required; with langevin = 0 they are ignored.
    """
    t = torch.as_tensor(t_cur, dtype=x.dtype, device=x.device)
    tf, h = float(t_cur), float(t_cur) - float(t_next)
    D = _denoiser(net, class_labels, model_kwargs, x.dtype)
    noisy = langevin > 0
    if noisy and (dW is None or dZ is None or (probe is None and laplacian != 'none')):
        raise ValueError('a noisy step needs dW, dZ and (unless laplacian is none) a probe')
    c, b, db = sde_coefficients(tf, langevin)
    if noisy and laplacian != 'none':
        denoised, lap = laplacian_estimate(D, x, t, probe, laplacian)
    else:
        denoised, lap = D(x, t), None
    A = c * (denoised - x) / tf
    v_x = 0.5 * h * h * A + b * dZ if noisy else 0.5 * h * h * A
    _, jv = torch.func.jvp(D, (x, t), (v_x, torch.full_like(t, -0.5 * h * h)))
    x_next = x + h * A + (c / tf) * jv - (langevin ** 2) * c * 0.5 * h * h * (denoised - x) / tf ** 2
    if noisy:
        x_next = x_next + b * dW - (c / tf) * b * dZ - db * (h * dW - dZ)
        if lap is not None:
            x_next = x_next + (langevin ** 2) * c * 0.5 * h * h * lap
    return x_next, denoised


def euler_maruyama_step(net, x, t_cur, t_next, class_labels=None, *, langevin=1.0, dW=None, model_kwargs=None):
    """One Euler–Maruyama step x' = x + h A + b dW of the same SDE; returns (x_next, D(x; t_cur))."""
    tf, h = float(t_cur), float(t_cur) - float(t_next)
    c, b, _ = sde_coefficients(tf, langevin)
    t = torch.as_tensor(t_cur, dtype=x.dtype, device=x.device)
    denoised = _denoiser(net, class_labels, model_kwargs, x.dtype)(x, t)
    x_next = x + h * c * (denoised - x) / tf
    return (x_next + b * dW if langevin > 0 else x_next), denoised

# ----------------------------------------------------------------------------
# Samplers over an EDM schedule.


def step_map(net, langevin=1.0, laplacian=DEFAULT_LAPLACIAN, scheme='itotaylor'):
    """One step as a function (x, t_cur, t_next, dW, dZ) -> x_next, the form that `samplers.weak_error`
    integrates: the Itô–Taylor step with a probe of ones, or (scheme='em') Euler–Maruyama, which ignores dZ."""
    if scheme == 'em':
        return lambda x, t_cur, t_next, dW, dZ: euler_maruyama_step(net, x, t_cur, t_next, langevin=langevin,
                                                                    dW=dW)[0]
    return lambda x, t_cur, t_next, dW, dZ: itotaylor_step(net, x, t_cur, t_next, langevin=langevin, dW=dW, dZ=dZ,
                                                           probe=torch.ones_like(x), laplacian=laplacian)[0]


def _check(t_steps, langevin, laplacian, x):
    if not (isinstance(langevin, (int, float)) and math.isfinite(langevin) and langevin >= 0):
        raise ValueError(f'langevin must be a finite number >= 0 (got {langevin!r})')
    if laplacian not in LAPLACIAN_METHODS:
        raise ValueError(f"laplacian must be one of {', '.join(LAPLACIAN_METHODS)} (got {laplacian!r})")
    t = torch.as_tensor(t_steps, dtype=torch.float64, device=x.device).reshape(-1)
    if len(t) < 2 or not bool((t[:-1] > t[1:]).all()) or not bool((t[:-1] > 0).all()) or float(t[-1]) < 0:
        raise ValueError('t_steps must be decreasing noise levels > 0, optionally followed by a final 0')
    return t


def _run(step, net, x, t_steps, class_labels, langevin, S_min, S_max, callback, model_kwargs):
    x = x.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        if float(t_next) == 0:  # EDM: the last step is Euler to sigma = 0, i.e. x' = D(x; t_{N-1}).
            denoised = net(x, t_cur, class_labels, **(model_kwargs or {})).to(x.dtype)
            x_next = denoised
        else:
            lam = langevin if S_min <= float(t_cur) <= S_max else 0.0
            x_next, denoised = step(x, t_cur, t_next, lam)
        if callback is not None:
            callback(StepRecord(i, t_cur, t_next, x, x_next, (x - denoised) / t_cur))
        x = x_next
    return x


def itotaylor(net, x, t_steps, class_labels=None, *, randn_like, langevin=1.0, S_min=0.0, S_max=float('inf'),
              laplacian=DEFAULT_LAPLACIAN, callback=None, model_kwargs=None):
    """Sample EDM's reverse-time SDE (Langevin strength `langevin`) with the second-order Itô–Taylor step.

    x: start state latents * t_steps[0] (the state is kept in float64, as in EDM's sampler). t_steps: an EDM
    schedule (`samplers.edm.edm_schedule`: decreasing noise levels, then 0). Noise is injected only on steps whose
    t_cur lies in [S_min, S_max]; the other steps are deterministic Taylor-2 steps of the PF-ODE. The last step
    to 0 is EDM's Euler step (denoising). randn_like: the per-seed noise source; each noisy step draws two tensors
    for (dW, dZ) and, with a Laplacian estimate, one more for the probe. laplacian: 'hutchinson', 'symmetric' or
    'none' (see `laplacian_estimate`). callback(samplers.stepping.StepRecord) after every step, with
    d_cur = (x_cur - D(x_cur; t_cur)) / t_cur. Cost: `itotaylor_cost`. The signature is that of an 'edm'-kind
    solver of `samplers.registry`.
    """
    t_steps = _check(t_steps, langevin, laplacian, x)

    def step(x, t_cur, t_next, lam):
        dW = dZ = probe = None
        if lam > 0:
            dW, dZ = increments(randn_like, x, float(t_cur - t_next))
            probe = rademacher_like(randn_like, x) if laplacian != 'none' else None
        return itotaylor_step(net, x, t_cur, t_next, class_labels, langevin=lam, dW=dW, dZ=dZ, probe=probe,
                              laplacian=laplacian, model_kwargs=model_kwargs)

    with torch.no_grad():
        return _run(step, net, x, t_steps, class_labels, langevin, S_min, S_max, callback, model_kwargs)


def euler_maruyama(net, x, t_steps, class_labels=None, *, randn_like, langevin=1.0, S_min=0.0, S_max=float('inf'),
                   callback=None, model_kwargs=None):
    """The Euler–Maruyama baseline on the same SDE, schedule and conventions as `itotaylor` (weak order 1).

    One forward pass per step (NFE = len(t_steps) - 1); each noisy step draws one tensor from `randn_like`.
    """
    t_steps = _check(t_steps, langevin, 'none', x)

    def step(x, t_cur, t_next, lam):
        dW = math.sqrt(float(t_cur - t_next)) * randn_like(x) if lam > 0 else None
        return euler_maruyama_step(net, x, t_cur, t_next, class_labels, langevin=lam, dW=dW,
                                   model_kwargs=model_kwargs)

    with torch.no_grad():
        return _run(step, net, x, t_steps, class_labels, langevin, S_min, S_max, callback, model_kwargs)


def itotaylor_cost(num_steps, *, langevin=1.0, laplacian=DEFAULT_LAPLACIAN, S_min=0.0, S_max=float('inf'),
                   t_steps=None):
    """Network work of `itotaylor` over an EDM schedule of `num_steps` noise levels plus the final 0.

    Returns dict(forward=..., jvp=..., jvp2=...): plain forward passes, first-order JVPs (one dual pass each) and
    nested forward-over-forward JVPs ('hutchinson'). A restricted noise window [S_min, S_max] needs `t_steps`.
    docs/itotaylor.md lists measured costs of a JVP and a nested JVP relative to a forward pass.
    """
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f'num_steps must be >= 1 (got {num_steps})')
    if laplacian not in LAPLACIAN_METHODS:
        raise ValueError(f"laplacian must be one of {', '.join(LAPLACIAN_METHODS)} (got {laplacian!r})")
    taylor = num_steps - 1
    if langevin <= 0:
        noisy = 0
    elif t_steps is not None:
        t = [float(v) for v in torch.as_tensor(t_steps).reshape(-1)[:taylor]]
        noisy = sum(S_min <= v <= S_max for v in t)
    elif S_min > 0 or S_max < float('inf'):
        raise ValueError('pass t_steps to count the steps whose noise level lies in [S_min, S_max]')
    else:
        noisy = taylor
    per_noisy = dict(hutchinson=(0, 1, 1), symmetric=(3, 1, 0), none=(1, 1, 0))[laplacian]
    forward = 1 + (taylor - noisy) + noisy * per_noisy[0]
    return dict(forward=forward, jvp=taylor, jvp2=noisy * per_noisy[2])



def _cost(num_steps, options, t_steps=None):
    return itotaylor_cost(num_steps, t_steps=t_steps, **options)


# Kind 'edm' (EDM's schedule with a final zero, float64 state); samplers.sample(net, latents, solver='itotaylor',
# num_steps=N, schedule_rho=rho, langevin=..., S_min=..., S_max=..., laplacian=...). NFE counts a JVP as one pass.
SDE_OPTIONS = dict(langevin=1.0, S_min=0.0, S_max=float('inf'))
register_solver(SolverSpec('itotaylor', itotaylor, dict(SDE_OPTIONS, laplacian=DEFAULT_LAPLACIAN), kind='edm',
                           cost=_cost, order=2, stochastic=True, needs='jvp', teacher=False,
                           doc='Ito-Taylor step of EDM\'s reverse SDE (weak order 2, forward-mode AD)'))
register_solver(SolverSpec('edm_em', euler_maruyama, dict(SDE_OPTIONS), kind='edm', order=1, stochastic=True,
                           teacher=False, doc='Euler-Maruyama on EDM\'s reverse SDE (weak order 1)'))

__all__ = ['SDE_OPTIONS', 'LAPLACIAN_METHODS', 'DEFAULT_LAPLACIAN', 'sde_coefficients', 'increments', 'rademacher_like',
           'laplacian_estimate', 'itotaylor_step', 'euler_maruyama_step', 'step_map', 'itotaylor', 'euler_maruyama',
           'itotaylor_cost']
