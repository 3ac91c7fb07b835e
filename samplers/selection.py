"""From command-line options to a sampler: the selection rule, the NFE report and cached schedule searches.

The rule (documented in `generate.py --help` and the README), driven by the solver registry and the model family
of the network (`FAMILIES`):
  scalar-sigma denoisers (EDM and the other formulations of `training.networks`):
  (a) any of the ablation options (--disc/--schedule/--scaling) -> EDM's ablation sampler (euler|heun, --steps);
  (b) else no --solver, or --solver=edm                        -> EDM Algorithm 2 (--steps, --S_* options);
      --randn_like=ddb without --solver, or a named 'edm'-kind
      solver (--solver=itotaylor|edm_em)                         -> that solver on EDM's schedule (--steps, --rho,
                                                                     --S_min/--S_max, --langevin);
  (c) else the named 'ode' solver                              -> --num_steps timestamps (the GITS toolbox's meaning);
  a family with its own solvers (CLD: 'cld' kind):
  (d) the named solver of the family, or its default           -> --num_steps timestamps of its own grid.
Errors are `OptionError`s (a ValueError carrying the option it is about), turned into one line by the scripts.
"""

import hashlib
import json
import math
import os
import types

import torch

import dnnlib
from torch_utils import distributed as dist
from . import edm as edm_samplers
from . import generation
from .demo import pretrained_url
from .gits import gits_schedule
from .learn import DEFAULT_TEACHER, SEARCH_SETTINGS, learn_schedule
from .registry import SOLVERS, describe_cost as _describe_cost, get_solver, option_names, solver_names
from .sampling import CLD_DEFAULT_NUM_STEPS, DEFAULT_NUM_STEPS, EDM_DEFAULT_NUM_STEPS, sample
from .schedules import clip_sigma_range, edm_schedule, gddim_schedule, get_schedule

ABLATION_KEYS = ('disc', 'schedule', 'scaling')
ABLATION_TARGETS = dict(disc='discretization', schedule='schedule', scaling='scaling')
# Options of the 'ode' kind besides the solvers' own options (see `sample`), and the GITS search switch.
# --schedule_type=learned (not a `get_schedule` type) asks for a learned schedule (`samplers.learn_schedule`).
ODE_KEYS = ('num_steps', 'schedule_type', 'schedule_rho', 'afs', 'denoise_to_zero', 't_steps', 'dp')
# Model families. A network belongs to the first family whose `attribute` it has, else to 'denoiser'. `kinds`: the
# solver kinds that sample it; `default`: the solver and number of timestamps without --solver/--num_steps (None:
# rules (a)-(c)); `what`: how messages name it.
FAMILIES = {
    'denoiser': dict(attribute=None, kinds=('edm', 'ode'), default=None, what='a scalar-sigma denoiser'),
    'cld': dict(attribute='cld', kinds=('cld',), default=('gddim', CLD_DEFAULT_NUM_STEPS), what='a CLD network'),
}
# --randn_like (the 2nd-SED project's option): the noise a sampler draws per step. `solver`: the solver a value
# selects without --solver (None: rules (a)-(c) decide); a solver draws the value that names it, else 'db'.
RANDN_LIKE = {
    'db': dict(solver=None, what='plain Gaussian noise, as in EDM Algorithm 2'),
    'ddb': dict(solver='itotaylor', what='correlated pairs of Brownian increments and their time integrals'),
}
DEFAULT_RANDN_LIKE = 'db'
# Options that only rules (a)-(c) use (the 'edm' solver's own options are added where used).
_DENOISER_KEYS = ABLATION_KEYS + ('steps', 'rho', 'sigma_min', 'sigma_max') + ODE_KEYS[1:]


