"""From command-line options to a sampler: the selection rule, the NFE report and cached schedule searches.

The rule (documented in `generate.py --help` and the README), driven by the solver registry:
  (a) any of the ablation options (--disc/--schedule/--scaling) -> EDM's ablation sampler (euler|heun, --steps);
  (b) else no --solver, or --solver=edm                        -> EDM Algorithm 2 (--steps, --S_* options);
  (c) else the named 'ode' solver                              -> --num_steps timestamps (the GITS toolbox's meaning).
Errors are `OptionError`s (a ValueError carrying the option it is about), turned into one line by the scripts.
"""

import hashlib
import json
import os

import torch

import dnnlib
from torch_utils import distributed as dist
from . import edm as edm_samplers
from . import generation
from .gits import gits_schedule
from .learn import DEFAULT_TEACHER, SEARCH_SETTINGS, learn_schedule
from .registry import SOLVERS, get_solver, option_names, solver_names
from .sampling import DEFAULT_NUM_STEPS, EDM_DEFAULT_NUM_STEPS, sample

ABLATION_KEYS = ('disc', 'schedule', 'scaling')
ABLATION_TARGETS = dict(disc='discretization', schedule='schedule', scaling='scaling')
# Options of the 'ode' kind besides the solvers' own options (see `sample`), and the GITS search switch.
# --schedule_type=learned (not a `get_schedule` type) asks for a learned schedule (`samplers.learn_schedule`).
ODE_KEYS = ('num_steps', 'schedule_type', 'schedule_rho', 'afs', 'denoise_to_zero', 't_steps', 'dp')


class OptionError(ValueError):
    """A bad combination of sampler options; `param` names the option it is about (or None)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


def describe_rule():
    """The selection rule in one paragraph (for --help)."""
    return ('Sampler rule: (a) any of --disc/--schedule/--scaling selects EDM\'s ablation sampler (--solver '
            'euler|heun, --steps); (b) otherwise no --solver or --solver=edm runs EDM Algorithm 2 (--steps, '
            '--S_churn/--S_min/--S_max/--S_noise); (c) otherwise the named solver runs with --num_steps timestamps '
            '(no trailing zero).')


def _edm_options():
    return list(get_solver('edm').defaults)


def _ode_options():
    """Every option of an 'ode' solver, plus the 'ode'-kind sampling options."""
    own = [k for k in option_names() if any(k in SOLVERS[n].defaults for n in solver_names(kind='ode'))]
    return list(ODE_KEYS[:-2]) + own + list(ODE_KEYS[-2:])


def _refuse(opts, keys, what):
    given = [k for k in keys if opts.get(k) not in (None, False)]
    if given:
        raise OptionError(f'{", ".join("--" + k for k in given)} only apply to the fast solvers '
                          f'(--solver={"|".join(solver_names(kind="ode"))}), not to {what}')


def _sigmas(opts):
    return {k: opts[k] for k in ('sigma_min', 'sigma_max') if opts.get(k) is not None}


def choose_sampler(opts, note=print):
    """Apply the selection rule to parsed options (None = not given). Returns (kind, sampler_kwargs), kind being
    'ablation', 'edm' or 'fast'; `note` receives messages about ignored options."""
    solver = opts.get('solver')
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

    if solver in (None, 'edm'):
        _refuse(opts, _ode_options(), 'EDM\'s sampler (no --solver or --solver=edm); name a fast --solver to use them')
        return 'edm', dict(num_steps=EDM_DEFAULT_NUM_STEPS if steps is None else steps, rho=rho, **churn,
                           **_sigmas(opts))

    spec = get_solver(solver)
    if steps is not None:
        raise OptionError(f'--steps is EDM\'s step count; --solver={solver} takes --num_steps, the number of '
                          'timestamps without the final zero (or use --solver=edm for EDM\'s sampler)')
    if opts.get('rho') is not None:
        raise OptionError(f'--rho is EDM\'s time step exponent; --solver={solver} takes --schedule_rho')
    if churn:
        raise OptionError(f'{", ".join("--" + k for k in churn)} only apply to EDM\'s sampler; '
                          f'--solver={solver} is deterministic')
    if opts.get('schedule_type') == 'learned' and opts.get('dp'):
        raise OptionError('--dp searches a GITS schedule and --schedule_type=learned learns one; choose one')
    kwargs = dict(solver=solver, schedule_type=opts.get('schedule_type') or 'polynomial',
                  schedule_rho=7 if opts.get('schedule_rho') is None else opts['schedule_rho'],
                  afs=opts['afs'], denoise_to_zero=opts['denoise_to_zero'])
    ignored = []
    for key in _ode_options():
        if key not in ODE_KEYS and opts.get(key) is not None:
            if key in spec.defaults:
                kwargs[key] = opts[key]
            else:
                ignored.append(f'--{key}')
    if ignored:  # The GITS toolbox passes every option to every solver; keep its command lines working.
        note(f'Note: {", ".join(ignored)} not used by --solver={solver}; ignored.')
    kwargs.update(_sigmas(opts))
    if opts.get('t_steps') is not None:
        t_steps = opts['t_steps']
        if len(t_steps) < 2 or any(a <= b for a, b in zip(t_steps[:-1], t_steps[1:])) or t_steps[-1] <= 0:
            raise OptionError('must be at least two strictly decreasing positive noise levels', param='t_steps')
        if opts.get('dp'):
            note('Note: --t_steps given, so the GITS search (--dp) is skipped.')
        if kwargs['schedule_type'] == 'learned':
            note('Note: --t_steps given, so the schedule is not learned (--schedule_type=learned).')
        kwargs['t_steps'] = t_steps
    else:
        kwargs['num_steps'] = DEFAULT_NUM_STEPS if opts.get('num_steps') is None else opts['num_steps']
        if kwargs['num_steps'] < 2:
            raise OptionError('needs at least 2 timestamps', param='num_steps')
    return 'fast', kwargs


def check_sampler(kind, kwargs):
    """Validate the chosen solver's options before any work starts (raises OptionError)."""
    if kind != 'fast':
        return
    options = {k: v for k, v in kwargs.items() if k in SOLVERS[kwargs['solver']].defaults}
    spec = get_solver(kwargs['solver'])
    if kwargs['schedule_type'] == 'learned' and spec.stochastic and 't_steps' not in kwargs:
        raise OptionError(f'--schedule_type=learned needs a deterministic solver (--solver={spec.name} draws noise)')
    if spec.prepare is not None:
        try:
            spec.prepare(torch.tensor([80.0, 1.0, 0.5, 0.1, 0.002]), **spec.check_options(options))
        except (ValueError, TypeError) as e:
            raise OptionError(str(e)) from None


