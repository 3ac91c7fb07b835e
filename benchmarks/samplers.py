"""Sampler accuracy benchmark: error to the exact PF-ODE solution versus NFE, with and without GITS.

    python benchmarks/samplers.py                 # writes docs/samplers.md and docs/samplers.png
    python benchmarks/samplers.py --quick --outdir /tmp/samplers-bench

Problem: an analytic Gaussian mixture in 3x8x8 (`samplers.analytic.GaussianMixture`, 6 components, means in
[-0.5, 0.5], variances in [0.005, 0.02]); 64 evaluation latents and 256 GITS warm-up latents from fixed seeds.
Reference: the PF-ODE integrated by scipy (DOP853, rtol 1e-11) from the same start. Every solver runs through
`samplers.sample` in float32, as generate.py does; NFE is checked by counting net calls. The measured orders
come from `samplers.analytic.ORDER_STUDY` (the same study the tests assert).

matplotlib is optional: the PNG is drawn with matplotlib when it is importable, otherwise with Pillow.
"""

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import samplers  # noqa: E402
from samplers import analytic  # noqa: E402
from samplers.analytic import CountingNet  # noqa: E402

NFES = (4, 5, 6, 8, 10, 20)

# Rows come from the solver registry: every registered solver at its highest order (deterministic for
# stochastic ones), plus the variants below that deserve their own row.
EXTRA_VARIANTS = [('deis', dict(deis_mode='rhoab'), 'rhoAB')]


def _label(spec, note=''):
    order = f'order {spec.max_order}' if spec.max_order else ''
    details = ', '.join(x for x in (note, order) if x)
    return f'{spec.doc} ({details})' if details else spec.doc


def make_rows():
    """(label, solver, options) for every registered solver that runs on a plain denoiser."""
    rows = []
    for spec in samplers.SOLVERS.values():
        if spec.needs != 'denoiser':
            continue
        top = dict(max_order=spec.max_order) if spec.max_order else {}
        rows.append((_label(spec), spec.name, top))
        rows += [(_label(spec, note), spec.name, {**top, **extra}) for name, extra, note in EXTRA_VARIANTS
                 if name == spec.name]
    return rows


ROWS = make_rows()

COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
          '#17becf']

# ----------------------------------------------------------------------------