class OptionError(ValueError):
    """A bad combination of sampler options; `param` names the option it is about (or None)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


# The GITS toolbox's --dataset_name values for EDM's pixel-space checkpoints (official files, see samplers.demo).
TOOLBOX_MODELS = {'cifar10': 'edm-cifar10-32x32-uncond-vp.pkl', 'ffhq': 'edm-ffhq-64x64-uncond-vp.pkl',
                  'afhqv2': 'edm-afhqv2-64x64-uncond-vp.pkl', 'imagenet64': 'edm-imagenet-64x64-cond-adm.pkl'}


def toolbox_network(dataset_name):
    """The checkpoint URL of a GITS toolbox --dataset_name (raises OptionError for the models it cannot load)."""
    if dataset_name not in TOOLBOX_MODELS:
        raise OptionError(f'{dnnlib.util.printable(dataset_name)!r} is not supported; supported: '
                          f'{", ".join(TOOLBOX_MODELS)} (EDM\'s pixel-space models; give any other checkpoint with '
                          '--network=PATH|URL)', param='dataset_name')
    return pretrained_url(TOOLBOX_MODELS[dataset_name])


def toolbox_outdir(dataset_name, grid=False, solver=None, nfe=None):
    """Where the GITS toolbox writes: ./samples/<dataset_name>/<solver>_nfe<NFE>, under ./samples/grids/ with
    --grid; without `solver` the folder that holds these."""
    folder = os.path.join('samples', 'grids', dataset_name) if grid else os.path.join('samples', dataset_name)
    return folder if solver is None else os.path.join(folder, f'{solver}_nfe{nfe}')


def describe_rule():
    """The selection rule in one paragraph (for --help)."""
    sde = '|'.join(n for n in solver_names(kind='edm') if n != 'edm')
    picks = ', '.join(f'--randn_like={k} selects --solver={v["solver"]}' for k, v in RANDN_LIKE.items() if v['solver'])
    return ('Sampler rule: (a) any of --disc/--schedule/--scaling selects EDM\'s ablation sampler (--solver '
            'euler|heun, --steps); (b) otherwise no --solver or --solver=edm runs EDM Algorithm 2 (--steps, '
            f'--S_churn/--S_min/--S_max/--S_noise), and --solver={sde} runs that SDE sampler on EDM\'s schedule '
            f'(--steps, --rho, --S_min/--S_max, --langevin; without --solver, {picks}); (c) otherwise the named '
            'solver runs with --num_steps timestamps '
            f'(no trailing zero). (d) CLD networks run --solver={"|".join(family_solvers("cld"))} (default gddim, '
            f'--num_steps={CLD_DEFAULT_NUM_STEPS}, NFE = num_steps) with --max_order and --langevin.')


def net_family(net):
    """The model family of a network (a key of `FAMILIES`)."""
    for name, family in FAMILIES.items():
        if family['attribute'] is not None and getattr(net, family['attribute'], None) is not None:
            return name
    return 'denoiser'


def solver_family(solver):
    """The model family that `solver` samples."""
    kind = get_solver(solver).kind
    return next(name for name, family in FAMILIES.items() if kind in family['kinds'])


def family_solvers(family):
    """The registered solvers of a family."""
    return [spec.name for spec in SOLVERS.values() if spec.kind in FAMILIES[family]['kinds']]


def _edm_options():
    return list(get_solver('edm').defaults)


def _ode_options():
    """Every option of an 'ode' solver, plus the 'ode'-kind sampling options."""
    own = [k for k in option_names() if any(k in SOLVERS[n].defaults for n in solver_names(kind='ode'))]
    return list(ODE_KEYS[:-2]) + own + list(ODE_KEYS[-2:])


def _given(opts, keys):
    """The options in `keys` given in `opts` (the switches of ODE_KEYS default to False, the others to None)."""
    return [k for k in keys if opts.get(k) is not None and not (k in ODE_KEYS and opts.get(k) is False)]


def _options_apply(keys):
    """'--a only applies' / '--a, --b only apply'."""
    return f'{", ".join("--" + k for k in keys)} only {"applies" if len(keys) == 1 else "apply"}'


def _refuse(opts, keys, what, hint='', accepted=None):
    """Refuse the fast-solver options `keys` and the solver options outside `accepted` (default: EDM's)."""
    given = _given(opts, keys)
    if given:
        raise OptionError(f'{_options_apply(given)} to the fast solvers '
                          f'(--solver={"|".join(solver_names(kind="ode"))}), not to {what}{hint}')
    accepted = _edm_options() if accepted is None else list(accepted)
    for key in _given(opts, [k for k in option_names() if k not in keys and k not in accepted]):
        users = [spec.name for spec in SOLVERS.values() if key in spec.defaults]
        raise OptionError(f'--{key} only applies to --solver={"|".join(users)}, not to {what}')


def _solver_options(opts, spec, note):
    """The solver options given in `opts` that `spec` accepts; a note names the others (the GITS toolbox passes
    every option to every solver, so its command lines keep working)."""
    given = _given(opts, option_names())
    ignored = [f'--{k}' for k in given if k not in spec.defaults]
    if ignored:
        note(f'Note: {", ".join(ignored)} not used by --solver={spec.name}; ignored.')
    return {k: opts[k] for k in given if k in spec.defaults}


def _sigmas(opts):
    return {k: opts[k] for k in ('sigma_min', 'sigma_max') if opts.get(k) is not None}


def _noise_of(solver):
    """The --randn_like value `solver` draws (None: EDM's samplers)."""
    return next((k for k, v in RANDN_LIKE.items() if solver is not None and v['solver'] == solver),
                DEFAULT_RANDN_LIKE)


def named_solver(opts):
    """--solver, else the solver that --randn_like selects (None: the rule decides). OptionError for an unknown
    --randn_like or one that does not fit the sampler."""
    solver, noise = opts.get('solver'), opts.get('randn_like')
    if noise is None:
        return solver
    if noise not in RANDN_LIKE:
        raise OptionError(f'{dnnlib.util.printable(str(noise))!r} is not one of {", ".join(RANDN_LIKE)}',
                          param='randn_like')
    ablation = _given(opts, ABLATION_KEYS)
    if solver is None and not ablation:
        solver = RANDN_LIKE[noise]['solver']
    own = 'db' if ablation else _noise_of(solver)
    if noise != own:
        what = ("EDM's ablation sampler (--disc/--schedule/--scaling)" if ablation else
                f'--solver={solver}' if solver else "EDM's sampler")
        raise OptionError(f'--randn_like={noise} does not fit {what}: it takes --randn_like={own} '
                          f'({RANDN_LIKE[own]["what"]})', param='randn_like')
    return solver


def choose_sampler(opts, note=print, family='denoiser'):
    """Apply the selection rule to parsed options (None = not given) for a network of `family` (see `net_family`).
    Returns (kind, sampler_kwargs), kind being 'ablation', 'edm', 'fast' or 'cld'; `note` receives messages about
    ignored options."""
    solver = named_solver(opts)
    if solver is not None and solver_family(solver) != family:
        named = f'--solver={solver}' if opts.get('solver') else f'--randn_like={opts["randn_like"]} (--solver={solver})'
        raise OptionError(f'{named} needs {FAMILIES[solver_family(solver)]["what"]}, but the network is '
                          f'{FAMILIES[family]["what"]}; use --solver={"|".join(family_solvers(family))}')
    if FAMILIES[family]['default'] is not None:
        return _choose_family_solver(opts, note, family)
    churn = {k: opts[k] for k in _edm_options() if opts.get(k) is not None}
    steps = opts.get('steps')
    rho = 7 if opts.get('rho') is None else opts['rho']

    if any(opts.get(k) is not None for k in ABLATION_KEYS):
        if solver not in (None, 'euler', 'heun'):
            raise OptionError(f'--solver={solver} cannot be combined with --disc/--schedule/--scaling '
                              '(EDM\'s ablation sampler takes --solver=euler or heun)')
        _refuse(opts, _ode_options(), 'EDM\'s ablation sampler (selected by --disc/--schedule/--scaling)')
        kwargs = dict(solver=solver or 'heun', num_steps=EDM_DEFAULT_NUM_STEPS if steps is None else steps, rho=rho,
                      **churn)
        kwargs.update({ABLATION_TARGETS[k]: opts[k] for k in ABLATION_KEYS if opts.get(k) is not None})
        return 'ablation', {**kwargs, **_sigmas(opts)}

    if solver is None or get_solver(solver).kind == 'edm':  # EDM's schedule: Algorithm 2 or an SDE solver.
        spec = get_solver(solver or 'edm')
        what = 'EDM\'s sampler (no --solver or --solver=edm)' if spec.name == 'edm' else f'--solver={spec.name}'
        _refuse(opts, _ode_options(), what, '; name a fast --solver to use them', accepted=spec.defaults)
        own = {k: opts[k] for k in spec.defaults if opts.get(k) is not None}
        return 'edm', dict(solver=spec.name, num_steps=EDM_DEFAULT_NUM_STEPS if steps is None else steps, rho=rho,
                           **own, **_sigmas(opts))

    spec = get_solver(solver)
    if steps is not None:
        raise OptionError(f'--steps is EDM\'s step count; --solver={solver} takes --num_steps, the number of '
                          'timestamps without the final zero (or use --solver=edm for EDM\'s sampler)')
    if opts.get('rho') is not None:
        raise OptionError(f'--rho is EDM\'s time step exponent; --solver={solver} takes --schedule_rho')
    if churn:
        raise OptionError(f'{_options_apply(list(churn))} to EDM\'s sampler; --solver={solver} is deterministic')
    if opts.get('schedule_type') == 'learned' and opts.get('dp'):
        raise OptionError('--dp searches a GITS schedule and --schedule_type=learned learns one; choose one')
    kwargs = dict(solver=solver, schedule_type=opts.get('schedule_type') or 'polynomial',
                  schedule_rho=7 if opts.get('schedule_rho') is None else opts['schedule_rho'],
                  afs=opts['afs'], denoise_to_zero=opts['denoise_to_zero'])
    kwargs.update(_solver_options(opts, spec, note))
    kwargs.update(_sigmas(opts))
    if opts.get('t_steps') is not None:
        t_steps = opts['t_steps']
        if len(t_steps) < 2 or any(a <= b for a, b in zip(t_steps[:-1], t_steps[1:])) or t_steps[-1] <= 0:
            raise OptionError('must be at least two strictly decreasing positive noise levels', param='t_steps')
        if opts.get('dp'):
            note('Note: --t_steps given, so the GITS search (--dp) is skipped.')
        if kwargs.get('schedule_type') == 'learned':
            note('Note: --t_steps given, so the schedule is not learned (--schedule_type=learned).')
        kwargs['t_steps'] = t_steps
    else:
        kwargs['num_steps'] = DEFAULT_NUM_STEPS if opts.get('num_steps') is None else opts['num_steps']
        if kwargs['num_steps'] < 2:
            raise OptionError('needs at least 2 timestamps', param='num_steps')
    return 'fast', kwargs


def _choose_family_solver(opts, note, family):
    """Rule (d): the family's named or default solver on its own time grid."""
    default_solver, default_steps = FAMILIES[family]['default']
    spec = get_solver(opts.get('solver') or default_solver)
    foreign = _given(opts, _DENOISER_KEYS + tuple(_edm_options()))
    if foreign:
        raise OptionError(f'{", ".join("--" + k for k in foreign)} cannot be used with {FAMILIES[family]["what"]} '
                          f'(--solver={"|".join(family_solvers(family))} take --num_steps and their own options)')
    num_steps = default_steps if opts.get('num_steps') is None else opts['num_steps']
    if num_steps < 2:
        raise OptionError('needs at least 2 timestamps', param='num_steps')
    return spec.kind, dict(solver=spec.name, num_steps=num_steps, **_solver_options(opts, spec, note))


def precheck(opts):
    """Check options before the network is loaded: an OptionError if no family the options may be meant for (with
    --solver, the solver's family) accepts them. Its message gives every family's reason."""
    solver = named_solver(opts)
    families = [solver_family(solver)] if solver else list(FAMILIES)
    errors = []
    for family in families:
        try:
            check_sampler(*choose_sampler(opts, note=lambda message: None, family=family))
            return
        except OptionError as e:
            errors.append((family, e))
    if len(errors) == 1:
        raise errors[0][1]
    raise OptionError('. '.join(f'For {FAMILIES[family]["what"]}: {e}' for family, e in errors))


def check_sampler(kind, kwargs):
    """Validate the chosen solver's options before any work starts (raises OptionError)."""
    if kind not in ('fast', 'cld'):
        return
    options = {k: v for k, v in kwargs.items() if k in SOLVERS[kwargs['solver']].defaults}
    spec = get_solver(kwargs['solver'])
    if kwargs.get('schedule_type') == 'learned' and spec.stochastic and 't_steps' not in kwargs:
        raise OptionError(f'--schedule_type=learned needs a deterministic solver (--solver={spec.name} draws noise)')
    if spec.prepare is not None:
        probe = gddim_schedule(5) if kind == 'cld' else torch.tensor([80.0, 1.0, 0.5, 0.1, 0.002])
        try:
            spec.prepare(probe, **spec.check_options(options))
        except (ValueError, TypeError) as e:
            raise OptionError(str(e)) from None


def check_net(kind, kwargs, net):
    """Validate the options that depend on the loaded network before any work starts (raises OptionError): a fast
    solver's time schedule is built on it (e.g. schedule_type='discrete' needs a net with its own time variable)
    and prepared with the solver's options."""
    if kind != 'fast' or 't_steps' in kwargs:
        return
    spec = get_solver(kwargs['solver'])
    lo, hi = clip_sigma_range(net, kwargs.get('sigma_min', 0.002), kwargs.get('sigma_max', 80))
    schedule_type = 'polynomial' if kwargs.get('schedule_type') == 'learned' else kwargs['schedule_type']
    try:
        t_steps = get_schedule(kwargs['num_steps'], lo, hi, schedule_type, kwargs['schedule_rho'], net=net)
        if spec.prepare is not None:
            spec.prepare(t_steps, **spec.check_options({k: v for k, v in kwargs.items() if k in spec.defaults}))
    except (ValueError, TypeError) as e:
        raise OptionError(f'this network: {e}') from None


# Without the network, EDM schedules are counted unclipped and unrounded (exact for EDMPrecond nets).
_ANY_NET = types.SimpleNamespace(sigma_min=0, sigma_max=math.inf, round_sigma=lambda sigma: sigma)


def _edm_levels(kwargs, net):
    """The EDM schedule of an 'edm'-kind choice on `net`."""
    return edm_schedule(net or _ANY_NET, kwargs['num_steps'], kwargs.get('sigma_min', 0.002), kwargs.get('sigma_max', 80),
                        kwargs['rho'])


def describe_nfe(kind, kwargs, net=None):
    """Network evaluations per image of the chosen sampler (a JVP counts as one; see `describe_cost`). Where the
    count depends on the schedule (an SDE solver's noise window [S_min, S_max]) it is built on `net`."""
    if kind == 'ablation':
        return 2 * kwargs['num_steps'] - 1 if kwargs['solver'] == 'heun' else kwargs['num_steps']
    spec = get_solver(kwargs.get('solver', 'edm'))
    options = {k: v for k, v in kwargs.items() if k in spec.defaults}
    if kind == 'edm':
        return spec.count_nfe(kwargs['num_steps'], t_steps=_edm_levels(kwargs, net), **options)
    num_steps = len(kwargs['t_steps']) if 't_steps' in kwargs else kwargs['num_steps']
    return spec.count_nfe(num_steps, afs=kwargs.get('afs', False),
                          denoise_to_zero=kwargs.get('denoise_to_zero', False), **options)


def describe_cost(kind, kwargs, net=None):
    """The chosen sampler's network passes by sort, e.g. '1 forward pass + 17 JVPs + 17 nested JVPs', for solvers
    that take more than plain forward passes (`SolverSpec.cost`); None for the others."""
    spec = get_solver(kwargs.get('solver', 'edm')) if kind != 'ablation' else None
    if spec is None or spec.cost is None:
        return None
    options = {k: v for k, v in kwargs.items() if k in spec.defaults}
    levels = _edm_levels(kwargs, net) if kind == 'edm' else kwargs.get('t_steps')
    num_steps = kwargs['num_steps'] if 'num_steps' in kwargs else len(levels)
    return _describe_cost(spec.count_cost(num_steps, t_steps=levels, **options))


def make_sampler_fn(kind, kwargs):
    """A callable (net, latents, class_labels, generator) -> images for the chosen sampler."""
    if kind == 'ablation':
        return lambda net, x, c, gen: edm_samplers.ablation_sampler(net, x, c, randn_like=gen.randn_like,
                                                                    generator=gen, **kwargs)
    if kind == 'edm':
        options = dict(kwargs)
        rho, solver = options.pop('rho'), options.pop('solver', 'edm')
        return lambda net, x, c, gen: sample(net, x, c, solver=solver, schedule_rho=rho, generator=gen, **options)
    return lambda net, x, c, gen: sample(net, x, c, generator=gen, **kwargs)

# ----------------------------------------------------------------------------
# Schedule searches, computed once on rank 0 and cached under $DNNLIB_CACHE_DIR/<name>/.


def network_fingerprint(network):
    """Identify a checkpoint for the caches: a local file by path, size and modification time; a URL as is."""
    path = dnnlib.util.file_url_to_path(network) if network.lower().startswith('file://') else network
    if os.path.isfile(path):
        stat = os.stat(path)
        return f'{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}'
    return network


MAX_CACHE_BYTES = 1 << 20   # A cached schedule is a few hundred bytes; a larger file is not read.


def _read_cached(path, search, check=None):
    """(schedule, None) if `path` holds a valid record of exactly this `search`, else (None, the reason). `check`
    (t_steps -> None, raises ValueError) tests the schedule itself, so a planted record is refused too."""
    try:
        if os.path.getsize(path) > MAX_CACHE_BYTES:
            return None, f'larger than {MAX_CACHE_BYTES} bytes'
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None, 'not a readable JSON file'
    if not isinstance(record, dict) or record.get('search') != search:
        return None, 'not a record of this search'
    t_steps = record.get('t_steps')
    if not (isinstance(t_steps, list) and len(t_steps) >= 2
            and all(type(t) in (int, float) and math.isfinite(t) for t in t_steps)
            and all(a > b for a, b in zip(t_steps[:-1], t_steps[1:])) and t_steps[-1] > 0):
        return None, 'its t_steps are not a decreasing list of positive noise levels'
    t_steps = [float(t) for t in t_steps]
    if check is not None:
        try:
            check(t_steps)
        except ValueError as e:
            return None, str(e)
    return t_steps, None


def write_json(path, obj):
    """Write `obj` as JSON atomically."""
    with dnnlib.util.atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2)


