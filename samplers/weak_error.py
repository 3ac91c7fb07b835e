"""Exact laws of one-step SDE schemes on Gaussian and 1-D test problems: weak errors without Monte Carlo noise.

A step of `samplers.itotaylor` (Itô–Taylor or Euler–Maruyama) with injected increments is affine in (dW, dZ) for a
fixed state x: x' = m(x) + s_W(x) dW + s_Z(x) dZ. Since (dW, dZ) are jointly Gaussian (Var dW = h, Var dZ = h^3/3,
Cov = h^2/2), x' given x is Gaussian with mean m(x) and variance s_W^2 h + s_Z^2 h^3/3 + s_W s_Z h^2; the
coefficients are read off the step itself with unit increments.

- Gaussian data (a linear denoiser): the step is also linear in x, so the variance propagates exactly,
  V' = m(1)^2 V + Var(x' | x) (the recipe of Kloeden & Platen's weak-order tests on linear SDEs).
- 1-D data: E[g(x_N)] by the backward Kolmogorov recursion u_k(x) = E[u_{k+1}(x') | x_k = x], u_N = g, on grids that
  cover every reachable state, with Gauss–Hermite quadrature in the increment and cubic splines in x.

`step(x, t_cur, t_next, dW, dZ) -> x_next` is any such step in float64 on states of shape [B, 1, 1, 1].
"""

import math

import numpy as np
import torch

# ----------------------------------------------------------------------------


def step_law(step, x, t_cur, t_next):
    """Mean and standard deviation of step(x, ...) over the increments, for x of shape [G] (float64 numpy)."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1, 1, 1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    h = float(t_cur) - float(t_next)
    out = step(torch.cat([x, x, x]), t_cur, t_next, torch.cat([zero, one, zero]), torch.cat([zero, zero, one]))
    mean, x_w, x_z = out.reshape(3, -1)
    s_w, s_z = x_w - mean, x_z - mean
    var = s_w ** 2 * h + s_z ** 2 * h ** 3 / 3 + s_w * s_z * h ** 2
    return mean.numpy(), var.clamp(min=0).sqrt().numpy()


def gaussian_final_variance(step, t_steps, var0):
    """Variance of the state after all steps over `t_steps` from N(0, var0), for a step that is linear in x."""
    var = float(var0)
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        (offset, gain), (_, sd) = step_law(step, [0.0, 1.0], t_cur, t_next)
        if abs(offset) > 1e-12 * max(1.0, abs(gain)):
            raise ValueError('the step is not linear in x (is the denoiser that of zero-mean Gaussian data?)')
        var = gain ** 2 * var + sd ** 2
    return var


def final_expectation(step, t_steps, start, g=np.square, grid_size=1001, nodes=40, width=8.0):
    """E[g(x_N)] after all steps over `t_steps`, from the 1-D Gaussian mixture `start` = [(weight, mean, var), ...].

    Grid k spans the states reachable from grid k-1 (mean +- `width` standard deviations); `nodes` Gauss–Hermite
    nodes need the increment's standard deviation to be small against the scale on which u_{k+1} varies (check
    convergence by doubling `nodes` and `grid_size`).
    """
    from scipy.interpolate import CubicSpline
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    half = max(abs(m) + 10 * math.sqrt(v) for _, m, v in start)
    grids, laws = [], []
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        grid = np.linspace(-half, half, grid_size)
        mean, sd = step_law(step, grid, t_cur, t_next)
        grids.append(grid)
        laws.append((mean, sd))
        half = float(np.max(np.abs(mean) + width * sd))
    u = g
    for grid, (mean, sd) in zip(reversed(grids), reversed(laws)):
        u = CubicSpline(grid, (u(mean[:, None] + sd[:, None] * z[None, :]) * w).sum(1))
    return float(sum(p * (u(m + math.sqrt(v) * z) * w).sum() for p, m, v in start))


__all__ = ['step_law', 'gaussian_final_variance', 'final_expectation']
