"""Learned time schedules: the noise levels that bring a solver's few-step samples closest to a teacher's.

For a deterministic 'ode' solver with N timestamps t_0 = sigma_max > t_1 > ... > t_{N-1} = sigma_min, the N - 2
interior levels minimise the distance between the solver's final samples and a teacher's, from the same
warm-up latents z_b (the objective of LD3, Tong et al. 2024, without its relaxed latents):

    L(t) = mean_b || S_t(z_b) - T(z_b) ||_2 / sqrt(dim)

S_t runs the solver exactly as `samplers.sample` will (same options, AFS and denoise_to_zero, so the NFE is the
one asked for); T is a high-accuracy solve of the same ODE (by default UniPC in noise-prediction mode on 101
polynomial timestamps; it ends with the same final denoising step if the student has one).

Parameterisation: the log-sigma increments are a softmax, so every parameter vector is a valid decreasing
schedule with fixed ends: ln t_i = ln sigma_max - (ln sigma_max - ln sigma_min) sum_{j<i} p_j,
p = eps + (1 - (N-1) eps) softmax([0, theta]).

Search (docs/samplers.md, "Learned schedules", has the measurements behind each choice):
1. global start: the best of each family of schedules: polynomial for several rho, log-SNR, GITS (with AFS, every
   first-step insertion GITS would try) and each of the `starts` given;
2. local refinement: a few iterations from each family's best, then on from the best result:
   Levenberg-Marquardt on the iteratively reweighted least-squares form of L (the weights
   1 / ||S_t(z_b) - T(z_b)|| make the Gauss-Newton model exact for the gradient of L), with the Jacobian of the
   samples by forward differences in theta (N - 2 extra solver runs, no gradients through the solver or the net);
3. seeded random restarts around the best schedule, each refined again, to leave local minima.
All of it is deterministic: the same inputs give the same schedule.
"""

import math

import numpy as np
import torch

from .gits import gits_cost_matrix, gits_dp, teacher_trajectory
from .registry import get_solver
from .sampling import sample
from .schedules import clip_sigma_range, get_schedule

DEFAULT_TEACHER = dict(solver='unipc', num_steps=101, predict_x0=False)
START_RHOS = (2, 3, 5, 7, 10)
MIN_SHARE = 1e-4  # eps above: the smallest share of the log-sigma range one step can get
FD_STEP = 1e-3  # forward-difference step in theta
RESTART_SCALE = 0.7  # standard deviation of a random restart's step in theta
GITS_GRID, GITS_ROUND = 61, 64  # GITS starts: the default fine grid, and warm-up latents per teacher round

# ----------------------------------------------------------------------------
# Schedules <-> parameters.