def cached_search(name, search, compute, check=None):
    """Run `compute() -> list of noise levels` on rank 0 unless the cache holds this `search` (a JSON-able dict
    naming everything that changes the result); broadcast the schedule to every rank. A cache file is used only
    if it is a record of this search whose schedule passes `check` (see `_read_cached`); otherwise the search
    runs again and replaces it."""
    digest = hashlib.sha256(json.dumps(search, sort_keys=True).encode()).hexdigest()[:20]
    cache_path = dnnlib.make_cache_dir_path(name, f'{digest}.json')
    t_steps = None
    if dist.get_rank() == 0:
        t_steps, reason = _read_cached(cache_path, search, check) if os.path.exists(cache_path) else (None, None)
        if t_steps is not None:
            print(f'Reusing the {name.upper()} schedule cached in {cache_path}')
        else:
            if reason is not None:
                print(f'Ignoring the cache file {cache_path}: {dnnlib.util.printable(reason)}')
            t_steps = [float(t) for t in torch.as_tensor(compute()).flatten().tolist()]
            write_json(cache_path, dict(search=search, t_steps=t_steps))
    return dist.broadcast_object(t_steps)


def gits_search(net, network_key, kwargs, opts, device):
    """The GITS dynamic-programming schedule for the chosen fast solver (cached); returns (t_steps, search)."""
    spec = get_solver(kwargs['solver'])
    student_options = {k: kwargs[k] for k in spec.defaults if k in kwargs}
    search = dict(network=network_fingerprint(network_key), num_steps=kwargs['num_steps'],
                  solver_tea=opts['solver_tea'], num_steps_tea=opts['num_steps_tea'], metric=opts['metric'],
                  coeff=opts['coeff'], num_warmup=opts['num_warmup'], schedule_type=kwargs['schedule_type'],
                  schedule_rho=kwargs['schedule_rho'], sigma_min=opts.get('sigma_min') or 0.002,
                  sigma_max=opts.get('sigma_max') or 80, afs=kwargs['afs'], solver=kwargs['solver'],
                  class_idx=opts.get('class_idx'), **student_options)

    def check(t_steps):
        # A GITS schedule picks timestamps of the teacher's fine grid, from its first to its last one.
        lo, hi = clip_sigma_range(net, search['sigma_min'], search['sigma_max'])
        fine = get_schedule(opts['num_steps_tea'], lo, hi, kwargs['schedule_type'], kwargs['schedule_rho'],
                            net=net).tolist()
        sizes = (kwargs['num_steps'], kwargs['num_steps'] + 1) if kwargs['afs'] else (kwargs['num_steps'],)
        on_grid = all(any(math.isclose(t, f, rel_tol=1e-6) for f in fine) for t in t_steps)
        ends = math.isclose(t_steps[0], fine[0], rel_tol=1e-6) and math.isclose(t_steps[-1], fine[-1], rel_tol=1e-6)
        if len(t_steps) not in sizes or not on_grid or not ends:
            raise ValueError(f'its t_steps are not {kwargs["num_steps"]} points of the teacher\'s '
                             f'{opts["num_steps_tea"]}-point grid from {fine[0]:g} to {fine[-1]:g}')

    def compute():
        # Warm-up latents come from the per-seed generators of seeds 0..num_warmup-1, so the search is
        # deterministic and can be cached.
        latents, class_labels, _ = generation.draw_inputs(net, list(range(opts['num_warmup'])), device,
                                                          opts.get('class_idx'))
        print(f'Searching a GITS schedule with {opts["num_warmup"]} warm-up trajectories...')
        with torch.no_grad():
            return gits_schedule(net, kwargs['num_steps'], latents, class_labels, solver_tea=opts['solver_tea'],
                                 num_steps_tea=opts['num_steps_tea'], metric=opts['metric'], coeff=opts['coeff'],
                                 sigma_min=search['sigma_min'], sigma_max=search['sigma_max'],
                                 schedule_type=kwargs['schedule_type'], schedule_rho=kwargs['schedule_rho'],
                                 afs=kwargs['afs'], solver=kwargs['solver'], solver_options=student_options)

    return cached_search('gits', search, compute, check), search