def make_problem(seed=0, components=6):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * (2 * torch.rand(components, 3, 8, 8, generator=g, dtype=torch.float64) - 1)
    s2 = 0.005 + 0.015 * torch.rand(components, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return analytic.GaussianMixture(mu, s2, w)


def steps_for(solver, nfe):
    """(num_steps, afs) giving exactly `nfe` evaluations (without AFS if possible), or None when none does."""
    spec = samplers.get_solver(solver)
    for afs in ((False, True) if spec.kind == 'ode' else (False,)):
        for num_steps in range(2, nfe + 3):
            if spec.count_nfe(num_steps, afs=afs) == nfe:
                return num_steps, afs
    return None


def rms_error(x, exact):
    """Mean over samples of the per-pixel RMS distance to the exact solution."""
    b = x.shape[0]
    return float(((x.double() - exact).reshape(b, -1).norm(dim=1) / math.sqrt(x[0].numel())).mean())


def run_accuracy(net, latents, warmup, nfes, log):
    t_poly = samplers.get_schedule(2, 0.002, 80)
    t0 = time.time()
    exact = analytic.solve_pf_ode(net, latents.double() * t_poly[0].double(), t_poly[0], t_poly[1])
    t_edm0 = float(samplers.edm_schedule(net, 2)[0])
    exact_edm = analytic.solve_pf_ode(net, latents.double() * t_edm0, t_edm0, 0.0)
    log(f'reference solutions: {time.time() - t0:.1f} s')

    gits_cache = {}

    def gits_steps(num_steps):
        if num_steps not in gits_cache:
            t1 = time.time()
            gits_cache[num_steps] = samplers.gits_schedule(net, num_steps, warmup)  # defaults: iPNDM teacher, 61
            log(f'GITS schedule, {num_steps} timestamps: {[round(float(v), 4) for v in gits_cache[num_steps]]} '
                f'({time.time() - t1:.1f} s)')
        return gits_cache[num_steps]

    results = {}
    for label, solver, options in ROWS:
        edm_kind = samplers.get_solver(solver).kind == 'edm'
        for nfe in nfes:
            plan = steps_for(solver, nfe)
            if plan is None:
                continue
            num_steps, afs = plan
            for use_gits in ((False,) if edm_kind else (False, True)):
                counter = CountingNet(net)
                if use_gits:
                    x = samplers.sample(counter, latents, solver=solver, t_steps=gits_steps(num_steps), afs=afs,
                                        **options)
                else:
                    x = samplers.sample(counter, latents, solver=solver, num_steps=num_steps, afs=afs, **options)
                assert counter.calls == nfe, (solver, nfe, counter.calls)
                results[(label, use_gits, nfe)] = rms_error(x, exact_edm if edm_kind else exact)
        log(f'{label}: done')
    return results, gits_cache


def run_orders(log):
    rows = []
    for solver, options, steps, lo, hi in analytic.ORDER_STUDY:
        net, z = analytic.order_study_problem()
        order, errs = analytic.empirical_order(net, z, solver, steps, **options)
        last = float(np.log(errs[-2] / errs[-1]) / np.log(steps[-1] / steps[-2]))
        rows.append((solver, options, steps, order, last, errs, lo, hi))
        log(f'order {solver} {options}: {order:.2f}')
    return rows


def run_fixture(log):
    path = os.path.join(ROOT, 'tests', 'fixtures', 'samplers', 'gits_reference_cases.pt')
    if not os.path.isfile(path):
        return None
    d = torch.load(path, weights_only=True)
    net = analytic.GaussianMixture(d['mu'], d['s2'], d['w'], shape=d['latents'].shape[1:])
    worst = {}
    for case in d['cases']:
        cfg = dict(case['config'])
        solver = cfg.pop('solver')
        counter = CountingNet(net)
        out = samplers.sample(counter, d['latents'], solver=solver, **cfg)
        err = float((out.double() - case['expected'].double()).norm() / case['expected'].double().norm())
        assert counter.calls == case['nfe']
        worst[solver] = max(worst.get(solver, 0.0), err)
    g = d['gits']
    idx = samplers.gits_schedule(net, g['num_steps'], g['warmup_latents'], solver_tea=g['solver_tea'],
                                 num_steps_tea=g['num_steps_tea'], metric=g['metric'], coeff=g['coeff'],
                                 max_order=g['max_order'], return_indices=True)[1]
    log('fixture: done')
    return worst, idx == [int(i) for i in g['indices']], idx

# ----------------------------------------------------------------------------
# Report.


def _fmt(v):
    return '–' if v is None else f'{v:.2e}'


def accuracy_table(results, nfes):
    lines = ['| solver | schedule | ' + ' | '.join(f'NFE {n}' for n in nfes) + ' |',
             '|---|---|' + '---|' * len(nfes)]
    for label, solver, _ in ROWS:
        for use_gits in (False, True):
            vals = [results.get((label, use_gits, n)) for n in nfes]
            if all(v is None for v in vals):
                continue
            edm_kind = samplers.get_solver(solver).kind == 'edm'
            sched = 'GITS' if use_gits else ('EDM rho=7 + zero' if edm_kind else 'polynomial rho=7')
            best = [v is not None and results.get((label, not use_gits, n)) is not None
                    and v < results[(label, not use_gits, n)] for v, n in zip(vals, nfes)]
            cells = [(f'**{_fmt(v)}**' if b and use_gits else _fmt(v)) for v, b in zip(vals, best)]
            lines.append(f'| {label} | {sched} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def orders_table(rows):
    lines = ['| solver | options | steps | fitted order | last doubling | errors | required |',
             '|---|---|---|---|---|---|---|']
    for solver, options, steps, order, last, errs, lo, hi in rows:
        opts = ', '.join(f'{k}={v}' for k, v in options.items()) or '–'
        req = f'{(lo + hi) / 2:.0f} ± 0.3' if hi is not None else f'>= {lo}'
        lines.append(f'| {solver} | {opts} | {steps[0]}–{steps[-1]} | {order:.2f} | {last:.2f} | '
                     f'{" ".join(f"{e:.1e}" for e in errs)} | {req} |')
    return '\n'.join(lines)


def solver_table():
    """The registered solvers as a Markdown table (docs/samplers.md)."""
    lines = ['| solver | method | kind | evals/step | options (defaults) | stochastic | GITS teacher |',
             '|---|---|---|---|---|---|---|']
    for spec in samplers.SOLVERS.values():
        opts = ', '.join(f'{k}={v}' for k, v in spec.defaults.items()) or '–'
        nfe = '2N−1 total' if spec.name == 'edm' else str(spec.evals_per_step)
        lines.append(f'| `{spec.name}` | {spec.doc} | {spec.kind} | {nfe} | {opts} | '
                     f'{"yes" if spec.stochastic else "no"} | {"yes" if spec.teacher else "no"} |')
    return '\n'.join(lines)


def write_markdown(path, results, gits_cache, orders, fixture, nfes, args, elapsed):
    ip = 'iPNDM (order 4)'
    highlight = []
    for n in (5, 6):
        p, g = results.get((ip, False, n)), results.get((ip, True, n))
        if p is not None and g is not None:
            highlight.append(f'- NFE {n}: iPNDM + GITS {g:.2e} vs iPNDM + polynomial {p:.2e} '
                             f'({"GITS better" if g < p else "GITS NOT better"}, ratio {g / p:.2f}).')
    cells = [(label, n) for label, solver, _ in ROWS for n in nfes
             if (label, True, n) in results and (label, False, n) in results]
    wins = [f'{label} @ {n}' for label, n in cells if results[(label, True, n)] < results[(label, False, n)]]
    gits_lines = [f'- {n} timestamps: `[{", ".join(f"{float(v):.4f}" for v in t)}]`'
                  for n, t in sorted(gits_cache.items())]
    fix = ''
    if fixture is not None:
        worst, ok, idx = fixture
        fix = ('| solver | ' + ' | '.join(worst) + ' |\n|---|' + '---|' * len(worst)
               + '\n| max rel. error (plain, AFS, '
               'denoise_to_zero) | ' + ' | '.join(f'{v:.1e}' for v in worst.values()) + ' |\n\n'
               f'NFE of all 24 cases matches the fixture (counted calls). GITS schedule for the fixture\'s warm-up '
               f'latents: indices `{idx}` ({"identical to" if ok else "DIFFERENT from"} the fixture).')
    text = f"""# Samplers: accuracy, orders and differences from the GITS toolbox

Generated by `python benchmarks/samplers.py` ({elapsed:.0f} s on CPU, torch {torch.__version__}). The tables below
are measured numbers, not copied from papers.

## API

```python
import samplers
t = samplers.get_schedule(7, 0.002, 80, schedule_type='polynomial', schedule_rho=7)   # 7 timestamps, no zero
x = samplers.sample(net, latents, class_labels, solver='ipndm', num_steps=7, max_order=4)  # NFE 6
x = samplers.sample(net, latents, solver='dpmpp', t_steps=[80, 10.9836, 3.8811, 1.584, 0.5666, 0.1698, 0.002])
t = samplers.gits_schedule(net, 7, warmup_latents)       # GITS search (iPNDM teacher on 61 points)
samplers.solver_nfe('heun', 7, afs=True)                 # 11
samplers.solver_defaults('unipc')                        # accepted options and defaults
```

{solver_table()}

For kind `ode`, `num_steps` counts timestamps without a trailing zero (the GITS toolbox's meaning), so NFE is
(N−1) times the evaluations per step; AFS saves one, `denoise_to_zero` adds one. The state is float32 as in
the toolbox (float64 if the latents are float64). Kind `edm` follows EDM: `num_steps` noise levels plus a final
zero, float64 state. A new solver is one `samplers.register_solver(samplers.SolverSpec(...))` call
(see `samplers/registry.py`); it then appears here, in `generate.py --solver` and in the NFE report.

## Error versus NFE on a Gaussian mixture

Problem: `GaussianMixture` in 3×8×8 (6 components, means in [−0.5, 0.5], variances in [0.005, 0.02]),
{args.num_eval} evaluation latents (seed 1); error = mean over samples of the per-pixel RMS distance to the exact
PF-ODE solution at σ_min = 0.002 (scipy DOP853, rtol 1e-11). EDM's sampler ends at σ = 0 and is compared with
the exact solution at σ = 0. GITS: `samplers.gits_schedule` with its defaults (iPNDM teacher of order 4 on the
61-point polynomial grid, metric `dev`, coeff 1.15) on {args.num_warmup} warm-up latents (seed 2); the same GITS
schedule serves every student with that number of timestamps. Heun and DPM-Solver-2 reach odd NFE with AFS.
Bold: GITS better than the polynomial schedule for the same solver and NFE. NFE checked by counting calls.

{accuracy_table(results, nfes)}

![error versus NFE](samplers.png)

iPNDM with GITS against iPNDM with the polynomial schedule:
{chr(10).join(highlight)}

GITS is better than the polynomial schedule in {len(wins)} of {len(cells)} (solver, NFE) cells:
{', '.join(wins) or 'none'}. The GITS schedule is tuned to an iPNDM teacher and to one-step Euler jumps along
its trajectories; the GITS paper pairs it with DDIM (Euler) and iPNDM only. On this problem it helps those two
at low NFE, while solvers whose weights depend on step-size ratios (DEIS, DPM-Solver++, UniPC, and above all
iPNDM-v, whose toolbox order-4 weights grow with uneven steps) do worse on its very uneven schedules, and at
larger NFE the polynomial schedule is better.

GITS schedules found (σ values):
{chr(10).join(gits_lines)}

## Measured orders of convergence

Gaussian data in 2×4×4 (means in [−0.3, 0.3], std ≤ 0.15, so the dynamic thresholding of the data-prediction
solvers never acts), closed-form exact solution, float64 state, polynomial ρ=7 schedule. Order = least-squares
slope of log(error) against log(1/steps) over the listed step counts (`samplers.analytic.ORDER_STUDY`; the tests
assert the same bounds). The ρ=7 grid is very uneven, so some methods need many steps before the asymptotic
regime.

{orders_table(orders)}

Notes on the measured orders:
- iPNDM applies equal-step Adams–Bashforth weights to uneven σ steps: second order, whatever `max_order`.
- DPM-Solver++(3M) measures 2, not 3. Its third-order term weights D2 = (D1_0 − D1_1)/(r0 + r1) ≈ h²x0''/2 by
  φ3 = φ2/h − 1/2, while the exact integral needs twice that weight, so quadratic data predictions are not
  integrated exactly (checked numerically). The formula is the toolbox's (and DPM-Solver's), kept so outputs match.
- iPNDM-v order 4 (toolbox weights) converges at about 2 and only after ~500 steps on this grid (see below).
- UniPC-3 measures about 4 in data mode (the corrector adds an order). In noise mode it measures 2: with
  `lower_order_final` (the default) the last step is a first-order predictor-only step; with
  `lower_order_final=False` noise mode also measures above 4 (32–256 steps). In data mode the last step's data
  prediction hardly changes, so the same lower-order step is invisible at these step counts.

## Reproduction of the GITS toolbox

{fix}

## Differences from the GITS toolbox (zju-pi/diff-sampler)

Kept, so that outputs match the published numbers:
- **iPNDM-v order-4 weights.** On an equal grid they are (57, −65, 43, −11)/24, not AB4's (55, −59, 37, −9)/24.
  On an uneven grid they do not even sum to one (the sum is 1 + T2·A·(h2/h3 − h1/h2)); the method is consistent
  only as the grid ratios settle, which is why it needs many steps in the order study. The order-3 weights are
  also not the exact variable-step AB3 weights (they are exact only for linear derivatives on uneven grids) but
  converge at third order.
- **Float32 schedules**, including the `time_uniform` end point 0.0020132 (instead of 0.002) and the first
  polynomial entry 79.99998. Pass `dtype=torch.float64` to `get_schedule` for clean values.
- **Dynamic thresholding** (0.995 quantile, s = max(1, q)) of DPM-Solver++ and UniPC in data-prediction mode,
  also applied to the AFS pseudo-prediction.
- **DEIS-tAB** uses the VP map fitted to (0.002, 80) whatever the model and a 10 000-node Riemann sum for its
  coefficients (relative error ~1e-5).
- **UniPC warm-up corrector on the last step**: when N−1 < max_order the last step still calls the net
  (one evaluation the toolbox did not count; `solver_nfe` counts it).

Fixed, and documented in the docstrings:
- **`max_order=1` crashed** (ipndm, ipndm_v, deis: the history update wrote into an empty list). It now runs and
  equals Euler.
- **AFS with `lower_order_final` in GITS crashed** (dpmpp, unipc: the toolbox kept the old `num_steps` after the
  AFS search added a timestamp, so the last step got order 0). The order rule here uses the schedule's length.
- **DEIS `rhoab`** used one node too many (crash for max_order 2 and 3; from step 4 on, step 3's coefficients
  were reused). It is now Adams–Bashforth in ρ = σ from the DEIS paper: the exact integrals over [t_i, t_(i+1)]
  of the Lagrange basis on the last p noise levels (tests check exactness on polynomials; order 2 equals
  iPNDM-v order 2).
- **The GITS teacher inherited the student's `max_order`, `afs` and other options.** Here `gits_schedule`'s
  `max_order` and `**teacher_options` are the teacher's own, the teacher never takes an analytic first step, and
  the student of the AFS search is named by `solver=` / `solver_options=` (it also works for UniPC, which the
  toolbox refused, and evaluates a DEIS student with its own coefficient table, not the teacher's).
- **`discrete` schedules** need `net.sigma(t)` and `net.sigma_inv(sigma)` (VP/iDDPM-style nets) and otherwise
  fail with one line. The toolbox omitted the 1/ρ power on σ⁻¹(σ_max), which matters only if that value is not 1.
- **σ range**: the toolbox overwrote `--sigma_min/--sigma_max` with the model's values; here they are clipped to
  the model's range as EDM does.
- **Defaults**: `max_order` defaults to 3 for dpmpp/unipc (the toolbox's 4 fails an assertion); GITS warm-up
  latents are passed in (the toolbox drew them from the unseeded global generator); UniPC's corrector passes the
  same `class_labels`/`model_kwargs` as every other call.
"""
    with open(path, 'w') as f:
        f.write(text)

# ----------------------------------------------------------------------------
# Plot.


def plot(path, results, nfes):
    series = []
    for k, (label, solver, _) in enumerate(ROWS):
        for use_gits in (False, True):
            pts = [(n, results[(label, use_gits, n)]) for n in nfes if (label, use_gits, n) in results]
            if pts:
                series.append(dict(label=label, gits=use_gits, color=COLORS[k % len(COLORS)], points=pts))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
        for ax, use_gits, title in zip(axes, (False, True), ('polynomial rho=7 schedule', 'GITS schedule')):
            for s in series:
                if s['gits'] == use_gits:
                    xs, ys = zip(*s['points'])
                    ax.loglog(xs, ys, '--o' if use_gits else '-o', color=s['color'], label=s['label'], ms=3)
            ax.set_title(title)
            ax.set_xlabel('NFE')
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.grid(True, which='both', alpha=0.3)
        axes[0].set_ylabel('RMS error to the exact PF-ODE solution')
        axes[1].legend(fontsize=8, loc='lower left')
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    _plot_pil(path, series, nfes)


def _plot_pil(path, series, nfes):
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=12)
    except TypeError:
        font = small = ImageFont.load_default()
    width, height, legend_w = 1300, 560, 230
    img = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(img)
    values = [v for s in series for _, v in s['points']]
    ylo, yhi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    xlo, xhi = math.log10(nfes[0] * 0.92), math.log10(nfes[-1] * 1.08)
    panel_w = (width - legend_w) // 2
    for p, (use_gits, title) in enumerate(((False, 'polynomial rho=7 schedule'), (True, 'GITS schedule'))):
        left, right, top, bottom = p * panel_w + 80, (p + 1) * panel_w - 15, 40, height - 60

        def to_xy(n, v):
            x = left + (math.log10(n) - xlo) / (xhi - xlo) * (right - left)
            y = bottom - (math.log10(v) - ylo) / (yhi - ylo) * (bottom - top)
            return x, y

        draw.rectangle([left, top, right, bottom], outline='black')
        for e in range(ylo, yhi + 1):
            for m in range(1, 10):
                v = m * 10.0 ** e
                if 10.0 ** ylo <= v <= 10.0 ** yhi:
                    _, y = to_xy(nfes[0], v)
                    draw.line([left, y, right, y], fill=(225, 225, 225) if m > 1 else (190, 190, 190))
            _, y = to_xy(nfes[0], 10.0 ** e)
            draw.text((left - 8, y), f'1e{e}', fill='black', font=small, anchor='rm')
        for n in nfes:
            x, _ = to_xy(n, 10.0 ** ylo)
            draw.line([x, top, x, bottom], fill=(225, 225, 225))
            draw.text((x, bottom + 6), str(n), fill='black', font=small, anchor='mt')
        draw.text(((left + right) / 2, bottom + 26), 'NFE', fill='black', font=font, anchor='mt')
        draw.text(((left + right) / 2, 12), title, fill='black', font=font, anchor='mt')
        if p == 0:
            draw.text((8, (top + bottom) / 2), 'RMS error', fill='black', font=small, anchor='lm')
        for s in series:
            if s['gits'] != use_gits:
                continue
            pts = [to_xy(n, v) for n, v in s['points']]
            for a, b in zip(pts, pts[1:]):
                _line(draw, a, b, s['color'], dashed=use_gits)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=s['color'])
    # Legend (colors are per solver; dashed = GITS).
    x0, y = width - legend_w + 10, 50
    seen = set()
    for s in series:
        if s['label'] in seen:
            continue
        seen.add(s['label'])
        draw.line([x0, y, x0 + 28, y], fill=s['color'], width=3)
        draw.text((x0 + 36, y), s['label'], fill='black', font=small, anchor='lm')
        y += 22
    _line(draw, (x0, y + 10), (x0 + 28, y + 10), 'black', dashed=True)
    draw.text((x0 + 36, y + 10), 'dashed: GITS', fill='black', font=small, anchor='lm')
    img.save(path)