def schedule_from_params(theta, sigma_min, sigma_max):
    """The float64 schedule of parameters `theta` (N - 2 values; see the module docstring)."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    z = torch.cat([torch.zeros(1, dtype=torch.float64), theta])
    p = MIN_SHARE + (1 - len(z) * MIN_SHARE) * torch.softmax(z, dim=0)
    frac = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(p, 0)])
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    inner = torch.exp(hi - (hi - lo) * frac[1:-1])
    return torch.cat([torch.tensor([sigma_max], dtype=torch.float64), inner,
                      torch.tensor([sigma_min], dtype=torch.float64)])


def params_from_schedule(t_steps):
    """Inverse of `schedule_from_params` (shares below MIN_SHARE are raised to it)."""
    log_t = torch.as_tensor(t_steps, dtype=torch.float64).log()
    p = (log_t[:-1] - log_t[1:]) / (log_t[0] - log_t[-1])
    q = ((p - MIN_SHARE) / (1 - len(p) * MIN_SHARE)).clamp_min(1e-12)
    return (q.log() - q[0].log())[1:]

# ----------------------------------------------------------------------------
# Start schedules.


def gits_starts(net, num_steps, latents, class_labels, sigma_min, sigma_max, afs=False, model_kwargs=None):
    """GITS schedules of `num_steps` levels (Chen et al. 2024; `samplers.gits` defaults: iPNDM teacher on 61
    polynomial levels, metric 'dev', coeff 1.15): the DP path, and with AFS every insertion of one level into the
    first step of the (num_steps - 1)-level path (GITS scores these by running the student; here the caller does)."""
    fine = get_schedule(GITS_GRID, sigma_min, sigma_max, dtype=latents.dtype, device=latents.device)
    cost = 0
    for start in range(0, len(latents), GITS_ROUND):  # rounds bound the memory of the stored trajectories
        labels = None if class_labels is None else class_labels[start:start + GITS_ROUND]
        states, derivs = teacher_trajectory(net, latents[start:start + GITS_ROUND], fine, labels, solver='ipndm',
                                            model_kwargs=model_kwargs, max_order=4)
        cost = cost + gits_cost_matrix(states, derivs, fine) * len(states[0])
    cost = cost / len(latents)
    paths = [gits_dp(cost, num_steps)]
    if afs:
        path = gits_dp(cost, num_steps - 1)
        paths += [[0, k] + path[1:] for k in range(1, path[1])]
    return [fine[p] for p in paths]

# ----------------------------------------------------------------------------
# The objective.


class _Objective:
    """Final-sample errors of the student against the teacher, and L, counting solver runs."""

    def __init__(self, run, target, sigma_min, sigma_max):
        self.run, self.target = run, target
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.dim = target[0].numel()
        self.evals = 0

    def errors(self, theta):
        """[B, dim] float64 errors, or None if the solver diverged on this schedule."""
        self.evals += 1
        with np.errstate(divide='ignore', invalid='ignore'):  # coinciding nodes (DEIS tables) are caught below
            x = self.run(schedule_from_params(theta, self.sigma_min, self.sigma_max))
        e = (x.to(torch.float64) - self.target).reshape(len(x), -1)
        return e if bool(torch.isfinite(e).all()) else None

    def loss(self, e):
        return math.inf if e is None else float(e.norm(dim=1).mean()) / math.sqrt(self.dim)


def _levenberg_marquardt(obj, theta, e, max_iter, stop, rtol=1e-3):
    """Refine theta (errors e) by IRLS Levenberg-Marquardt: at most `max_iter` Jacobians, and no new one once
    `stop` solver runs are spent. Returns (theta, e)."""
    f, damping = obj.loss(e), 1e-3
    for _ in range(max_iter if len(theta) else 0):
        if obj.evals + len(theta) + 1 > stop:
            break
        cols = []
        for k in range(len(theta)):  # forward differences: d e / d theta_k
            step = torch.zeros_like(theta)
            step[k] = FD_STEP
            e_k = obj.errors(theta + step)
            if e_k is None:
                return theta, e
            cols.append((e_k - e) / FD_STEP)
        w = e.norm(dim=1, keepdim=True).clamp_min(1e-12).rsqrt()  # IRLS: sum_b ||e_b|| = sum_b w_b^2 ||e_b||^2
        jac = torch.stack([c * w for c in cols], dim=-1).reshape(-1, len(theta))
        res = (e * w).reshape(-1)
        a, g = jac.T @ jac, jac.T @ res
        improved = False
        while obj.evals < stop:
            reg = a + damping * torch.diag(a.diagonal().clamp_min(1e-12))
            cand = theta - torch.linalg.solve(reg, g)
            e_c = obj.errors(cand)
            f_c = obj.loss(e_c)
            if f_c < f:
                improved = f - f_c > rtol * f
                theta, e, f = cand, e_c, f_c
                damping = max(damping / 3, 1e-7)
                break
            damping *= 4
            if damping > 1e6:
                break
        if not improved:
            break
    return theta, e

# ----------------------------------------------------------------------------

SEARCH_SETTINGS = dict(version=1, restarts=2, seed=0)  # search defaults (part of generate.py's cache key)
MAX_ITER, MAX_ITER_RESTART = 30, 5  # Levenberg-Marquardt iterations in all, and from a start or a restart


def learn_schedule(net, num_steps, warmup_latents, class_labels=None, *, solver, teacher=None, sigma_min=0.002,
                   sigma_max=80, afs=False, denoise_to_zero=False, model_kwargs=None, starts=None,
                   restarts=SEARCH_SETTINGS['restarts'], seed=SEARCH_SETTINGS['seed'], max_evals=None,
                   return_info=False, **solver_options):
    """Learn a schedule of `num_steps` timestamps for `solver`; returns the noise levels (float64 tensor).

    net, warmup_latents [B, C, H, W] (unit variance), class_labels: the warm-up batch.
    solver, **solver_options: a deterministic registered 'ode' solver and its options; afs, denoise_to_zero as
      in `samplers.sample` (the schedule is learned for exactly this sampler, so its NFE is
      `samplers.solver_nfe(solver, num_steps, afs, denoise_to_zero, **solver_options)`).
    teacher: the target samples [B, ...] of the warm-up latents, or the keyword arguments of `samplers.sample`
      that compute them (default `DEFAULT_TEACHER`); either way they are compared at sigma_min (after the final
      denoising step if denoise_to_zero).
    sigma_min, sigma_max: the fixed end points (clipped to the net's range as in `samplers.sample`).
    starts: extra candidate schedules of num_steps levels for the global start.
    restarts, seed: random restarts (Gaussian steps in theta from a generator seeded with `seed`).
    max_evals: stop computing Jacobians once this many student runs are spent (default: no limit beyond
      MAX_ITER and MAX_ITER_RESTART iterations).
    return_info: also return a dict: loss (L on the warm-up batch), start (name of the best start), history
      (list of (phase, loss, student runs so far)), evals.
    """
    spec = get_solver(solver)
    if spec.kind != 'ode' or spec.stochastic:
        raise ValueError(f'learn_schedule needs a deterministic ODE solver that takes a schedule (got {solver!r})')
    spec.check_options(solver_options)
    num_steps = int(num_steps)
    if num_steps < 2:
        raise ValueError(f'num_steps counts timestamps and must be at least 2 (got {num_steps})')
    starts = [torch.as_tensor(t, dtype=torch.float64).flatten() for t in (starts or [])]
    for k, t in enumerate(starts):
        if len(t) != num_steps:
            raise ValueError(f'start schedule {k} has {len(t)} timestamps, not {num_steps}')
    lo, hi = clip_sigma_range(net, sigma_min, sigma_max)
    latents = warmup_latents.to(torch.float64)  # float64 state: smooth in theta for the forward differences
    common = dict(denoise_to_zero=denoise_to_zero, model_kwargs=model_kwargs)

    if isinstance(teacher, torch.Tensor):
        target = teacher.to(device=latents.device, dtype=torch.float64)
        if target.shape != latents.shape:
            raise ValueError(f'teacher samples have shape {list(target.shape)}, the warm-up latents '
                             f'{list(latents.shape)}')
    else:
        target = sample(net, latents, class_labels, sigma_min=lo, sigma_max=hi, **common,
                        **(DEFAULT_TEACHER if teacher is None else teacher))
    obj = _Objective(lambda t: sample(net, latents, class_labels, solver=solver, t_steps=t, afs=afs, **common,
                                      **solver_options), target.to(torch.float64), lo, hi)
    history = []

    def note(phase, e):
        history.append((phase, obj.loss(e), obj.evals))

    # 1. Global start: the best schedule of each family (polynomial, log-SNR, GITS, given), by L.
    families = {'polynomial': [get_schedule(num_steps, lo, hi, 'polynomial', r, dtype=torch.float64)
                               for r in START_RHOS],
                'logsnr': [get_schedule(num_steps, lo, hi, 'logsnr', dtype=torch.float64)]}
    if num_steps > 2:
        families['GITS'] = gits_starts(net, num_steps, latents, class_labels, lo, hi, afs, model_kwargs)
    families.update({f'start {k}': [t] for k, t in enumerate(starts)})
    leaders = []
    for name, schedules in families.items():
        scored = [(obj.loss(e), theta, e) for theta in map(params_from_schedule, schedules)
                  for e in [obj.errors(theta)] if e is not None]
        if scored:
            leaders.append((*min(scored, key=lambda c: c[0]), name))
    if not leaders:
        raise ValueError(f'solver {solver!r} diverges on every start schedule')
    for *_, e, name in sorted(leaders, key=lambda c: c[0]):
        note(name, e)

    # 2. Local refinement: a few iterations from each family's leader, then on from the best of them.
    stop = math.inf if max_evals is None else int(max_evals)
    best = None
    for _, theta, e, name in leaders:
        theta, e = _levenberg_marquardt(obj, theta, e, MAX_ITER_RESTART, stop)
        if best is None or obj.loss(e) < best[0]:
            best, start = (obj.loss(e), theta, e), name
    theta, e = _levenberg_marquardt(obj, best[1], best[2], MAX_ITER - MAX_ITER_RESTART, stop)
    best = (obj.loss(e), theta, e)
    note(f'refined from {start}', e)

    # 3. Random restarts around the best schedule so far.
    gen = torch.Generator().manual_seed(int(seed))
    for k in range(restarts if len(theta) else 0):
        step = RESTART_SCALE * torch.randn(len(theta), generator=gen, dtype=torch.float64)
        if obj.evals >= stop:
            break
        e = obj.errors(best[1] + step)
        if e is None:
            continue
        theta, e = _levenberg_marquardt(obj, best[1] + step, e, MAX_ITER_RESTART, stop)
        note(f'restart {k + 1}', e)
        if obj.loss(e) < best[0]:
            best = (obj.loss(e), theta, e)
    t = schedule_from_params(best[1], lo, hi)
    if not return_info:
        return t
    return t, dict(loss=best[0], start=start, history=history, evals=obj.evals)


__all__ = ['learn_schedule', 'schedule_from_params', 'params_from_schedule', 'DEFAULT_TEACHER', 'SEARCH_SETTINGS']