def learned_search(net, network_key, kwargs, opts, device):
    """The learned schedule (`samplers.learn_schedule`) for the chosen fast solver (cached); returns (t_steps,
    search)."""
    spec = get_solver(kwargs['solver'])
    student_options = {k: kwargs[k] for k in spec.defaults if k in kwargs}
    search = dict(network=network_fingerprint(network_key), num_steps=kwargs['num_steps'],
                  num_warmup=opts['num_warmup'], sigma_min=opts.get('sigma_min') or 0.002,
                  sigma_max=opts.get('sigma_max') or 80, afs=kwargs['afs'], denoise_to_zero=kwargs['denoise_to_zero'],
                  solver=kwargs['solver'], class_idx=opts.get('class_idx'), teacher=DEFAULT_TEACHER,
                  settings=SEARCH_SETTINGS, **student_options)

    def check(t_steps):
        # A learned schedule has num_steps levels from the clipped sigma_max to the clipped sigma_min.
        lo, hi = clip_sigma_range(net, search['sigma_min'], search['sigma_max'])
        if len(t_steps) != kwargs['num_steps'] or not (math.isclose(t_steps[0], hi, rel_tol=1e-6)
                                                       and math.isclose(t_steps[-1], lo, rel_tol=1e-6)):
            raise ValueError(f'its t_steps are not {kwargs["num_steps"]} levels from {hi:g} to {lo:g}')

    def compute():
        latents, class_labels, _ = generation.draw_inputs(net, list(range(opts['num_warmup'])), device,
                                                          opts.get('class_idx'))  # seeds 0..num_warmup-1
        print(f'Learning a schedule with {opts["num_warmup"]} warm-up trajectories...')
        with torch.no_grad():
            return learn_schedule(net, kwargs['num_steps'], latents, class_labels, solver=kwargs['solver'],
                                  sigma_min=search['sigma_min'], sigma_max=search['sigma_max'], afs=kwargs['afs'],
                                  denoise_to_zero=kwargs['denoise_to_zero'], **student_options)

    return cached_search('learned', search, compute, check), search


def search_schedule(net, network_key, kwargs, opts, device):
    """Run the schedule search the options ask for (GITS with --dp, or --schedule_type=learned), cached.

    Returns (name, t_steps, search), or None when no search is asked for (or --t_steps was given)."""
    if 't_steps' in kwargs:
        return None
    if opts.get('dp'):
        return ('gits', *gits_search(net, network_key, kwargs, opts, device))
    if kwargs.get('schedule_type') == 'learned':
        return ('learned', *learned_search(net, network_key, kwargs, opts, device))
    return None


__all__ = ['OptionError', 'FAMILIES', 'RANDN_LIKE', 'DEFAULT_RANDN_LIKE', 'named_solver', 'describe_cost',
           'TOOLBOX_MODELS', 'toolbox_network', 'toolbox_outdir', 'describe_rule',
           'net_family', 'solver_family', 'family_solvers', 'choose_sampler', 'precheck', 'check_sampler',
           'check_net', 'describe_nfe', 'make_sampler_fn', 'network_fingerprint', 'cached_search', 'gits_search',
           'learned_search', 'search_schedule', 'write_json']
