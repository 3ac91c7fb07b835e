"""`samplers.sample`: one entry point for every registered solver."""

import warnings

import torch

from torch_utils import precision as fast
from .priors import resolve_prior
from .registry import get_solver, solver_names
from .schedules import as_schedule, clip_sigma_range, edm_schedule, gddim_schedule, get_schedule
from .stepping import integrate

DEFAULT_NUM_STEPS = 7  # GITS toolbox default: 7 timestamps = 6 steps
EDM_DEFAULT_NUM_STEPS = 18
CLD_DEFAULT_NUM_STEPS = 50  # gDDIM's CIFAR-10 setting (NFE 50 with the final denoising call)


def check_net(net, spec):
    """ValueError (one line) unless `net` is the kind of model the solver needs: a CLD net (one with a `cld`
    process, `samplers.cld`) for needs='cld', a scalar-sigma denoiser otherwise."""
    is_cld = getattr(net, 'cld', None) is not None
    if spec.needs == 'cld' and not is_cld:
        raise ValueError(f'solver {spec.name!r} samples CLD nets (with a `cld` process); {type(net).__name__} is a '
                         f'scalar-sigma denoiser')
    if spec.needs != 'cld' and is_cld:
        raise ValueError(f'solver {spec.name!r} needs a scalar-sigma denoiser, but {type(net).__name__} is a CLD net; '
                         f'use solver={" or ".join(repr(n) for n in solver_names(kind="cld"))}')


def _explicit_steps(t_steps, num_steps, device, dtype):
    t = as_schedule(t_steps, device=device, dtype=dtype)
    if num_steps is not None and int(num_steps) != len(t):
        raise ValueError(f'num_steps={num_steps} does not match the {len(t)} entries of t_steps')
    return t


