"""Sampler accuracy benchmark: error to the exact PF-ODE solution versus NFE with polynomial, GITS and learned
schedules, on a Gaussian mixture and on the bundled demo model.

    python benchmarks/samplers.py                 # writes docs/samplers.md and docs/samplers.png
    python benchmarks/samplers.py --quick --outdir /tmp/samplers-bench
    python benchmarks/samplers.py --problem_seed 3 --components 10 --parts accuracy,learned --outdir /tmp/other

Problem: an analytic Gaussian mixture in 3x8x8 (`samplers.analytic.GaussianMixture`, 6 components, means in
[-0.5, 0.5], variances in [0.005, 0.02]); 256 evaluation latents and 256 warm-up latents (GITS and learned
schedules) from fixed seeds. Reference: the PF-ODE integrated by scipy (DOP853, rtol 1e-11) from the same start.
Every solver runs through `samplers.sample` in float32, as generate.py does; NFE is checked by counting net calls.
The measured orders come from `samplers.analytic.ORDER_STUDY` (the same study the tests assert). The demo-model
check samples `checkpoints/edm-digits-16x16-cond-ddpmpp.pkl` on held-out seeds.

matplotlib is optional: the PNG is drawn with matplotlib when it is importable, otherwise with Pillow.
"""

import argparse
import math
import os
import pickle
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
LEARN_NFES = (4, 5, 6, 8, 10)
PARTS = ('accuracy', 'learned', 'others', 'orders', 'fixture', 'demo')
OTHER_PROBLEMS = ((1, 10), (2, 3))  # (problem seed, components): the learned-vs-published summary, not tuned to seed 0

# Rows come from the solver registry: every registered solver that needs only D(x; sigma), at its highest order
# and deterministic (langevin=0, no churn), plus the variants below that deserve their own row, plus a "+ AFS" row
# for every one-evaluation 'ode' solver (the analytical first step buys one more timestamp at the same NFE).
EXTRA_VARIANTS = [('deis', dict(deis_mode='rhoab'), 'rhoAB')]


def _label(spec, note=''):
    order = f'order {spec.max_order}' if spec.max_order else ''
    details = ', '.join(x for x in (note, order) if x)
    return f'{spec.doc} ({details})' if details else spec.doc


def make_rows():
    """(label, solver, options, afs) for every registered solver that runs on a plain denoiser; afs=False: AFS
    only where the NFE needs it (Heun, DPM-Solver-2 at odd NFE), afs=True: always AFS."""
    rows, afs_rows = [], []
    for spec in samplers.SOLVERS.values():
        if spec.needs != 'denoiser':
            continue
        top = dict(max_order=spec.max_order) if spec.max_order else {}
        if 'langevin' in spec.defaults:
            top['langevin'] = 0.0  # the deterministic member of an SDE family (this table compares ODE solutions)
        variants = [(_label(spec), top)] + [(_label(spec, note), {**top, **extra})
                                            for name, extra, note in EXTRA_VARIANTS if name == spec.name]
        rows += [(label, spec.name, options, False) for label, options in variants]
        if spec.kind == 'ode' and spec.evals_per_step == 1:
            afs_rows += [(f'{label} + AFS', spec.name, options, True) for label, options in variants]
    return rows + afs_rows


ROWS = make_rows()

COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
          '#17becf', '#000000', '#aec7e8', '#ffbb78', '#98df8a']

# ----------------------------------------------------------------------------


