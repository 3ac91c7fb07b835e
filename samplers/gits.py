"""GITS: geometry-inspired time scheduling (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024, arXiv 2405.11326).

1. A teacher solver runs on a fine grid of M = num_steps_tea noise levels from warm-up latents, recording its
   states X_0..X_{M-1} and first-stage derivatives d_0..d_{M-2}.
2. Cost C[i, j] (i < j) of jumping from grid point i to j with one Euler step from the teacher state:
   X_hat = X_i + (t_j - t_i) d_i compared with X_j ('l1', 'l2', or 'dev': the change in distance to the teacher's
   straight chord X_0 -> X_{M-1}, signed), averaged over the batch and over warm-up rounds.
3. Dynamic programming picks num_steps indices 0 = s_0 < ... < s_K = M-1 minimising
   sum_m coeff^(m-1) C[s_{m-1}, s_m] (coeff multiplies the remaining cost), backtracking to the smallest index.
4. Optionally (afs=True) one extra point is inserted after the first, chosen by running the student with AFS.

This follows the GITS toolbox (zju-pi/diff-sampler, gits-main) so the same warm-up latents give the same
schedule, except that the teacher takes its own options (the toolbox silently reused the student's max_order
and afs for the teacher).
"""

import numpy as np
import torch

from .registry import get_solver, solver_names
from .sampling import sample
from .schedules import clip_sigma_range, get_schedule

METRICS = ('dev', 'l1', 'l2')

# ----------------------------------------------------------------------------


def teacher_trajectory(net, latents, t_steps, class_labels=None, solver='ipndm', afs=False, model_kwargs=None,
                       **options):
    """Run `solver` on the grid `t_steps`; return (states [M, B, ...], first-stage derivatives [M-1, B, ...]).

    The states start at the prior at t_steps[0] (float32 state as in `samplers.sample`). The teacher must be a
    registered 'ode' solver marked as a teacher (it reports the derivative of the state it carries).
    """
    teachers = solver_names(kind='ode', teacher=True)
    if solver not in teachers:
        raise ValueError(f'GITS teacher must be one of {", ".join(teachers)} (got {solver!r}); a teacher must '
                         f'report the derivative at the state it carries (UniPC does not)')
    derivs = []
    _, states = sample(net, latents, class_labels, solver=solver, t_steps=t_steps, afs=afs,
                       callback=lambda step: derivs.append(step.d_cur), return_trajectory=True,
                       model_kwargs=model_kwargs, **options)
    return states, torch.stack(derivs)


def _deviation(points, x_first, x_last):
    """dev(P) = || v - <v, u> u ||_2 with u = (X_last - X_first) / ||.||, v = X_last - P (per sample)."""
    b = x_first.shape[0]
    chord = (x_last - x_first).reshape(b, -1)
    u = chord / chord.norm(dim=1, keepdim=True)
    v = (x_last.unsqueeze(0) - points).reshape(points.shape[0], b, -1)
    proj = (v * u).sum(-1, keepdim=True)
    return (v - proj * u).norm(dim=-1)  # [P, B]