def sample(net, latents, class_labels=None, *, solver, num_steps=None, t_steps=None, sigma_min=0.002, sigma_max=80,
           schedule_type='polynomial', schedule_rho=7, afs=False, denoise_to_zero=False, randn_like=None,
           generator=None, prior=None, callback=None, return_trajectory=False, model_kwargs=None, precision=None,
           **solver_options):
    """Turn unit-variance `latents` into samples with a registered solver (`samplers.SOLVERS`).

    solver: a registered name, e.g. 'euler', 'heun', 'dpm', 'dpmpp', 'ipndm', 'ipndm_v', 'deis', 'unipc' (kind
      'ode'), 'edm' (EDM Algorithm 2, kind 'edm'), or for CLD nets 'gddim', 'cld_em' (kind 'cld', `samplers.cld`).
      A solver of kind 'cld' needs a CLD net, the others a scalar-sigma denoiser (ValueError otherwise).
    num_steps: kind 'ode': number of timestamps N (no trailing zero; N - 1 steps; default 7), the GITS toolbox's
      meaning. Kind 'edm': EDM's meaning (noise levels before the final zero; default 18). Kind 'cld': timestamps
      of gDDIM's grid `samplers.gddim.time_steps` (NFE = N with the final denoising call; default 50).
    t_steps: ('ode', 'cld') an explicit decreasing schedule used verbatim; then num_steps, sigma_min/max and the
      schedule options are not used (num_steps, if given, must equal its length).
    sigma_min, sigma_max: clipped to the net's range as EDM does (unless the solver has its own `schedule`, see
      `samplers.SolverSpec`; not used by kind 'cld'). schedule_type, schedule_rho: see `get_schedule` ('ode');
      for kind 'edm' schedule_rho is EDM's rho (polynomial schedule only).
    afs: analytical first step (saves one NFE). denoise_to_zero: finish with x = D(x; t_{N-1}) (one more NFE).
      Both 'ode' only.
    randn_like: the only noise source of stochastic solvers; default `generator.randn_like` if a generator is
      given, else torch.randn_like.
    generator: the per-seed generator of the latents (`samplers.generation.draw_inputs`), passed to the prior.
    prior: `prior(latents, sigma, generator) -> x_T` (see `samplers.priors`); default the net's `sample_prior`
      or the kind's (EDM's Gaussian; for kind 'cld' the process's equilibrium, v drawn after the latents).
    callback: called with a `samplers.stepping.StepRecord` after every step.
    return_trajectory: also return the stacked states [steps + 1 (+1 with denoise_to_zero), *latents.shape]; for
      kind 'cld' the states u = (x, v) [steps + 1, B, 2C, H, W] before the final denoising call.
    model_kwargs: extra keyword arguments for every net call.
    precision: None (call `net` as it is), 'fp32', 'bf16' or 'fp16': the net calls run under autocast
      (`torch_utils.precision.wrap`); the solver's own arithmetic keeps its precision.
    solver_options: per-solver options (`samplers.solver_defaults(solver)` lists them); unknown ones raise TypeError.

    Kinds 'ode' and 'cld' run in float32 (as the GITS toolbox) unless `latents` are float64 or the solver sets its
    `state_dtype`; kind 'edm' runs in float64. Kind 'cld' returns the images x.
    """
    spec = get_solver(solver)
    options = spec.check_options(solver_options)
    check_net(net, spec)
    if precision is not None:
        note = fast.check(precision, latents.device)
        if note:
            warnings.warn(note, stacklevel=2)
        net = fast.wrap(net, precision, latents.device, channels_last=False)
    if randn_like is None:
        randn_like = torch.randn_like if generator is None else generator.randn_like
    device = latents.device
    dtype = spec.state_dtype or (torch.float64 if latents.dtype == torch.float64 else torch.float32)
    if spec.kind in ('edm', 'cld'):
        problems = [name for name, bad in (('t_steps', t_steps is not None and spec.kind == 'edm'), ('afs', afs),
                                           ('denoise_to_zero', denoise_to_zero),
                                           (f'schedule_type={schedule_type!r}', schedule_type != 'polynomial')) if bad]
        if problems:
            schedule = "EDM's schedule" if spec.kind == 'edm' else "gDDIM's time grid"
            raise ValueError(f"solver {solver!r} ({schedule}) does not support {', '.join(problems)}")
    if spec.kind == 'edm':
        num_steps = EDM_DEFAULT_NUM_STEPS if num_steps is None else int(num_steps)
        if num_steps < 2:
            raise ValueError(f'solver {solver!r} needs num_steps >= 2 (got {num_steps})')
        dtype = torch.float64
        t = edm_schedule(net, num_steps, sigma_min, sigma_max, schedule_rho, device=device)
    elif spec.kind == 'cld':
        if t_steps is not None:
            t = _explicit_steps(t_steps, num_steps, device, torch.float64)
        else:
            t = gddim_schedule(CLD_DEFAULT_NUM_STEPS if num_steps is None else num_steps, device=device)
    elif t_steps is not None:
        t = _explicit_steps(t_steps, num_steps, device, dtype)
    elif spec.schedule is not None:  # the solver's own timestamps over the unclipped range
        t = spec.schedule(DEFAULT_NUM_STEPS if num_steps is None else num_steps, sigma_min, sigma_max,
                          device=device, dtype=dtype, **options)
    else:
        lo, hi = clip_sigma_range(net, sigma_min, sigma_max)
        t = get_schedule(DEFAULT_NUM_STEPS if num_steps is None else num_steps, lo, hi, schedule_type,
                         schedule_rho, net=net, device=device, dtype=dtype)
    if spec.prepare is not None:
        options = spec.prepare(t, **options)

    x = resolve_prior(net, prior, spec.kind)(latents.to(dtype), t[0], generator)
    trajectory = [x] if return_trajectory else None

    def record(step):
        if trajectory is not None:
            trajectory.append(step.x_next)
        if callback is not None:
            callback(step)

    hook = record if (callback is not None or return_trajectory) else None
    if spec.kind in ('edm', 'cld'):
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


__all__ = ['sample', 'check_net', 'DEFAULT_NUM_STEPS', 'EDM_DEFAULT_NUM_STEPS', 'CLD_DEFAULT_NUM_STEPS']
