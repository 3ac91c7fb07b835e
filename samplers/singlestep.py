"""Singlestep DPM-Solver++ (Lu et al. 2022b) as FDM's generate.py runs it (`--solver=dpm` there): registered as
'dpmpp_singlestep'.

FDM (Wu et al. 2023) samples with the "DPM-Solver-fast" order pattern of Lu et al. 2022a applied to DPM-Solver++
(data prediction, no thresholding): S = NFE - 1 model evaluations are split into K = S // 3 + 1 outer steps of
orders [3, ..., 3] then [2, 1], [1] or [2] (S mod 3 = 0, 1, 2), the outer steps are uniform in lambda = -ln(sigma)
from sigma_max to sigma_min (no clipping to the net's range), each order-k step evaluates the net at k points
uniform in lambda inside it, and a final denoising call D(x; sigma_min) follows. So `num_steps` N has NFE = N, the
same number as FDM's `--steps`.

In the shared stepping loop (`samplers.stepping.integrate`) the timestamps are the N - 1 evaluation points plus
sigma_min: `schedule` builds them, and an order-k outer step spans k loop steps whose first k - 1 return its
intermediate points. With alpha = 1, sigma(t) = t, h = lambda_t - lambda_s and m = D (Lu et al. 2022b, 'dpmsolver'
type updates, r1 = 1/3, r2 = 2/3 on the default grid):

    order 1:  x_t = (t/s) x_s - phi_1 m_s,                                      phi_1 = expm1(-h)
    order 2:  x_s1 = (s1/s) x_s - expm1(-r1 h) m_s
              x_t = (t/s) x_s - phi_1 m_s - phi_1 (m_s1 - m_s) / (2 r1)
    order 3:  x_s2 = (s2/s) x_s - expm1(-r2 h) m_s + (r2/r1) phi_22 (m_s1 - m_s),  phi_22 = expm1(-r2 h)/(r2 h) + 1
              x_t = (t/s) x_s - phi_1 m_s + phi_2 (m_s2 - m_s) / r2,               phi_2 = phi_1 / h + 1

With explicit `t_steps`, the same grouping into outer steps is applied to the given points (r1, r2 from their lambda).
The state is float64 and the grid float32, as in FDM's code, so that its checkpoints give the same images.
"""

import torch

from .registry import SolverSpec, register_solver


def singlestep_orders(num_evals, max_order=3):
    """Orders of the outer steps that use `num_evals` model evaluations (Lu et al. 2022a, DPM-Solver-fast)."""
    if num_evals < 1:
        raise ValueError(f'dpmpp_singlestep needs num_steps >= 2 (got {num_evals + 1})')
    if max_order == 3:
        k = num_evals // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[num_evals % 3]
        return [3] * (k - len(tail)) + tail
    if max_order == 2:
        return [2] * (num_evals // 2) + [1] * (num_evals % 2)
    return [1] * num_evals


def _check(max_order):
    if max_order not in (1, 2, 3) or isinstance(max_order, bool):
        raise ValueError(f'dpmpp_singlestep: max_order must be 1, 2 or 3 (got {max_order!r})')
    return int(max_order)


def singlestep_schedule(num_steps, sigma_min, sigma_max, device=None, dtype=torch.float64, max_order=3, **options):
    """The N = num_steps timestamps: outer steps uniform in lambda from sigma_max to sigma_min, each order-k step
    split into k parts uniform in lambda (its evaluation points), ending at sigma_min. Computed in float32, FDM's
    grid, and returned in `dtype`; the solver's other options do not change it."""
    orders = singlestep_orders(int(num_steps) - 1, _check(max_order))
    f32 = torch.float32
    lam = torch.linspace(-torch.tensor(sigma_max, dtype=f32).log().item(),
                         -torch.tensor(sigma_min, dtype=f32).log().item(), len(orders) + 1, dtype=f32)
    outer = torch.exp(-lam)
    points = []
    for o, k in enumerate(orders):
        inner = torch.linspace(-outer[o].log().item(), -outer[o + 1].log().item(), k + 1, dtype=f32)
        points += [outer[o]] + [torch.exp(-v) for v in inner[1:-1]]
    points.append(outer[-1])
    return torch.stack(points).to(device=device, dtype=dtype or f32)


def _prepare(t_steps, max_order, denoise):
    orders = singlestep_orders(len(t_steps) - 1, _check(max_order))
    plan, start = [], 0
    for k in orders:
        plan += [(j, k, start) for j in range(k)]  # (stage j of an order-k outer step starting at index `start`)
        start += k
    return dict(plan=plan, denoise=bool(denoise))


def dpmpp_singlestep(s, plan, denoise=True):
    """One stage of the singlestep DPM-Solver++ (module docstring). With `denoise` (default, as FDM) the last step
    ends with the denoising call D(x; t_{N-1}), so NFE = N; without it NFE = N - 1 and the result is x at t_{N-1}."""
    j, k, a = plan[s.i]
    t = s.t_steps
    m = s.x_eval - s.t_cur * s.d                                        # data prediction D(x; t_cur)
    if j == 0:
        x_s, m_s = s.x, m
        s.keep = (x_s, m_s)
    else:
        x_s, m_s = s.history[j - 1].keep                                # the outer step's start (stage 0)
    lam = -torch.log(t)
    b = a + k
    h = lam[b] - lam[a]
    if j == k - 1:                                                      # last stage: x at the outer end t_b
        phi_1 = torch.expm1(-h)
        x_next = (t[b] / t[a]) * x_s - phi_1 * m_s                      # DPM-Solver++(1)
        if k == 2:
            r1 = (lam[a + 1] - lam[a]) / h
            x_next = x_next - (0.5 / r1) * phi_1 * (m - m_s)            # DPM-Solver++(2S)
        elif k == 3:
            r2 = (lam[a + 2] - lam[a]) / h
            x_next = x_next + (1 / r2) * (phi_1 / h + 1) * (m - m_s)    # DPM-Solver++(3S)
    elif j == 0:                                                        # first intermediate point s1
        x_next = (t[a + 1] / t[a]) * x_s - torch.expm1(-(lam[a + 1] - lam[a])) * m_s
    else:                                                               # second intermediate point s2 (order 3)
        r1, r2 = (lam[a + 1] - lam[a]) / h, (lam[a + 2] - lam[a]) / h
        phi_12 = torch.expm1(-r2 * h)
        x_next = (t[a + 2] / t[a]) * x_s - phi_12 * m_s + (r2 / r1) * (phi_12 / (r2 * h) + 1) * (m - m_s)
    if denoise and s.i == s.num - 1:
        x_next = s.model.denoise(x_next, t[-1])                         # final denoising call at sigma_min
    return x_next


register_solver(SolverSpec(
    'dpmpp_singlestep', dpmpp_singlestep, dict(max_order=3, denoise=True), max_order=3, order=3,
    nfe=lambda n, options: n if options['denoise'] else n - 1, prepare=_prepare, schedule=singlestep_schedule,
    state_dtype=torch.float64, teacher=False,
    doc='singlestep DPM-Solver++ (FDM)'))

__all__ = ['singlestep_orders', 'singlestep_schedule', 'dpmpp_singlestep']
