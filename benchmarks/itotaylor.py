"""Itô–Taylor sampler benchmark: weak errors against Euler–Maruyama, Laplacian estimators, cost per step.

    python benchmarks/itotaylor.py > /tmp/itotaylor-tables.md      # about 3 minutes on one CPU thread

Prints the markdown tables quoted in docs/itotaylor.md:
1. Gaussian data N(0, 0.5^2): error of the final variance at sigma_min, exact variance propagation
   (`samplers.weak_error.gaussian_final_variance`).
2. 1-D mixture 0.5 N(-1, 0.3^2) + 0.5 N(1, 0.3^2): error of E[x^2] at sigma_min, computed from the exact law of
   each scheme (`samplers.weak_error.final_expectation`; no Monte Carlo noise).
3. Laplacian estimators on a randomly initialised DDPM++ network: error of one-probe estimates in float32 against
   the nested JVP of the same network in float64, for the same probe.
4. Wall-clock cost of a forward pass, a JVP and a nested JVP on that network, and of one step of each scheme.
All runs: EDM schedule, rho = 7, sigma from 80 to 0.002 (N levels, N - 1 steps, no final zero), langevin = 1.
"""

import copy
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from samplers.analytic import Gaussian, GaussianMixture  # noqa: E402
from samplers.edm import edm_schedule  # noqa: E402
from samplers.itotaylor import laplacian_estimate, step_map  # noqa: E402
from samplers.weak_error import final_expectation, gaussian_final_variance  # noqa: E402

# ----------------------------------------------------------------------------


def schedule(net, n):
    return edm_schedule(net, n, 0.002, 80, 7)[:-1]


def orders(steps, errors):
    """Local slopes -d log|err| / d log N between consecutive step counts."""
    e = np.abs(np.asarray(errors))
    return [float(np.log(e[i] / e[i + 1]) / np.log(steps[i + 1] / steps[i])) for i in range(len(e) - 1)]


def table(title, steps, rows):
    lines = [f'| {title} | ' + ' | '.join(f'N={n}' for n in steps) + ' | order (last pair) |',
             '|---|' + '---|' * (len(steps) + 1)]
    for name, errors in rows:
        lines.append(f'| {name} | ' + ' | '.join(f'{e:+.2e}' for e in errors) + f' | {orders(steps, errors)[-1]:.2f} |')
    return '\n'.join(lines)

# ----------------------------------------------------------------------------


def gaussian_table(steps=(10, 20, 40, 80, 160, 320)):
    s = 0.5
    net = Gaussian(torch.zeros(1, 1, 1), s * s)
    rows = []
    for name, step in [('SDE, Euler–Maruyama', step_map(net, scheme='em')), ('SDE, Itô–Taylor', step_map(net)),
                       ('SDE langevin=0.5, Itô–Taylor', step_map(net, 0.5)),
                       ('ODE, Euler', step_map(net, 0.0, scheme='em')),
                       ('ODE, Taylor-2 (langevin=0)', step_map(net, 0.0))]:
        errors = []
        for n in steps:
            t = schedule(net, n)
            errors.append(gaussian_final_variance(step, t, s * s + float(t[0]) ** 2) - (s * s + float(t[-1]) ** 2))
        rows.append((name, errors))
    return table('final variance error', steps, rows)


def mixture_table(steps=(10, 20, 40, 80, 160)):
    net = GaussianMixture(torch.tensor([[-1.0], [1.0]]), [0.09, 0.09], shape=(1, 1, 1))
    start = [(0.5, -1.0, 0.09 + 80.0 ** 2), (0.5, 1.0, 0.09 + 80.0 ** 2)]
    rows, spread, spread_default = [], 0.0, 0.0
    for name, step in [('Euler–Maruyama', step_map(net, scheme='em')),
                       ('Itô–Taylor, Hutchinson Laplacian', step_map(net)),
                       ('Itô–Taylor, symmetric-difference Laplacian', step_map(net, laplacian='symmetric')),
                       ('Itô–Taylor without Laplacian', step_map(net, laplacian='none'))]:
        errors = []
        for n in steps:
            t = schedule(net, n)
            exact = 1.09 + float(t[-1]) ** 2
            # Few steps need many quadrature nodes (large increments against the scale of the mixture).
            fine = final_expectation(step, t, start, grid_size=2001, nodes=300) - exact
            spread = max(spread, abs(fine - (final_expectation(step, t, start, grid_size=1501, nodes=200) - exact)))
            if n >= 40:
                spread_default = max(spread_default, abs(fine - (final_expectation(step, t, start) - exact)))
            errors.append(fine)
        rows.append((name, errors))
    return table('E[x^2] error', steps, rows) + (
        f'\n\nQuadrature: 2001 grid points and 300 Gauss–Hermite nodes; 1501 / 200 agree to {spread:.1e},\n'
        f'and at N >= 40 the defaults of `final_expectation` (1001 / 40, used by the tests) to {spread_default:.1e}.')