def make_problem(seed=0, components=6):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * (2 * torch.rand(components, 3, 8, 8, generator=g, dtype=torch.float64) - 1)
    s2 = 0.005 + 0.015 * torch.rand(components, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return analytic.GaussianMixture(mu, s2, w)


def steps_for(solver, nfe, afs=False):
    """(num_steps, afs) giving exactly `nfe` evaluations, or None when none does. afs=False: without AFS if
    possible; afs=True: with AFS only."""
    spec = samplers.get_solver(solver)
    choices = (True,) if afs else ((False, True) if spec.kind == 'ode' else (False,))
    for use_afs in choices:
        for num_steps in range(2, nfe + 3):
            if spec.count_nfe(num_steps, afs=use_afs) == nfe:
                return num_steps, use_afs
    return None


def rms_error(x, exact):
    """Mean over samples of the per-pixel RMS distance to the exact solution."""
    b = x.shape[0]
    return float(((x.double() - exact).reshape(b, -1).norm(dim=1) / math.sqrt(x[0].numel())).mean())


def reference_solutions(net, latents, log):
    """Exact PF-ODE solutions from the float32 sigma_max of the 'ode' solvers to 0.002, and from EDM's to 0."""
    t_poly = samplers.get_schedule(2, 0.002, 80)
    t0 = time.time()
    exact = analytic.solve_pf_ode(net, latents.double() * t_poly[0].double(), t_poly[0], t_poly[1])
    t_edm0 = float(samplers.edm_schedule(net, 2)[0])
    exact_edm = analytic.solve_pf_ode(net, latents.double() * t_edm0, t_edm0, 0.0)
    log(f'reference solutions: {time.time() - t0:.1f} s')
    return exact, exact_edm


def run_accuracy(net, latents, warmup, exact, exact_edm, nfes, log):
    """Errors of every row with the polynomial and the GITS schedule: {(label, schedule, nfe): error}."""
    gits_cache = {}

    def gits_steps(num_steps, afs, solver, options):
        # Without AFS one GITS schedule serves every student; with AFS the inserted point depends on the student.
        key = num_steps if not afs else (num_steps, solver, tuple(sorted(options.items())))
        if key not in gits_cache:
            t1 = time.time()
            gits_cache[key] = (samplers.gits_schedule(net, num_steps, warmup) if not afs else  # iPNDM teacher, 61
                               samplers.gits_schedule(net, num_steps - 1, warmup, afs=True, solver=solver,
                                                      solver_options=options))
            log(f'GITS schedule {key}: {[round(float(v), 4) for v in gits_cache[key]]} ({time.time() - t1:.1f} s)')
        return gits_cache[key]

    results = {}
    for label, solver, options, afs_row in ROWS:
        edm_kind = samplers.get_solver(solver).kind == 'edm'
        for nfe in nfes:
            plan = steps_for(solver, nfe, afs_row)
            if plan is None:
                continue
            num_steps, afs = plan
            for schedule in (('polynomial',) if edm_kind else ('polynomial', 'GITS')):
                counter = CountingNet(net)
                if schedule == 'GITS':
                    t_steps = gits_steps(num_steps, afs_row, solver, options)
                    if len(t_steps) != num_steps:  # no room for the AFS point: another NFE
                        continue
                    x = samplers.sample(counter, latents, solver=solver, t_steps=t_steps, afs=afs, **options)
                else:
                    x = samplers.sample(counter, latents, solver=solver, num_steps=num_steps, afs=afs, **options)
                assert counter.calls == nfe, (solver, nfe, counter.calls)
                results[(label, schedule, nfe)] = rms_error(x, exact_edm if edm_kind else exact)
        log(f'{label}: done')
    return results, {k: v for k, v in gits_cache.items() if isinstance(k, int)}


def run_learned(net, latents, warmup, exact, nfes, log):
    """Learned schedules (default teacher, `samplers.learn_schedule` defaults) for every 'ode' row, evaluated on
    the held-out latents. Returns ({(label, 'learned', nfe): error}, {(label, nfe): search record})."""
    results, searches = {}, {}
    for label, solver, options, afs_row in ROWS:
        spec = samplers.get_solver(solver)
        if spec.kind != 'ode' or spec.stochastic:  # what learn_schedule takes
            continue
        for nfe in nfes:
            plan = steps_for(solver, nfe, afs_row)
            if plan is None:
                continue
            num_steps, afs = plan
            wall, cpu = time.time(), time.process_time()
            t_steps, info = samplers.learn_schedule(net, num_steps, warmup, solver=solver, afs=afs, return_info=True,
                                                    **options)
            wall, cpu = time.time() - wall, time.process_time() - cpu
            counter = CountingNet(net)
            x = samplers.sample(counter, latents, solver=solver, t_steps=t_steps, afs=afs, **options)
            assert counter.calls == nfe, (solver, nfe, counter.calls)
            results[(label, 'learned', nfe)] = rms_error(x, exact)
            searches[(label, nfe)] = dict(wall=wall, cpu=cpu, evals=info['evals'], start=info['start'],
                                          t_steps=[float(t) for t in t_steps])
            log(f'learned {label} NFE {nfe}: {results[(label, "learned", nfe)]:.2e} (search {wall:.0f} s, '
                f'CPU {cpu:.0f} s, {info["evals"]} runs)')
    return results, searches

# ----------------------------------------------------------------------------
# Real-network check on the bundled demo model.


DEMO_NETWORK = os.path.join(ROOT, 'checkpoints', 'edm-digits-16x16-cond-ddpmpp.pkl')
DEMO_SAMPLERS = [('iPNDM', 'ipndm', False), ('iPNDM + AFS', 'ipndm', True), ('UniPC', 'unipc', False)]
DEMO_NFES = (5, 6, 8)
DEMO_REFERENCE = dict(solver='deis', num_steps=201)  # not the learning teacher (UniPC), to share none of its error


def run_others(latents, warmup, nfes, log):
    """The accuracy and learned parts on the mixtures of OTHER_PROBLEMS: {(seed, components): (results, searches)}."""
    out = {}
    for seed, components in OTHER_PROBLEMS:
        log(f'mixture problem seed {seed}, {components} components')
        net = make_problem(seed, components)
        exact = reference_solutions(net, latents, log)
        results, _ = run_accuracy(net, latents, warmup, *exact, nfes, log)
        learned, searches = run_learned(net, latents, warmup, exact[0], [n for n in nfes if n in LEARN_NFES], log)
        out[(seed, components)] = ({**results, **learned}, searches)
    return out


def run_demo(num_warmup, num_held_out, log):
    """RMSE in pixel space (0-255) of each sampler on held-out seeds against high-NFE reference images."""
    from samplers import generation
    from torch_utils import persistence
    net = persistence.load_network(DEMO_NETWORK)['ema'].eval().requires_grad_(False)
    device = torch.device('cpu')
    warm, warm_labels, _ = generation.draw_inputs(net, list(range(num_warmup)), device)
    held, held_labels, _ = generation.draw_inputs(net, list(range(1000, 1000 + num_held_out)), device)
    t0 = time.time()
    with torch.no_grad():
        reference = samplers.sample(net, held, held_labels, **DEMO_REFERENCE)
    log(f'demo reference images: {time.time() - t0:.0f} s')

    def rmse(x):
        return float(((x.double() - reference.double()) * 127.5).square().mean().sqrt())

    rows, searches = {}, {}
    for label, solver, afs_row in DEMO_SAMPLERS:
        for nfe in DEMO_NFES:
            num_steps, afs = steps_for(solver, nfe, afs_row)
            with torch.no_grad():
                gits = (samplers.gits_schedule(net, num_steps, warm, warm_labels) if not afs else
                        samplers.gits_schedule(net, num_steps - 1, warm, warm_labels, afs=True, solver=solver))
                wall, cpu = time.time(), time.process_time()
                learned = samplers.learn_schedule(net, num_steps, warm, warm_labels, solver=solver, afs=afs)
                searches[(label, nfe)] = dict(wall=time.time() - wall, cpu=time.process_time() - cpu,
                                              t_steps=[float(t) for t in learned])
                for schedule, kw in (('polynomial', dict(num_steps=num_steps)), ('GITS', dict(t_steps=gits)),
                                     ('learned', dict(t_steps=learned))):
                    if len(kw.get('t_steps', [0] * num_steps)) == num_steps:
                        x = samplers.sample(net, held, held_labels, solver=solver, afs=afs, **kw)
                        rows[(label, schedule, nfe)] = rmse(x)
            log(f'demo {label} NFE {nfe}: ' + ', '.join(f'{k[1]} {v:.2f}' for k, v in rows.items()
                                                       if k[0] == label and k[2] == nfe)
                + f' (search {searches[(label, nfe)]["wall"]:.0f} s)')
    return rows, searches


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
    for label, solver, _, _ in ROWS:
        for schedule, other in (('polynomial', 'GITS'), ('GITS', 'polynomial')):
            vals = [results.get((label, schedule, n)) for n in nfes]
            if all(v is None for v in vals):
                continue
            edm_kind = samplers.get_solver(solver).kind == 'edm'
            sched = 'GITS' if schedule == 'GITS' else ('EDM rho=7 + zero' if edm_kind else 'polynomial rho=7')
            best = [v is not None and results.get((label, other, n)) is not None
                    and v < results[(label, other, n)] for v, n in zip(vals, nfes)]
            cells = [(f'**{_fmt(v)}**' if b and schedule == 'GITS' else _fmt(v)) for v, b in zip(vals, best)]
            lines.append(f'| {label} | {sched} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def best_published(results, nfe, label=None):
    """(error, label, schedule) of the best polynomial or GITS result at `nfe` (of one row if `label`)."""
    cands = [(v, lab, sched) for (lab, sched, n), v in results.items()
             if n == nfe and sched != 'learned' and (label is None or lab == label)]
    return min(cands) if cands else None


def learned_tables(results, searches, nfes):
    """The summary (best learned vs best published per NFE), the per-row table and the search times."""
    summary = ['| NFE | best published sampler | error | best learned-schedule sampler | error | ratio | search |',
               '|---|---|---|---|---|---|---|']
    ratios = {}
    for n in nfes:
        pub = best_published(results, n)
        learned = [(v, lab) for (lab, sched, m), v in results.items() if m == n and sched == 'learned']
        if pub is None or not learned:
            continue
        v, lab = min(learned)
        rec, ratios[n] = searches[(lab, n)], v / pub[0]
        summary.append(f'| {n} | {pub[1]}, {pub[2]} | {pub[0]:.2e} | {lab} | {v:.2e} | **{v / pub[0]:.2f}** | '
                       f'{rec["wall"]:.0f} s (CPU {rec["cpu"]:.0f} s) |')
    above = [f'NFE {n} ({r:.2f})' for n, r in ratios.items() if r > 0.5]
    summary.append('\nThe best learned-schedule sampler has at most half the error of the best published one '
                   + ('at every NFE here.' if not above else f'except at {", ".join(above)}.'))
    slowest = max(searches.items(), key=lambda kv: kv[1]['wall'], default=None)
    if slowest is not None:
        (lab, n), rec = slowest
        summary.append(f'The slowest search ({lab}, NFE {n}) took {rec["wall"]:.0f} s ({rec["cpu"]:.0f} s CPU).')
    per_row = ['| solver | ' + ' | '.join(f'NFE {n}' for n in nfes) + ' |', '|---|' + '---|' * len(nfes)]
    times = list(per_row)
    for label, _, _, _ in ROWS:
        cells, secs = [], []
        for n in nfes:
            v = results.get((label, 'learned', n))
            pub = best_published(results, n, label)
            cells.append('–' if v is None else f'{v:.2e} ({v / pub[0]:.2f})' if pub else f'{v:.2e}')
            rec = searches.get((label, n))
            secs.append('–' if rec is None else f'{rec["wall"]:.0f} ({rec["cpu"]:.0f})')
        if any(c != '–' for c in cells):
            per_row.append(f'| {label} | ' + ' | '.join(cells) + ' |')
            times.append(f'| {label} | ' + ' | '.join(secs) + ' |')
    return '\n'.join(summary), '\n'.join(per_row), '\n'.join(times)


def demo_table(rows, searches):
    lines = ['| sampler | schedule | ' + ' | '.join(f'NFE {n}' for n in DEMO_NFES) + ' |',
             '|---|---|' + '---|' * len(DEMO_NFES)]
    for label, _, _ in DEMO_SAMPLERS:
        for schedule in ('polynomial', 'GITS', 'learned'):
            cells = []
            for n in DEMO_NFES:
                v = rows.get((label, schedule, n))
                others = [rows[(label, o, n)] for o in ('polynomial', 'GITS') if (label, o, n) in rows]
                win = schedule == 'learned' and v is not None and others and v < min(others)
                cells.append('–' if v is None else f'**{v:.2f}**' if win else f'{v:.2f}')
            lines.append(f'| {label} | {schedule} | ' + ' | '.join(cells) + ' |')
    secs = [f'{label} NFE {n}: {rec["wall"]:.0f} s' for (label, n), rec in searches.items()]
    return '\n'.join(lines), ', '.join(secs)


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


def write_markdown(path, data, nfes, args, elapsed):
    results, gits_cache, orders, fixture = data['results'], data['gits_cache'], data['orders'], data['fixture']
    ip = next(label for label, solver, _, afs in ROWS if solver == 'ipndm' and not afs)
    highlight = []
    for n in (5, 6):
        p, g = results.get((ip, 'polynomial', n)), results.get((ip, 'GITS', n))
        if p is not None and g is not None:
            highlight.append(f'- NFE {n}: iPNDM + GITS {g:.2e} vs iPNDM + polynomial {p:.2e} '
                             f'({"GITS better" if g < p else "GITS NOT better"}, ratio {g / p:.2f}).')
    cells = [(label, n) for label, _, _, _ in ROWS for n in nfes
             if (label, 'GITS', n) in results and (label, 'polynomial', n) in results]
    wins = [f'{label} @ {n}' for label, n in cells if results[(label, 'GITS', n)] < results[(label, 'polynomial', n)]]
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
    learned_nfes = [n for n in nfes if n in LEARN_NFES]
    summary, per_row, times = learned_tables(results, data['searches'], learned_nfes)
    best_lines = []
    for n in learned_nfes:
        learned = [(v, lab) for (lab, sched, m), v in results.items() if m == n and sched == 'learned']
        if learned:
            lab = min(learned)[1]
            t = data['searches'][(lab, n)]['t_steps']
            best_lines.append(f'- NFE {n}, {lab}: `[{", ".join(f"{v:.4f}" for v in t)}]`')
    demo, demo_secs = demo_table(*data['demo']) if data.get('demo') else ('(not run)', '–')
    others = '\n\n'.join(f'Seed {seed}, {components} components:\n\n'
                          + learned_tables(res, searches, learned_nfes)[0].split('\nThe slowest')[0]
                          for (seed, components), (res, searches) in (data.get('others') or {}).items()) \
        or '(not run)'
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
t = samplers.learn_schedule(net, 7, warmup_latents, solver='ipndm', afs=True)  # learned for iPNDM + AFS (NFE 5)
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

Problem: `GaussianMixture` in 3×8×8 ({args.components} components, means in [−0.5, 0.5], variances in [0.005, 0.02],
problem seed {args.problem_seed}), {args.num_eval} evaluation latents (seed 1); error = mean over samples of the
per-pixel RMS distance to the exact PF-ODE solution at σ_min = 0.002 (scipy DOP853, rtol 1e-11). EDM's sampler ends
at σ = 0 and is compared with the exact solution at σ = 0. GITS: `samplers.gits_schedule` with its defaults (iPNDM
teacher of order 4 on the 61-point polynomial grid, metric `dev`, coeff 1.15) on {args.num_warmup} warm-up latents
(seed 2); without AFS the same GITS schedule serves every student with that number of timestamps; the "+ AFS" rows
use GITS's own AFS point insertion for that student (`afs=True`, one more timestamp at the same NFE; a cell is
empty where GITS found no room for it). Heun and DPM-Solver-2 reach odd NFE with AFS. Bold: GITS better than the
polynomial schedule for the same solver and NFE. NFE checked by counting calls.

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

## Learned schedules

`samplers.learn_schedule(net, num_steps, warmup_latents, class_labels, solver=..., afs=..., **options)` chooses the
N − 2 inner noise levels of a solver's schedule so that its final samples from the warm-up latents are as close as
possible (mean L2 distance, as in LD3, Tong et al. 2024) to a teacher's: by default UniPC in noise-prediction mode
on 101 polynomial timestamps, whose own error here is about 1e-5. The schedule is learned for the exact sampler
(solver options, AFS, `denoise_to_zero`), so the NFE is unchanged; σ_max and σ_min stay fixed. `generate.py
--schedule_type=learned` runs it once per network and option set and caches it (see `generate.py --help`).

Held-out evaluation: the schedules are learned on the {args.num_warmup} warm-up latents above (seed 2) and
evaluated on the {args.num_eval} evaluation latents (seed 1) against the exact solution, like the table above. Every
search uses the defaults of `learn_schedule`; its time is wall-clock (and process CPU time) on 2 cores shared with
other jobs. Best at each NFE, against the best polynomial or GITS sampler of the table above:

{summary}

Every learned row; in brackets the ratio to the best polynomial or GITS result of the same row and NFE:

{per_row}

Search time per schedule, seconds wall-clock (CPU):

{times}

Learned schedules of the best samplers (σ values):
{chr(10).join(best_lines)}

The same comparison on other mixtures (`make_problem(seed, components)`, the same latents, every solver and
schedule of the table above), so that the result is not a property of one problem:

{others}

### How the schedule is searched, and what was tried

{LEARN_METHOD}

### Real-network check: the bundled demo model

`checkpoints/edm-digits-16x16-cond-ddpmpp.pkl` (16×16 digits, class-conditional). Schedules (GITS and learned) are
searched on the warm-up seeds 0–{args.demo_warmup - 1} (the seeds `generate.py` uses) and evaluated on the held-out
seeds 1000–{1000 + args.demo_held_out - 1}: RMSE in pixel space (0–255 scale, before quantisation) of each
sampler's images against reference images of the same seeds from DEIS on 201 polynomial timestamps (NFE 200; not
the learning teacher). Bold: learned better than both polynomial and GITS.

