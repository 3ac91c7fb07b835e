"""`samplers.sample`: one entry point for every registered solver."""

import warnings

import torch

from torch_utils import precision as fast
from .priors import resolve_prior
from .registry import get_solver
from .schedules import as_schedule, clip_sigma_range, edm_schedule, get_schedule
from .stepping import integrate

DEFAULT_NUM_STEPS = 7  # GITS toolbox default: 7 timestamps = 6 steps
EDM_DEFAULT_NUM_STEPS = 18


def sample(net, latents, class_labels=None, *, solver, num_steps=None, t_steps=None, sigma_min=0.002, sigma_max=80,
           schedule_type='polynomial', schedule_rho=7, afs=False, denoise_to_zero=False, randn_like=None,
           generator=None, prior=None, callback=None, return_trajectory=False, model_kwargs=None, precision=None,
           **solver_options):
    """Turn unit-variance `latents` into samples with a registered solver (`samplers.SOLVERS`).

    solver: a registered name, e.g. 'euler', 'heun', 'dpm', 'dpmpp', 'ipndm', 'ipndm_v', 'deis', 'unipc' (kind
      'ode') or 'edm' (EDM Algorithm 2, kind 'edm').
    num_steps: kind 'ode': number of timestamps N (no trailing zero; N - 1 steps; default 7), the GITS toolbox's
      meaning. Kind 'edm': EDM's meaning (noise levels before the final zero; default 18).
    t_steps: ('ode' only) an explicit decreasing schedule used verbatim; then num_steps, sigma_min/max and the
      schedule options are not used (num_steps, if given, must equal its length).
    sigma_min, sigma_max: clipped to the net's range as EDM does (unless the solver has its own `schedule`, see
      `samplers.SolverSpec`). schedule_type, schedule_rho: see
      `get_schedule` ('ode'); for kind 'edm' schedule_rho is EDM's rho (polynomial schedule only).
    afs: analytical first step (saves one NFE). denoise_to_zero: finish with x = D(x; t_{N-1}) (one more NFE).
      Both 'ode' only.
    randn_like: the only noise source of stochastic solvers; default `generator.randn_like` if a generator is
      given, else torch.randn_like.
    generator: the per-seed generator of the latents (`samplers.generation.draw_inputs`), passed to the prior.
    prior: `prior(latents, sigma, generator) -> x_T` (see `samplers.priors`); default the net's `sample_prior`
      or EDM's Gaussian.
    callback: called with a `samplers.stepping.StepRecord` after every step.
    return_trajectory: also return the stacked states [steps + 1 (+1 with denoise_to_zero), *latents.shape].
    model_kwargs: extra keyword arguments for every net call.
    precision: None (call `net` as it is), 'fp32', 'bf16' or 'fp16': the net calls run under autocast
      (`torch_utils.precision.wrap`); the solver's own arithmetic keeps its precision.
    solver_options: per-solver options (`samplers.solver_defaults(solver)` lists them); unknown ones raise TypeError.

    Kind 'ode' runs in float32 (as the GITS toolbox) unless `latents` are float64 or the solver sets its
    `state_dtype`; kind 'edm' runs in float64.
    """
    spec = get_solver(solver)
    options = spec.check_options(solver_options)
    if precision is not None:
        note = fast.check(precision, latents.device)
        if note:
            warnings.warn(note, stacklevel=2)
        net = fast.wrap(net, precision, latents.device, channels_last=False)
    if randn_like is None:
        randn_like = torch.randn_like if generator is None else generator.randn_like
    device = latents.device
    if spec.kind == 'edm':
        problems = [name for name, bad in (('t_steps', t_steps is not None), ('afs', afs),
                                           ('denoise_to_zero', denoise_to_zero),
                                           (f'schedule_type={schedule_type!r}', schedule_type != 'polynomial')) if bad]
        if problems:
            raise ValueError(f"solver {solver!r} (EDM's schedule) does not support {', '.join(problems)}")
        num_steps = EDM_DEFAULT_NUM_STEPS if num_steps is None else int(num_steps)
        if num_steps < 2:
            raise ValueError(f'solver {solver!r} needs num_steps >= 2 (got {num_steps})')
        dtype = torch.float64
        t = edm_schedule(net, num_steps, sigma_min, sigma_max, schedule_rho, device=device)
    else:
        dtype = spec.state_dtype or (torch.float64 if latents.dtype == torch.float64 else torch.float32)
        if t_steps is not None:
            t = as_schedule(t_steps, device=device, dtype=dtype)
            if num_steps is not None and int(num_steps) != len(t):
                raise ValueError(f'num_steps={num_steps} does not match the {len(t)} entries of t_steps')
        elif spec.schedule is not None:  # the solver's own timestamps over the unclipped range
            t = spec.schedule(DEFAULT_NUM_STEPS if num_steps is None else num_steps, sigma_min, sigma_max,
                              device=device, dtype=dtype, **options)
        else:
            lo, hi = clip_sigma_range(net, sigma_min, sigma_max)
            t = get_schedule(DEFAULT_NUM_STEPS if num_steps is None else num_steps, lo, hi, schedule_type,
                             schedule_rho, net=net, device=device, dtype=dtype)
        if spec.prepare is not None:
            options = spec.prepare(t, **options)

    x = resolve_prior(net, prior)(latents.to(dtype), t[0], generator)
    trajectory = [x] if return_trajectory else None

    def record(step):
        if trajectory is not None:
            trajectory.append(step.x_next)
        if callback is not None:
            callback(step)

    hook = record if (callback is not None or return_trajectory) else None
    if spec.kind == 'edm':
        x = spec.fn(net, x, t, class_labels, randn_like=randn_like, callback=hook, model_kwargs=model_kwargs,
                    **options)
    else:
        x = integrate(spec.fn, net, x, t, class_labels, afs=afs, callback=hook, model_kwargs=model_kwargs,
                      randn_like=randn_like, **options)
        if denoise_to_zero:
            x = net(x, t[-1], class_labels, **(model_kwargs or {})).to(dtype)  # final D call at t_{N-1}
            if return_trajectory:
                trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


__all__ = ['sample', 'DEFAULT_NUM_STEPS', 'EDM_DEFAULT_NUM_STEPS']
