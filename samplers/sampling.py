"""`samplers.sample`: one entry point for every solver (GITS-toolbox semantics, plus EDM's Algorithm 2)."""

import torch

from .schedules import as_schedule, clip_sigma_range, get_schedule
from .solvers import SOLVERS, check_solver_options

DEFAULT_NUM_STEPS = 7  # GITS toolbox default: 7 timestamps = 6 steps
EDM_DEFAULT_NUM_STEPS = 18


def sample(net, latents, class_labels=None, *, solver, num_steps=None, t_steps=None, sigma_min=0.002, sigma_max=80,
           schedule_type='polynomial', schedule_rho=7, afs=False, denoise_to_zero=False, randn_like=None,
           return_trajectory=False, model_kwargs=None, **solver_options):
    """Turn unit-variance `latents` into samples with one of the ODE solvers (or EDM's sampler).

    solver: 'euler', 'heun', 'dpm', 'ipndm', 'ipndm_v', 'deis', 'dpmpp', 'unipc' (see `samplers.solvers`) or
      'edm' (EDM Algorithm 2, `samplers.edm.edm_sampler`).
    num_steps: number of timestamps N (no trailing zero; N - 1 steps; default 7), the GITS toolbox's meaning.
      For 'edm' it is EDM's meaning (noise levels before the final zero; default 18).
    t_steps: an explicit decreasing schedule (list or tensor) used verbatim; then num_steps, sigma_min/max and
      the schedule options are not used (num_steps, if given, must equal its length).
    sigma_min, sigma_max: clipped to the net's range (max(sigma_min, net.sigma_min), min(sigma_max,
      net.sigma_max)) as EDM does, then passed to `get_schedule(schedule_type, schedule_rho)`.
    afs: analytical first step (saves one NFE). denoise_to_zero: finish with x = D(x; t_{N-1}) (one more NFE).
    randn_like: noise source of stochastic samplers (only 'edm' is stochastic; default torch.randn_like).
    return_trajectory: also return the stacked states [N (+1 with denoise_to_zero), *latents.shape].
    model_kwargs: extra keyword arguments for every net call.
    solver_options: per-solver options (`samplers.solver_defaults(solver)` lists them), e.g. max_order,
      predict_x0, lower_order_final, variant, deis_mode, r; for 'edm': S_churn, S_min, S_max, S_noise.
      Unknown options raise TypeError.

    The state is float32 (as in the GITS toolbox) unless `latents` are float64, in which case schedule and state
    are float64 (used by the convergence tests). The latents are scaled by t_steps[0].
    """
    if solver == 'edm':
        return _sample_edm(net, latents, class_labels, num_steps=num_steps, t_steps=t_steps, sigma_min=sigma_min,
                           sigma_max=sigma_max, schedule_type=schedule_type, schedule_rho=schedule_rho, afs=afs,
                           denoise_to_zero=denoise_to_zero, randn_like=randn_like,
                           return_trajectory=return_trajectory, model_kwargs=model_kwargs, **solver_options)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(list(SOLVERS) + ['edm'])}")
    options = check_solver_options(solver, solver_options)
    dtype = torch.float64 if latents.dtype == torch.float64 else torch.float32
    device = latents.device

    if t_steps is not None:
        t = as_schedule(t_steps, device=device, dtype=dtype)
        if num_steps is not None and int(num_steps) != len(t):
            raise ValueError(f'num_steps={num_steps} does not match the {len(t)} entries of t_steps')
    else:
        lo, hi = clip_sigma_range(net, sigma_min, sigma_max)
        t = get_schedule(DEFAULT_NUM_STEPS if num_steps is None else num_steps, lo, hi, schedule_type, schedule_rho,
                         net=net, device=device, dtype=dtype)

    x = latents.to(dtype) * t[0]
    trajectory = [x] if return_trajectory else None

    def record(i, t_cur, t_next, x_cur, x_next, d_cur):
        trajectory.append(x_next)

    x = SOLVERS[solver](net, x, t, class_labels, afs=afs, callback=record if return_trajectory else None,
                        model_kwargs=model_kwargs, **options)
    if denoise_to_zero:
        x = net(x, t[-1], class_labels, **(model_kwargs or {})).to(dtype)  # final D call at t_{N-1}
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def _sample_edm(net, latents, class_labels, *, num_steps, t_steps, sigma_min, sigma_max, schedule_type, schedule_rho,
                afs, denoise_to_zero, randn_like, return_trajectory, model_kwargs, **options):
    """EDM Algorithm 2 through the lead's `samplers.edm.edm_sampler` (float64 state, num_steps = EDM's meaning)."""
    check_solver_options('edm', options)
    problems = []
    if t_steps is not None:
        problems.append('t_steps')
    if schedule_type != 'polynomial':
        problems.append(f'schedule_type={schedule_type!r}')
    if afs:
        problems.append('afs')
    if denoise_to_zero:
        problems.append('denoise_to_zero')
    if problems:
        raise ValueError(f"solver 'edm' (EDM Algorithm 2) does not support {', '.join(problems)}")
    from .edm import edm_sampler  # imported lazily: owned by the EDM sampler module
    return edm_sampler(net, latents, class_labels, randn_like=torch.randn_like if randn_like is None else randn_like,
                       num_steps=EDM_DEFAULT_NUM_STEPS if num_steps is None else int(num_steps),
                       sigma_min=sigma_min, sigma_max=sigma_max, rho=schedule_rho,
                       return_trajectory=return_trajectory, **options, **(model_kwargs or {}))


__all__ = ['sample', 'DEFAULT_NUM_STEPS']
