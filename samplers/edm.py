"""EDM's own samplers (Karras et al. 2022): Algorithm 2 (Heun with churn) and the Section 3 ablation sampler.

Both keep the state in float64, as the reference does, so that the same seeds give the same images. Here
`num_steps` is EDM's meaning: the number of noise levels before the final zero (NFE = 2 * num_steps - 1).
"""

import numpy as np
import torch

from .priors import resolve_prior
from .registry import SolverSpec, register_solver
from .sampling import sample
from .schedules import edm_schedule  # noqa: F401  (re-exported: samplers.edm.edm_schedule)
from .stepping import StepRecord

# ----------------------------------------------------------------------------


def edm_steps(net, x, t_steps, class_labels=None, *, randn_like, callback=None, model_kwargs=None, S_churn=0,
              S_min=0, S_max=float('inf'), S_noise=1):
    """EDM Algorithm 2 from state `x` at t_steps[0] over an EDM schedule ending in 0 (the registered 'edm' solver).

    Deterministic Heun steps with optional stochastic churn; NFE = 2 * num_steps - 1 (the last step, to
    sigma = 0, is an Euler step). `randn_like` is called once per step, even when the churn is zero, so that
    per-seed noise streams match the reference. The callback's record holds the churned point as (t_cur, x_cur).
    """
    model_kwargs = model_kwargs or {}
    num_steps = len(t_steps) - 1
    x_next = x
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # EDM Alg. 2 lines 4-6: raise the noise level by gamma (churn), then add matching fresh noise.
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = torch.as_tensor(net.round_sigma(t_cur + gamma * t_cur), dtype=torch.float64)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        # EDM Alg. 2 lines 7-8: Euler step with d = (x - D(x; t)) / t.
        denoised = net(x_hat, t_hat, class_labels, **model_kwargs).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # EDM Alg. 2 lines 9-11: second-order (trapezoidal) correction unless stepping to zero.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels, **model_kwargs).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(StepRecord(i, t_hat, t_next, x_hat, x_next, d_cur))
    return x_next


EDM_OPTIONS = dict(S_churn=0, S_min=0, S_max=float('inf'), S_noise=1)
register_solver(SolverSpec('edm', edm_steps, dict(EDM_OPTIONS), kind='edm', nfe=lambda n, options: 2 * n - 1,
                           order=2, stochastic=True, teacher=False, doc='EDM Algorithm 2 (Heun with churn)'))


def edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1, return_trajectory=False,
                **model_kwargs):
    """EDM Algorithm 2 with EDM's own signature: `samplers.sample(solver='edm', ...)`."""
    return sample(net, latents, class_labels, solver='edm', num_steps=num_steps, sigma_min=sigma_min,
                  sigma_max=sigma_max, schedule_rho=rho, randn_like=randn_like, return_trajectory=return_trajectory,
                  model_kwargs=model_kwargs, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)

# ----------------------------------------------------------------------------