{demo}

Search times: {demo_secs}.

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

# What docs/samplers.md says about the search method. The numbers were measured while the method was chosen, on
# this benchmark's problem (seed 0, 256 warm-up latents, 64 evaluation latents, exact teacher) unless said otherwise.
LEARN_METHOD = """Parameters: the log-σ increments of the N − 1 steps are a softmax of N − 2 free numbers (plus a
fixed 0), floored at 1e-4 of the log-σ range, so every parameter vector is a valid decreasing schedule with the
fixed end points. The objective is evaluated by running the solver exactly as it will sample (float64 state during
the search, so that it is smooth in the parameters). The search (`samplers/learn.py`):

1. **Starts**: polynomial schedules with ρ = 2, 3, 5, 7, 10; the log-SNR schedule; GITS schedules (the default
   GITS search: iPNDM teacher on 61 levels, metric `dev`; with AFS also every first-step point GITS would try to
   insert); any schedules passed as `starts=`. The best of each family, by the objective, is a start.
2. **Local refinement**: 5 Levenberg–Marquardt iterations from each start, then up to 25 more from the best
   result. Levenberg–Marquardt runs on the reweighted least-squares form of the mean L2 distance (weights
   1/‖error‖ per sample, recomputed every iteration), with the Jacobian of the final samples by forward
   differences in the parameters (N − 2 extra solver runs per iteration); it stops when an iteration gains less
   than 0.1 %.
3. **Restarts**: 2 Gaussian perturbations (σ = 0.7 in parameter space, seeded) of the best schedule, each refined
   by 5 iterations; the best result is kept.

What was tried:

- **Gradients through the unrolled solver** (autograd in log σ with Adam, using a differentiable copy of the mixture
  and a schedule that is not detached), iPNDM + AFS at NFE 5: 100 iterations cost about as much as the whole
  Levenberg–Marquardt search, but the loss stalls at 1.06e-2 (learning rate 0.1), or reaches 0.99e-2 after 300
  iterations (0.03), where Levenberg–Marquardt reaches 0.69e-2 after 80 solver runs. Gradients would also need
  differentiable schedules (`samplers.schedules.as_schedule` detaches), DEIS coefficient tables (built with float
  conversions) and nets (the analytic ones detach). Forward differences need none of this and work for every
  registered solver and any network; with N − 2 ≤ 10 parameters they cost about as much as the Gauss–Newton
  information that lets Levenberg–Marquardt converge in 10–25 iterations.
- **Objective**: mean squared error against mean L2 distance (same search otherwise, NFE 5): iPNDM 2.79e-2 vs
  2.28e-2, iPNDM + AFS 7.82e-3 vs 7.80e-3, Euler 5.63e-2 vs 5.16e-2, Euler + AFS 3.89e-2 vs 4.23e-2. The mean L2
  distance is also what the evaluation measures, so it was kept.
- **Starts**: from the best polynomial or log-SNR schedule alone, Levenberg–Marquardt often ends in a worse local
  minimum. On 2×4×4 mixtures (the test problem's size), adding the GITS starts took iPNDM-v + AFS at NFE 5 from
  9.5e-3 to 3.8e-3 (6 components); refining only the single best start ended worse than refining the best of each
  family (iPNDM + AFS, 8 components: 2.0e-2 against 1.4e-2).
- **Restarts** lowered the warm-up loss of DEIS-rhoAB + AFS at NFE 5 from 3.2e-2 to 2.3e-2 (before the GITS
  starts), but at NFE 10 none helped; they are few and short.
- **Warm-up size**: 128 warm-up latents instead of 256 give 1.11e-2 instead of 0.78e-2 (iPNDM + AFS, NFE 5) and
  1.30e-2 instead of 0.65e-2 (iPNDM-v + AFS). The per-sample errors are heavy-tailed: a few trajectories pass near
  the boundary between two mixture components and end in the wrong one (error about 0.3 for every few-step
  sampler), and with fewer latents the schedule overfits the ones it has seen. 256, the default of `--num_warmup`,
  is used.
- **Cheaper searches**: a Jacobian from 64 of the 256 latents (the loss still on all) made UniPC's searches no
  faster (its solver runs are dominated by per-step overhead, not by the batch size) and worse (NFE 10: 4.0e-3
  against 1.7e-3); a float32 state during the search gave the same schedules' errors (iPNDM-v + AFS: 7.25e-3 and
  1.58e-3 at NFE 5 and 10 either way) without a consistent speed-up.
- **AFS** is the largest single gain: the analytical first step buys one more timestamp at the same NFE, and a
  learned schedule puts it to use. At NFE 5 the learned iPNDM schedule reaches 1.6e-2 without AFS and 0.78e-2 with
  it; for the polynomial and GITS schedules the extra timestamp gains much less.
- **Teacher**: error of candidate teachers against the exact solution on the warm-up latents: Heun on 101
  polynomial timestamps 2.2e-4, iPNDM 7.6e-5, DEIS 3.2e-5, UniPC in noise-prediction mode (no thresholding)
  7.5e-6. UniPC is the default; `teacher=` takes other `samplers.sample` settings or precomputed samples."""