def describe_nfe(kind, kwargs):
    """Network evaluations per image of the chosen sampler."""
    if kind == 'ablation':
        return 2 * kwargs['num_steps'] - 1 if kwargs['solver'] == 'heun' else kwargs['num_steps']
    if kind == 'edm':
        return get_solver('edm').count_nfe(kwargs['num_steps'])
    spec = get_solver(kwargs['solver'])
    options = {k: v for k, v in kwargs.items() if k in spec.defaults}
    num_steps = len(kwargs['t_steps']) if 't_steps' in kwargs else kwargs['num_steps']
    return spec.count_nfe(num_steps, afs=kwargs['afs'], denoise_to_zero=kwargs['denoise_to_zero'], **options)


def make_sampler_fn(kind, kwargs):
    """A callable (net, latents, class_labels, generator) -> images for the chosen sampler."""
    if kind == 'ablation':
        return lambda net, x, c, gen: edm_samplers.ablation_sampler(net, x, c, randn_like=gen.randn_like,
                                                                    generator=gen, **kwargs)
    if kind == 'edm':
        options = dict(kwargs)
        rho = options.pop('rho')
        return lambda net, x, c, gen: sample(net, x, c, solver='edm', schedule_rho=rho, generator=gen, **options)
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


def _read_cached(path, search):
    """The cached schedule at `path` if it is a valid record of exactly this search, else None."""
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
        t_steps = record['t_steps']
        valid = (record.get('search') == search and isinstance(t_steps, list) and len(t_steps) >= 2
                 and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in t_steps)
                 and all(a > b for a, b in zip(t_steps[:-1], t_steps[1:])) and t_steps[-1] > 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        valid = False
    return [float(t) for t in t_steps] if valid else None


def write_json(path, obj):
    """Write `obj` as JSON atomically."""
    with dnnlib.util.atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2)


def cached_search(name, search, compute):
    """Run `compute() -> list of noise levels` on rank 0 unless the cache holds this `search` (a JSON-able dict
    naming everything that changes the result); broadcast the schedule to every rank."""
    digest = hashlib.sha256(json.dumps(search, sort_keys=True).encode()).hexdigest()[:20]
    cache_path = dnnlib.make_cache_dir_path(name, f'{digest}.json')
    t_steps = None
    if dist.get_rank() == 0:
        t_steps = _read_cached(cache_path, search) if os.path.exists(cache_path) else None
        if t_steps is not None:
            print(f'Reusing the {name.upper()} schedule cached in {cache_path}')
        else:
            if os.path.exists(cache_path):
                print(f'Ignoring the invalid cache file {cache_path}')
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

    return cached_search('gits', search, compute), search


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

    def compute():
        latents, class_labels, _ = generation.draw_inputs(net, list(range(opts['num_warmup'])), device,
                                                          opts.get('class_idx'))  # seeds 0..num_warmup-1
        print(f'Learning a schedule with {opts["num_warmup"]} warm-up trajectories...')
        with torch.no_grad():
            return learn_schedule(net, kwargs['num_steps'], latents, class_labels, solver=kwargs['solver'],
                                  sigma_min=search['sigma_min'], sigma_max=search['sigma_max'], afs=kwargs['afs'],
                                  denoise_to_zero=kwargs['denoise_to_zero'], **student_options)

    return cached_search('learned', search, compute), search


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


__all__ = ['OptionError', 'describe_rule', 'choose_sampler', 'check_sampler', 'describe_nfe', 'make_sampler_fn',
           'network_fingerprint', 'cached_search', 'gits_search', 'learned_search', 'search_schedule',
           'write_json']