def _line(draw, a, b, color, dashed=False, dash=8, gap=5):
    if not dashed:
        draw.line([a, b], fill=color, width=3)
        return
    (x1, y1), (x2, y2) = a, b
    length = math.hypot(x2 - x1, y2 - y1)
    pos = 0.0
    while pos < length:
        end = min(pos + dash, length)
        draw.line([(x1 + (x2 - x1) * pos / length, y1 + (y2 - y1) * pos / length),
                   (x1 + (x2 - x1) * end / length, y1 + (y2 - y1) * end / length)], fill=color, width=2)
        pos += dash + gap

# ----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--outdir', default=os.path.join(ROOT, 'docs'), help='where samplers.md/png go')
    parser.add_argument('--num_eval', type=int, default=64, help='evaluation latents')
    parser.add_argument('--num_warmup', type=int, default=256, help='GITS warm-up latents')
    parser.add_argument('--quick', action='store_true', help='small smoke run (8 latents, NFE 5 and 6, no orders)')
    args = parser.parse_args()
    if args.quick:
        args.num_eval, args.num_warmup = 8, 32
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.time()

    def log(msg):
        print(f'[{time.time() - start:6.1f}s] {msg}', flush=True)

    net = make_problem()
    shape = (3, 8, 8)
    latents = torch.randn(args.num_eval, *shape, generator=torch.Generator().manual_seed(1))
    warmup = torch.randn(args.num_warmup, *shape, generator=torch.Generator().manual_seed(2))
    nfes = (5, 6) if args.quick else NFES
    results, gits_cache = run_accuracy(net, latents, warmup, nfes, log)
    orders = [] if args.quick else run_orders(log)
    fixture = None if args.quick else run_fixture(log)

    print()
    print(accuracy_table(results, nfes))
    print()
    if orders:
        print(orders_table(orders))
        print()
    for n in (5, 6):
        p, g = results.get(('iPNDM (order 4)', False, n)), results.get(('iPNDM (order 4)', True, n))
        print(f'iPNDM NFE {n}: polynomial {p:.3e}  GITS {g:.3e}  -> {"GITS better" if g < p else "GITS worse"}')
    os.makedirs(args.outdir, exist_ok=True)
    plot(os.path.join(args.outdir, 'samplers.png'), results, nfes)
    write_markdown(os.path.join(args.outdir, 'samplers.md'), results, gits_cache, orders, fixture, nfes, args,
                   time.time() - start)
    log(f'wrote {args.outdir}/samplers.md and samplers.png')


if __name__ == '__main__':
    main()