def gits_cost_matrix(states, derivs, t_steps, metric='dev'):
    """C [M, M] float32 (only i < j used): cost of one Euler jump i -> j from the teacher's state X_i.

    Chen et al. 2024 (GITS cost, with the toolbox's metrics): 'l1' = mean ||X_hat - X_j||_1, 'l2' =
    mean ||X_hat - X_j||_2, 'dev' = mean dev(X_hat) - mean dev(X_j) with dev(X_{M-1}) := 0 (signed).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    m = states.shape[0]
    t = t_steps.to(device=states.device, dtype=states.dtype)
    cost = torch.zeros([m, m], dtype=torch.float32)
    if metric == 'dev':
        dev_teacher = _deviation(states, states[0], states[-1]).mean(dim=1)
        dev_teacher[-1] = 0
    for i in range(m - 1):
        steps = (t[i + 1:] - t[i]).reshape(-1, *([1] * (states.ndim - 1)))
        x_hat = states[i].unsqueeze(0) + steps * derivs[i].unsqueeze(0)  # one Euler step i -> j
        if metric == 'dev':
            c = _deviation(x_hat, states[0], states[-1]).mean(dim=1) - dev_teacher[i + 1:]
        else:
            diff = (x_hat - states[i + 1:]).reshape(m - i - 1, states.shape[1], -1)
            c = (diff.abs().sum(-1) if metric == 'l1' else diff.norm(dim=-1)).mean(dim=1)
        cost[i, i + 1:] = c.to(torch.float32).cpu()
    return cost


def gits_dp(cost, num_steps, coeff=1.15):
    """Indices 0 = s_0 < s_1 < ... < s_K = M-1 (K = num_steps - 1) minimising sum_m coeff^(m-1) C[s_{m-1}, s_m].

    Chen et al. 2024 (GITS dynamic programming): V_1(j) = C[j, M-1]; V_k(j) = min_{j < i <= M-2} C[j, i] + coeff
    V_{k-1}(i) (float64 accumulation over the float32 costs); backtracking from 0 takes the smallest i attaining
    the minimum. Returns a list of num_steps ints.
    """
    c = np.asarray(torch.as_tensor(cost, dtype=torch.float32).cpu().numpy(), dtype=np.float64)
    m = c.shape[0]
    k_steps = int(num_steps) - 1
    if not 1 <= k_steps <= m - 1:
        raise ValueError(f'num_steps must be in 2..{m} for a fine grid of {m} points (got {num_steps})')
    value = np.full([k_steps + 1, m], np.inf)
    value[1, :m - 1] = c[:m - 1, m - 1]
    for k in range(2, k_steps + 1):
        for j in range(m - 1):
            cands = c[j, j + 1:m - 1] + coeff * value[k - 1, j + 1:m - 1]
            if cands.size:
                value[k, j] = cands.min()
    if not np.isfinite(value[k_steps, 0]):
        raise ValueError(f'no path with {k_steps} steps through {m} grid points')
    path, w = [0], 0
    for k in range(k_steps, 1, -1):
        cands = c[w, w + 1:m - 1] + coeff * value[k - 1, w + 1:m - 1]
        w = w + 1 + int(np.flatnonzero(cands == value[k, w])[0])
        path.append(w)
    path.append(m - 1)
    return path

# ----------------------------------------------------------------------------


def gits_schedule(net, num_steps, warmup_latents, class_labels=None, solver_tea='ipndm', num_steps_tea=61,
                  metric='dev', coeff=1.15, sigma_min=0.002, sigma_max=80, schedule_type='polynomial',
                  schedule_rho=7, afs=False, max_order=4, *, solver='ipndm', solver_options=None, batch_size=None,
                  return_indices=False, model_kwargs=None, **teacher_options):
    """Search a GITS schedule of `num_steps` timestamps; returns the noise levels (float32 tensor).

    net, warmup_latents [B, C, H, W] (unit variance), class_labels: the warm-up batch (the toolbox draws 256).
    solver_tea, num_steps_tea: teacher solver and its fine grid (get_schedule(num_steps_tea, sigma_min, sigma_max,
      schedule_type, schedule_rho); the range is clipped to the net's as in `sample`).
    max_order, **teacher_options: the teacher's own options (max_order is capped at what the teacher supports
      and ignored by euler/heun/dpm; e.g. deis_mode, predict_x0). The teacher never takes an analytic first step.
      (The toolbox passed the student's max_order/afs/... to the teacher; here they are separate.)
    metric 'dev' | 'l1' | 'l2', coeff: the DP's metric and discount (see `gits_cost_matrix`, `gits_dp`).
    afs: the student will use AFS: insert one extra point k in (0, s_1) chosen by running the student `solver`
      (with `solver_options`, AFS on) from the last warm-up round and comparing with the teacher's final samples
      (batch-mean L2). The result then has num_steps + 1 timestamps for the same NFE; if s_1 = 1 there is no
      room and nothing is inserted (the student then saves one NFE, as in the toolbox).
    batch_size: split the warm-up batch into rounds of this size; costs are averaged over rounds.
    return_indices: also return the chosen indices into the fine grid.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    tea_opts = dict(teacher_options)
    tea_spec = get_solver(solver_tea)
    if tea_spec.max_order is not None:
        tea_opts['max_order'] = min(int(max_order), tea_spec.max_order)
    lo, hi = clip_sigma_range(net, sigma_min, sigma_max)
    fine = get_schedule(num_steps_tea, lo, hi, schedule_type, schedule_rho, net=net, device=warmup_latents.device)

    n = warmup_latents.shape[0]
    size = n if batch_size is None else int(batch_size)
    rounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    cost = None
    for start, stop in rounds:
        labels = None if class_labels is None else class_labels[start:stop]
        states, derivs = teacher_trajectory(net, warmup_latents[start:stop], fine, labels, solver=solver_tea,
                                            model_kwargs=model_kwargs, **tea_opts)
        c = gits_cost_matrix(states, derivs, fine, metric)
        cost = c if cost is None else cost + c
    cost = cost / len(rounds)
    indices = gits_dp(cost, num_steps, coeff)

    if afs and indices[1] > 1:
        # GITS toolbox: with AFS the first step is free, so try one more point in (0, s_1).
        opts = dict(solver_options or {})
        labels = None if class_labels is None else class_labels[start:stop]
        target = states[-1]
        best = None
        for k in range(1, indices[1]):
            cand = [0, k] + indices[1:]
            x = _sample_on(net, warmup_latents[start:stop], fine[cand], labels, solver, opts, model_kwargs)
            err = (x - target).reshape(x.shape[0], -1).norm(dim=1).mean().item()
            if best is None or err < best[0]:
                best = (err, cand)
        indices = best[1]

    t_steps = fine[indices]
    return (t_steps, indices) if return_indices else t_steps


def _sample_on(net, latents, t_steps, class_labels, solver, options, model_kwargs):
    return sample(net, latents, class_labels, solver=solver, t_steps=t_steps, afs=True, model_kwargs=model_kwargs,
                  **options)


__all__ = ['METRICS', 'teacher_trajectory', 'gits_cost_matrix', 'gits_dp', 'gits_schedule']