def _vp_sigma(beta_d, beta_min):
    # EDM eq. 27 / Table 1 (VP): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
    return lambda t: (np.e ** (0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5


def _vp_sigma_deriv(beta_d, beta_min):
    # d sigma / dt = (beta_d t + beta_min) exp(...) / (2 sigma) = (beta_d t + beta_min)(sigma + 1/sigma) / 2.
    return lambda t: 0.5 * (beta_min + beta_d * t) * (_vp_sigma(beta_d, beta_min)(t) + 1 / _vp_sigma(beta_d, beta_min)(t))


def _vp_sigma_inv(beta_d, beta_min):
    # Inverse of the VP sigma(t) (EDM Table 1).
    return lambda sigma: ((beta_min ** 2 + 2 * beta_d * (sigma ** 2 + 1).log()).sqrt() - beta_min) / beta_d


def _ve_sigma(t):
    return t.sqrt()  # EDM Table 1 (VE): sigma(t) = sqrt(t).


def _ve_sigma_deriv(t):
    return 0.5 / t.sqrt()


def _ve_sigma_inv(sigma):
    return sigma ** 2


ABLATION_CHOICES = dict(solver=('euler', 'heun'), discretization=('vp', 've', 'iddpm', 'edm'),
                        schedule=('vp', 've', 'linear'), scaling=('vp', 'none'))


def ablation_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=None,
                     sigma_max=None, rho=7, solver='heun', discretization='edm', schedule='linear', scaling='none',
                     epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1, S_churn=0, S_min=0, S_max=float('inf'),
                     S_noise=1, return_trajectory=False, prior=None, generator=None, **model_kwargs):
    """The generalised sampler of EDM Section 3 (Table 1 rows as options), for the paper's ablations.

    `solver` euler|heun, `discretization` vp|ve|iddpm|edm (how noise levels are spaced), `schedule`
    vp|ve|linear (sigma(t)), `scaling` vp|none (s(t)). NFE = num_steps for euler, 2 * num_steps - 1 for heun.
    The start state is the prior at sigma(t_0) (`samplers.priors`) times s(t_0).
    """
    for key, value in dict(solver=solver, discretization=discretization, schedule=schedule, scaling=scaling).items():
        if value not in ABLATION_CHOICES[key]:
            raise ValueError(f'{key} must be one of {", ".join(ABLATION_CHOICES[key])} (got {value!r})')
    if num_steps < 2:
        raise ValueError(f'the ablation sampler needs num_steps >= 2 (got {num_steps})')

    # Default noise range of each discretization (EDM Table 1), then clipped to the network's range.
    if sigma_min is None:
        sigma_min = dict(vp=_vp_sigma(19.9, 0.1)(epsilon_s), ve=0.02, iddpm=0.002, edm=0.002)[discretization]
    if sigma_max is None:
        sigma_max = dict(vp=_vp_sigma(19.9, 0.1)(1), ve=100, iddpm=81, edm=80)[discretization]
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # VP constants refitted to the chosen range (EDM Appendix C.2).
    vp_beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    vp_beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * vp_beta_d

    # Noise levels sigma_i of the discretization (EDM Table 1, "time steps").
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    if discretization == 'vp':
        orig_t_steps = 1 + step_indices / (num_steps - 1) * (epsilon_s - 1)
        sigma_steps = _vp_sigma(vp_beta_d, vp_beta_min)(orig_t_steps)
    elif discretization == 've':
        orig_t_steps = (sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** (step_indices / (num_steps - 1)))
        sigma_steps = orig_t_steps.sqrt()
    elif discretization == 'iddpm':
        u = torch.zeros(M + 1, dtype=torch.float64, device=latents.device)
        alpha_bar = lambda j: (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2  # iDDPM cosine schedule.
        for j in torch.arange(M, 0, -1, device=latents.device):
            u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        u_filtered = u[torch.logical_and(u >= sigma_min, u <= sigma_max)]
        sigma_steps = u_filtered[((len(u_filtered) - 1) / (num_steps - 1) * step_indices).round().to(torch.int64)]
    else:
        sigma_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
                       * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

    # sigma(t), its derivative and inverse for the chosen schedule (EDM Table 1, "schedule").
    if schedule == 'vp':
        sigma = _vp_sigma(vp_beta_d, vp_beta_min)
        sigma_deriv = _vp_sigma_deriv(vp_beta_d, vp_beta_min)
        sigma_inv = _vp_sigma_inv(vp_beta_d, vp_beta_min)
    elif schedule == 've':
        sigma, sigma_deriv, sigma_inv = _ve_sigma, _ve_sigma_deriv, _ve_sigma_inv
    else:
        sigma, sigma_deriv, sigma_inv = (lambda t: t), (lambda t: 1), (lambda s: s)

    # s(t) and its derivative (EDM Table 1, "scaling").
    if scaling == 'vp':
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        s, s_deriv = (lambda t: 1), (lambda t: 0)

    t_steps = sigma_inv(torch.as_tensor(net.round_sigma(sigma_steps), dtype=torch.float64))
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

    # EDM Algorithm 1 generalised with churn (Algorithm 2) and alpha (Appendix D.2).
    t_next = t_steps[0]
    x_next = resolve_prior(net, prior)(latents.to(torch.float64), sigma(t_next), generator) * s(t_next)
    trajectory = [x_next]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(torch.as_tensor(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)), dtype=torch.float64))
        x_hat = (s(t_hat) / s(t_cur) * x_cur + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt()
                 * s(t_hat) * S_noise * randn_like(x_cur))

        # dx/dt = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x/s; sigma) (EDM eq. 4 with scaling).
        h = t_next - t_hat
        denoised = net(x_hat / s(t_hat), sigma(t_hat), class_labels, **model_kwargs).to(torch.float64)
        d_cur = ((sigma_deriv(t_hat) / sigma(t_hat) + s_deriv(t_hat) / s(t_hat)) * x_hat
                 - sigma_deriv(t_hat) * s(t_hat) / sigma(t_hat) * denoised)
        x_prime = x_hat + alpha * h * d_cur
        t_prime = t_hat + alpha * h

        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            denoised = net(x_prime / s(t_prime), sigma(t_prime), class_labels, **model_kwargs).to(torch.float64)
            d_prime = ((sigma_deriv(t_prime) / sigma(t_prime) + s_deriv(t_prime) / s(t_prime)) * x_prime
                       - sigma_deriv(t_prime) * s(t_prime) / sigma(t_prime) * denoised)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
        trajectory.append(x_next)
    return (x_next, torch.stack(trajectory)) if return_trajectory else x_next