# ----------------------------------------------------------------------------
# Plot.


PANELS = (('polynomial', 'polynomial rho=7 schedule'), ('GITS', 'GITS schedule'), ('learned', 'learned schedule'))


def plot(path, results, nfes):
    """Error versus NFE, one panel per schedule; one color per solver, dashed with AFS."""
    base = []
    for label, _, _, _ in ROWS:
        name = label.removesuffix(' + AFS')
        if name not in base:
            base.append(name)
    series = []
    for label, _, _, afs_row in ROWS:
        name = label.removesuffix(' + AFS')
        for schedule, _ in PANELS:
            pts = [(n, results[(label, schedule, n)]) for n in nfes if (label, schedule, n) in results]
            if pts:
                series.append(dict(label=name, schedule=schedule, afs=afs_row, points=pts,
                                   color=COLORS[base.index(name) % len(COLORS)]))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, axes = plt.subplots(1, len(PANELS), figsize=(18, 5.5), sharey=True)
        for ax, (schedule, title) in zip(axes, PANELS):
            for s in series:
                if s['schedule'] == schedule:
                    xs, ys = zip(*s['points'])
                    ax.loglog(xs, ys, '--o' if s['afs'] else '-o', color=s['color'], ms=3,
                              label=None if s['afs'] else s['label'])
            ax.set_title(title)
            ax.set_xlabel('NFE')
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.grid(True, which='both', alpha=0.3)
        axes[0].set_ylabel('RMS error to the exact PF-ODE solution')
        axes[-1].legend(fontsize=8, loc='lower left', title='dashed: + AFS')
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
    width, height, legend_w = 1800, 560, 320
    img = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(img)
    values = [v for s in series for _, v in s['points']]
    ylo, yhi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    xlo, xhi = math.log10(nfes[0] * 0.92), math.log10(nfes[-1] * 1.08)
    panel_w = (width - legend_w) // len(PANELS)
    for p, (schedule, title) in enumerate(PANELS):
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
            draw.text((8, 12), 'RMS error', fill='black', font=small, anchor='lm')
        for s in series:
            if s['schedule'] != schedule:
                continue
            pts = [to_xy(n, v) for n, v in s['points']]
            for a, b in zip(pts, pts[1:]):
                _line(draw, a, b, s['color'], dashed=s['afs'])
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=s['color'])
    # Legend (colors are per solver; dashed = with AFS).
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
    draw.text((x0 + 36, y + 10), 'dashed: + AFS', fill='black', font=small, anchor='lm')
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
    parser.add_argument('--outdir', default=None,
                        help='where samplers.md/png go (default: docs/, or benchmarks/_work/samplers-quick/ with --quick)')
    parser.add_argument('--num_eval', type=int, default=256, help='evaluation (held-out) latents')
    parser.add_argument('--num_warmup', type=int, default=256, help='warm-up latents of GITS and learned schedules')
    parser.add_argument('--problem_seed', type=int, default=0, help='seed of the Gaussian mixture')
    parser.add_argument('--components', type=int, default=6, help='components of the Gaussian mixture')
    parser.add_argument('--demo_warmup', type=int, default=32, help='demo model: warm-up seeds')
    parser.add_argument('--demo_held_out', type=int, default=64, help='demo model: held-out seeds')
    parser.add_argument('--parts', default=None, help=f'comma-separated subset of {",".join(PARTS)} (default: all)')
    parser.add_argument('--resume', default=None, metavar='FILE',
                        help='keep finished parts in FILE (pickle) and reuse them on the next run')
    parser.add_argument('--quick', action='store_true',
                        help='small smoke run (8 latents, NFE 5 and 6; by default no orders, fixture or demo)')
    args = parser.parse_args()
    if args.parts is None:
        args.parts = 'accuracy,learned' if args.quick else ','.join(PARTS)
    parts = [p for p in args.parts.split(',') if p]
    if any(p not in PARTS for p in parts):
        parser.error(f'--parts: choose from {",".join(PARTS)}')
    if args.quick:
        args.num_eval, args.num_warmup, args.demo_warmup, args.demo_held_out = 8, 32, 4, 4
    if args.outdir is None:
        args.outdir = os.path.join(ROOT, 'benchmarks', '_work', 'samplers-quick') if args.quick else \
            os.path.join(ROOT, 'docs')
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.time()

    def log(msg):
        print(f'[{time.time() - start:6.1f}s] {msg}', flush=True)

    done = {}
    if args.resume and os.path.isfile(args.resume):
        with open(args.resume, 'rb') as f:
            done = pickle.load(f)

    def part(name, compute, wanted=None):
        if done.get(name) is None and (name in parts if wanted is None else wanted):
            t0 = time.time()
            done[name] = compute()
            done.setdefault('seconds', {})[name] = time.time() - t0
            if args.resume:
                with open(args.resume, 'wb') as f:
                    pickle.dump(done, f)
        return done.get(name)

    net = make_problem(args.problem_seed, args.components)
    shape = (3, 8, 8)
    latents = torch.randn(args.num_eval, *shape, generator=torch.Generator().manual_seed(1))
    warmup = torch.randn(args.num_warmup, *shape, generator=torch.Generator().manual_seed(2))
    nfes = (5, 6) if args.quick else NFES
    exact = part('exact', lambda: reference_solutions(net, latents, log), {'accuracy', 'learned'} & set(parts))
    results, gits_cache = part('accuracy', lambda: run_accuracy(net, latents, warmup, *exact, nfes, log)) or ({}, {})
    learned = part('learned', lambda: run_learned(net, latents, warmup, exact[0],
                                                  [n for n in nfes if n in LEARN_NFES], log))
    learned_results, searches = learned or ({}, {})
    others = part('others', lambda: run_others(latents, warmup, nfes, log))
    data = dict(results={**results, **learned_results}, gits_cache=gits_cache, searches=searches, others=others,
                orders=part('orders', lambda: [] if args.quick else run_orders(log)) or [],
                fixture=part('fixture', lambda: None if args.quick else run_fixture(log)),
                demo=part('demo', lambda: run_demo(args.demo_warmup, args.demo_held_out, log)))

    print()
    print(accuracy_table(data['results'], nfes))
    print()
    for table in learned_tables(data['results'], searches, [n for n in nfes if n in LEARN_NFES]):
        print(table)
        print()
    os.makedirs(args.outdir, exist_ok=True)
    plot(os.path.join(args.outdir, 'samplers.png'), data['results'], nfes)
    write_markdown(os.path.join(args.outdir, 'samplers.md'), data, nfes, args, sum(done.get('seconds', {}).values()))
    log(f'wrote {args.outdir}/samplers.md and samplers.png')


if __name__ == '__main__':
    main()