def small_ddpmpp(seed=0, resolution=16, channels=32, mult=(1, 2), blocks=1):
    from training import networks
    torch.manual_seed(seed)
    net = networks.EDMPrecond(img_resolution=resolution, img_channels=3, model_type='SongUNet',
                              model_channels=channels, channel_mult=list(mult), num_blocks=blocks,
                              attn_resolutions=[resolution // 2], dropout=0)
    with torch.no_grad():  # Random weights everywhere (zero-initialised output layers would make F trivially 0).
        for p in net.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
    return net.eval().requires_grad_(False)


def laplacian_table(sigmas=(0.02, 0.2, 2.0, 20.0), rel_steps=(0.1, 0.3)):
    net32 = small_ddpmpp()
    net64 = copy.deepcopy(net32).double()
    g = torch.Generator().manual_seed(1)
    head = '| sigma | nested JVP, f32 | ' + ' | '.join(f'symmetric η={e}, f32' for e in rel_steps)
    head += ' | ' + ' | '.join(f'symmetric η={e}, f64' for e in rel_steps) + ' |'
    lines = [head, '|---|' + '---|' * (1 + 2 * len(rel_steps))]
    for sigma in sigmas:
        x = (0.5 * torch.rand(4, 3, 16, 16, generator=g) - 0.25 + sigma * torch.randn(4, 3, 16, 16, generator=g))
        x = x.double()
        v = torch.randn(x.shape, generator=g, dtype=torch.float64).sign()
        s = torch.tensor(sigma, dtype=torch.float64)
        d32 = lambda z, s: net32(z, s).double()  # noqa: E731
        d64 = lambda z, s: net64(z, s)  # noqa: E731
        with torch.no_grad():
            ref = laplacian_estimate(d64, x, s, v, 'hutchinson')[1]
            rms = ref.square().mean().sqrt()
            rel = lambda est: f'{float((est - ref).square().mean().sqrt() / rms):.1e}'  # noqa: E731
            cells = [rel(laplacian_estimate(d32, x, s, v, 'hutchinson')[1])]
            cells += [rel(laplacian_estimate(d32, x, s, v, 'symmetric', rel_step=e)[1]) for e in rel_steps]
            cells += [rel(laplacian_estimate(d64, x, s, v, 'symmetric', rel_step=e)[1]) for e in rel_steps]
        lines.append(f'| {sigma:g} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def time_parts(net, batch, rounds=5):
    """Minimum wall-clock time of a forward pass, a JVP and a nested JVP (interleaved rounds)."""
    res = net.img_resolution
    x = torch.randn(batch, 3, res, res, dtype=torch.float64)
    v = torch.randn_like(x).sign()
    s = torch.tensor(1.0, dtype=torch.float64)
    D = lambda z, s: net(z, s).double()  # noqa: E731
    parts = dict(forward=lambda: D(x, s),
                 jvp=lambda: torch.func.jvp(D, (x, s), (v, torch.ones_like(s))),
                 nested=lambda: laplacian_estimate(D, x, s, v, 'hutchinson'))
    times = {k: [] for k in parts}
    with torch.no_grad():
        for k in parts:
            parts[k]()  # warm-up (torch prepares its forward-AD rules on first use)
        for _ in range(rounds):  # interleaved, minimum over rounds: robust to a busy machine
            for k, f in parts.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def cost_table():
    configs = [('16x16, 32 ch, batch 8', small_ddpmpp(), 8),
               ('32x32, 64 ch, 2 blocks, batch 4', small_ddpmpp(resolution=32, channels=64, mult=(1, 2, 2),
                                                                blocks=2), 4)]
    measured = [(label, time_parts(net, batch)) for label, net, batch in configs]
    rows = [('forward pass', lambda t: t['forward']), ('JVP (x and sigma)', lambda t: t['jvp']),
            ('nested JVP (Laplacian probe, returns D too)', lambda t: t['nested']),
            ('Euler–Maruyama step (1 forward)', lambda t: t['forward']),
            ('Heun step of EDM (2 forward)', lambda t: 2 * t['forward']),
            ('Itô–Taylor noise-free step (forward + JVP)', lambda t: t['forward'] + t['jvp']),
            ('Itô–Taylor noisy step, Hutchinson (nested JVP + JVP)', lambda t: t['nested'] + t['jvp']),
            ('Itô–Taylor noisy step, symmetric (3 forward + JVP)', lambda t: 3 * t['forward'] + t['jvp'])]
    lines = ['| work | ' + ' | '.join(label for label, _ in measured) + ' |', '|---|' + '---|' * len(measured)]
    for name, fn in rows:
        cells = [f'{fn(t) / t["forward"]:.1f} ({fn(t) * 1e3:.0f} ms)' for _, t in measured]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n\nForward-pass equivalents (wall-clock time in parentheses), one CPU thread.'


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    print(f'Generated by `python benchmarks/itotaylor.py` (torch {torch.__version__}, one CPU thread).\n')
    for title, fn in [('Gaussian data, error of the final variance (target 0.25)', gaussian_table),
                      ('1-D two-component mixture, error of E[x^2] (target 1.09)', mixture_table),
                      ('Laplacian estimators: relative RMS error against the float64 nested JVP, same probes',
                       laplacian_table),
                      ('Cost per step on randomly initialised DDPM++ networks (CPU)', cost_table)]:
        print(f'### {title}\n\n{fn()}\n', flush=True)
    print(f'({time.time() - t0:.0f} s)')


if __name__ == '__main__':
    main()
