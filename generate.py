"""Generate images with a trained diffusion model (EDM and fast ODE samplers).

Which sampler runs is decided by one rule, so every published command line keeps its meaning:
  (a) any of --disc/--schedule/--scaling  -> EDM's ablation sampler (--solver euler|heun, --steps);
  (b) else no --solver, or --solver=edm     -> EDM Algorithm 2 (Heun with churn; --steps, --S_* options);
  (c) else the named fast solver            -> --num_steps timestamps (the GITS toolbox's meaning).
"""

import json
import os

import click
import torch

import dnnlib
from dnnlib.cli import BoolType, FloatListType, IntListType, bool_option, unsupported_option
from samplers import generation
from torch_utils import distributed as dist

FAST_SOLVERS = ('euler', 'heun', 'dpm', 'dpmpp', 'ipndm', 'ipndm_v', 'deis', 'unipc')

# ----------------------------------------------------------------------------


def _describe_rule():
    return ('Sampler rule: (a) any of --disc/--schedule/--scaling selects EDM\'s ablation sampler (--solver '
            'euler|heun, --steps); (b) otherwise no --solver or --solver=edm runs EDM Algorithm 2 (--steps, '
            '--S_churn/--S_min/--S_max/--S_noise); (c) otherwise the named solver runs with --num_steps timestamps '
            '(no trailing zero).')


def choose_sampler(opts):
    """Apply the sampler rule to the parsed options. Returns (kind, sampler_kwargs); raises click.UsageError."""
    solver = opts.get('solver')
    ablation_keys = [k for k in ('disc', 'schedule', 'scaling') if opts.get(k) is not None]
    fast_only = ['num_steps', 'schedule_type', 'schedule_rho', 'max_order', 'afs', 'denoise_to_zero', 'predict_x0',
                 'lower_order_final', 'variant', 'deis_mode', 't_steps', 'dp']
    churn = {k: opts[k] for k in ('S_churn', 'S_min', 'S_max', 'S_noise') if opts.get(k) is not None}
    steps = opts.get('steps')
    rho = 7 if opts.get('rho') is None else opts['rho']

    if ablation_keys:
        if solver not in (None, 'euler', 'heun'):
            raise click.UsageError(f'--solver={solver} cannot be combined with --disc/--schedule/--scaling '
                                   '(EDM\'s ablation sampler takes --solver=euler or heun)')
        _refuse(opts, fast_only, 'EDM\'s ablation sampler (selected by --disc/--schedule/--scaling)')
        kwargs = dict(solver=solver or 'heun', num_steps=18 if steps is None else steps, rho=rho, **churn)
        for src, dst in (('disc', 'discretization'), ('schedule', 'schedule'), ('scaling', 'scaling')):
            if opts.get(src) is not None:
                kwargs[dst] = opts[src]
        _copy_sigmas(opts, kwargs)
        return 'ablation', kwargs

    if solver in (None, 'edm'):
        _refuse(opts, fast_only, 'EDM\'s sampler (no --solver or --solver=edm); name a fast --solver to use them')
        kwargs = dict(num_steps=18 if steps is None else steps, rho=rho, **churn)
        _copy_sigmas(opts, kwargs)
        return 'edm', kwargs

    if steps is not None:
        raise click.UsageError(f'--steps is EDM\'s step count; --solver={solver} takes --num_steps, the number of '
                               'timestamps without the final zero (or use --solver=edm for EDM\'s sampler)')
    if opts.get('rho') is not None:
        raise click.UsageError(f'--rho is EDM\'s time step exponent; --solver={solver} takes --schedule_rho')
    if churn:
        raise click.UsageError(f'{", ".join("--" + k for k in churn)} only apply to EDM\'s sampler; '
                               f'--solver={solver} is deterministic')
    kwargs = dict(solver=solver, schedule_type=opts.get('schedule_type') or 'polynomial',
                  schedule_rho=7 if opts.get('schedule_rho') is None else opts['schedule_rho'],
                  afs=opts['afs'], denoise_to_zero=opts['denoise_to_zero'])
    import samplers
    accepted = samplers.solver_defaults(solver)
    ignored = []
    for key in ('max_order', 'predict_x0', 'lower_order_final', 'variant', 'deis_mode'):
        if opts.get(key) is not None:
            if key in accepted:
                kwargs[key] = opts[key]
            else:
                ignored.append(f'--{key}')
    if ignored:  # The GITS toolbox passes every option to every solver; keep its command lines working.
        dist.print0(f'Note: {", ".join(ignored)} not used by --solver={solver}; ignored.')
    _copy_sigmas(opts, kwargs)
    if opts.get('t_steps') is not None:
        t_steps = opts['t_steps']
        if len(t_steps) < 2 or any(a <= b for a, b in zip(t_steps[:-1], t_steps[1:])) or t_steps[-1] <= 0:
            raise click.BadParameter('must be at least two strictly decreasing positive noise levels',
                                     param_hint='--t_steps')
        if opts.get('dp'):
            dist.print0('Note: --t_steps given, so the GITS search (--dp) is skipped.')
        kwargs['t_steps'] = t_steps
    else:
        kwargs['num_steps'] = 7 if opts.get('num_steps') is None else opts['num_steps']
        if kwargs['num_steps'] < 2:
            raise click.BadParameter('needs at least 2 timestamps', param_hint='--num_steps')
    return 'fast', kwargs


def _refuse(opts, keys, what):
    given = [k for k in keys if opts.get(k) not in (None, False)]
    if given:
        raise click.UsageError(f'{", ".join("--" + k for k in given)} only apply to the fast solvers '
                               f'(--solver={"|".join(FAST_SOLVERS)}), not to {what}')


def _copy_sigmas(opts, kwargs):
    for key in ('sigma_min', 'sigma_max'):
        if opts.get(key) is not None:
            kwargs[key] = opts[key]


def make_sampler_fn(kind, kwargs):
    """A callable (net, latents, class_labels, randn_like) -> images for the chosen sampler."""
    from samplers import edm as edm_samplers
    if kind == 'edm':
        return lambda net, x, c, randn_like: edm_samplers.edm_sampler(net, x, c, randn_like=randn_like, **kwargs)
    if kind == 'ablation':
        return lambda net, x, c, randn_like: edm_samplers.ablation_sampler(net, x, c, randn_like=randn_like, **kwargs)
    import samplers
    return lambda net, x, c, randn_like: samplers.sample(net, x, c, randn_like=randn_like, **kwargs)


def describe_nfe(kind, kwargs):
    if kind == 'edm' or (kind == 'ablation' and kwargs['solver'] == 'heun'):
        return 2 * kwargs['num_steps'] - 1
    if kind == 'ablation':
        return kwargs['num_steps']
    import samplers
    options = {k: v for k, v in kwargs.items() if k not in ('solver', 'num_steps', 't_steps', 'sigma_min', 'sigma_max',
                                                          'schedule_type', 'schedule_rho')}
    num_steps = len(kwargs['t_steps']) if 't_steps' in kwargs else kwargs['num_steps']
    return samplers.solver_nfe(kwargs['solver'], num_steps, **options)

# ----------------------------------------------------------------------------
# GITS schedule search (cached).


def gits_search(net, network_key, kwargs, opts, device):
    """Run (or reuse from the cache) the GITS dynamic-programming schedule search; returns the noise levels."""
    import hashlib
    import samplers
    search = dict(network=_network_fingerprint(network_key), num_steps=kwargs['num_steps'], solver_tea=opts['solver_tea'],
                  num_steps_tea=opts['num_steps_tea'], metric=opts['metric'], coeff=opts['coeff'],
                  num_warmup=opts['num_warmup'], schedule_type=kwargs['schedule_type'],
                  schedule_rho=kwargs['schedule_rho'], sigma_min=opts.get('sigma_min') or 0.002,
                  sigma_max=opts.get('sigma_max') or 80, afs=kwargs['afs'], solver=kwargs['solver'],
                  class_idx=opts.get('class_idx'))
    # The teacher keeps its own default options; the student's (used by the AFS search) are part of the key.
    student_options = {k: kwargs[k] for k in ('max_order', 'predict_x0', 'lower_order_final', 'variant', 'deis_mode')
                       if k in kwargs}
    search.update(student_options)
    digest = hashlib.sha256(json.dumps(search, sort_keys=True).encode()).hexdigest()[:20]
    cache_path = dnnlib.make_cache_dir_path('gits', f'{digest}.json')
    t_steps = None
    if dist.get_rank() == 0:
        if os.path.isfile(cache_path):
            with open(cache_path) as f:
                t_steps = json.load(f)['t_steps']
            print(f'Reusing the GITS schedule cached in {cache_path}')
        else:
            # Warm-up latents come from the per-seed generators of seeds 0..num_warmup-1, so the search is
            # deterministic and can be cached.
            warmup_seeds = list(range(opts['num_warmup']))
            latents, class_labels, _ = generation.draw_inputs(net, warmup_seeds, device, opts.get('class_idx'))
            print(f'Searching a GITS schedule with {len(warmup_seeds)} warm-up trajectories...')
            with torch.no_grad():
                result = samplers.gits_schedule(
                    net, kwargs['num_steps'], latents, class_labels, solver_tea=opts['solver_tea'],
                    num_steps_tea=opts['num_steps_tea'], metric=opts['metric'], coeff=opts['coeff'],
                    sigma_min=search['sigma_min'], sigma_max=search['sigma_max'],
                    schedule_type=kwargs['schedule_type'], schedule_rho=kwargs['schedule_rho'], afs=kwargs['afs'],
                    solver=kwargs['solver'], solver_options=student_options)
            t_steps = [float(t) for t in torch.as_tensor(result).flatten().tolist()]
            _write_json(cache_path, dict(search=search, t_steps=t_steps))
    t_steps = dist.broadcast_object(t_steps)
    return t_steps, search


def _network_fingerprint(network):
    """Identify a checkpoint for the GITS cache: a local file by path, size and modification time."""
    path = dnnlib.util.file_url_to_path(network) if network.lower().startswith('file://') else network
    if os.path.isfile(path):
        stat = os.stat(path)
        return f'{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}'
    return network


def _write_json(path, obj):
    with dnnlib.util.atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)

# ----------------------------------------------------------------------------


def load_net(network, trust_pickle, device):
    """Load the `ema` network of a checkpoint, with one-line errors."""
    import pickle
    from torch_utils import persistence
    try:
        data = persistence.load_network(network, trust_pickle=trust_pickle)
    except FileNotFoundError as e:
        raise click.BadParameter(str(e), param_hint='--network')
    except (pickle.UnpicklingError, dnnlib.util.DownloadError, EOFError, ValueError, OSError) as e:
        raise click.ClickException(f'cannot load network {network}: {e}')
    return data['ema'].eval().requires_grad_(False).to(device)


def check_outdir(outdir):
    try:
        os.makedirs(outdir, exist_ok=True)
        probe = os.path.join(outdir, f'.write-test-{os.getpid()}')
        with open(probe, 'wb'):
            pass
        os.remove(probe)
    except OSError as e:
        raise click.BadParameter(f'cannot write to {outdir}: {e.strerror or e}', param_hint='--outdir')


@click.command(epilog=_describe_rule())
@click.option('--network', 'network', help='Network pickle filename or URL', metavar='PATH|URL', required=True)
@click.option('--outdir', help='Where to save the output images', metavar='DIR', required=True)
@click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=IntListType(), default='0-63',
              show_default=True)
@bool_option('--subdirs', help='Create subdirectory for every 1000 seeds')
@click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT',
              type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Maximum batch size per process', metavar='INT',
              type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='STR', default=None)
@bool_option('--grid', help='Also save the images as one grid PNG next to the folder (OUTDIR-grid.png)')
@bool_option('--trust-pickle', 'trust_pickle',
             help='Allow legacy unpickling, which runs code embedded in the checkpoint (trusted files only)')
# EDM sampler (Algorithm 2) and ablation sampler.
@click.option('--steps', 'steps', help='EDM: number of noise levels (NFE = 2*steps-1)  [default: 18]',
              metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--sigma_min', help='Lowest noise level  [default: 0.002, clipped to the net]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--sigma_max', help='Highest noise level  [default: 80, clipped to the net]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--rho', help='EDM: time step exponent  [default: 7]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--S_churn', 'S_churn', help='EDM: stochasticity strength  [default: 0]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_min', 'S_min', help='EDM: stoch. min noise level  [default: 0]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_max', 'S_max', help='EDM: stoch. max noise level  [default: inf]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_noise', 'S_noise', help='EDM: stoch. noise inflation  [default: 1]', metavar='FLOAT',
              type=float, default=None)
@click.option('--solver', help='edm (default), EDM ablation euler|heun, or a fast solver',
              type=click.Choice(('edm',) + FAST_SOLVERS), default=None)
@click.option('--disc', help='Ablation: time step discretization', type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule', help='Ablation: noise schedule sigma(t)', type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling', help='Ablation: signal scaling s(t)', type=click.Choice(['vp', 'none']))
# Fast solvers (GITS toolbox).
@click.option('--num_steps', help='Fast solvers: number of timestamps (NFE = num_steps-1 for one-stage '
              'solvers)  [default: 7]', metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--schedule_type', help='Fast solvers: time schedule  [default: polynomial]',
              type=click.Choice(['polynomial', 'logsnr', 'time_uniform', 'discrete']), default=None)
@click.option('--schedule_rho', help='Fast solvers: schedule exponent  [default: 7]', metavar='FLOAT', type=float,
              default=None)
@click.option('--max_order', help='Fast solvers: multistep order (1-4; 1-3 for dpmpp/unipc)  [default: solver\'s]',
              metavar='INT', type=click.IntRange(1, 4), default=None)
@bool_option('--afs', help='Fast solvers: analytical first step (saves one NFE)')
@bool_option('--denoise_to_zero', help='Fast solvers: final denoising step (one more NFE)')
@click.option('--predict_x0', help='dpmpp/unipc: data prediction (with thresholding)  [default: True]',
              type=BoolType(), default=None, is_flag=False, flag_value=True)
@click.option('--lower_order_final', help='dpmpp/unipc: lower order at the last steps  [default: True]',
              type=BoolType(), default=None, is_flag=False, flag_value=True)
@click.option('--variant', help='unipc: B(h) variant  [default: bh2]', type=click.Choice(['bh1', 'bh2']),
              default=None)
@click.option('--deis_mode', help='deis: coefficients  [default: tab]', type=click.Choice(['tab', 'rhoab']),
              default=None)
@click.option('--t_steps', help='Fast solvers: explicit schedule, e.g. [80,10.9836,3.8811,1.584,0.5666,0.1698,0.002]',
              metavar='LIST', type=FloatListType(), default=None)
# GITS schedule search.
@bool_option('--dp', help='GITS: search the time schedule by dynamic programming')
@click.option('--metric', help='GITS: cost metric', type=click.Choice(['dev', 'l1', 'l2']), default='dev',
              show_default=True)
@click.option('--coeff', help='GITS: cost coefficient gamma', metavar='FLOAT', type=float, default=1.15,
              show_default=True)
@click.option('--num_warmup', help='GITS: warm-up trajectories', metavar='INT', type=click.IntRange(min=1),
              default=256, show_default=True)
@click.option('--solver_tea', help='GITS: teacher solver', type=click.Choice(
    ['euler', 'heun', 'dpm', 'dpmpp', 'ipndm', 'ipndm_v', 'deis']), default='ipndm', show_default=True)
@click.option('--num_steps_tea', help='GITS: teacher timestamps (fine grid)', metavar='INT',
              type=click.IntRange(min=3), default=61, show_default=True)
@unsupported_option('--randn_like', 'the Ito-Taylor SDE sampler is not part of this version yet')
@unsupported_option('--pfgmpp', 'PFGM++ sampling is not part of this version yet')
@unsupported_option('--aug_dim', 'PFGM++ sampling is not part of this version yet')
def main(network, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_pickle, **opts):
    """Generate images with a diffusion model.

    \b
    Examples:
    # 64 images from an official EDM model (EDM Algorithm 2, 18 steps)
    python generate.py --outdir=out --seeds=0-63 --batch=64 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    \b
    # iPNDM with a GITS-searched schedule (NFE 6)
    python generate.py --outdir=out --network=net.pkl --solver=ipndm --num_steps=7 --dp=True
    \b
    # Two processes
    torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-999 --network=net.pkl
    """
    opts['class_idx'] = class_idx
    kind, sampler_kwargs = choose_sampler(opts)
    try:
        device = dist.init(device)
    except RuntimeError as e:
        raise click.BadParameter(str(e), param_hint='--device')
    check_outdir(outdir)
    net = load_net(network, trust_pickle, device)
    if class_idx is not None:
        if not net.label_dim:
            raise click.BadParameter('the network is unconditional (no class labels)', param_hint='--class')
        if class_idx >= net.label_dim:
            raise click.BadParameter(f'{class_idx} is out of range: the network has {net.label_dim} classes '
                                     f'(0-{net.label_dim - 1})', param_hint='--class')

    if kind == 'fast' and opts.get('dp') and 't_steps' not in sampler_kwargs:
        t_steps, search = gits_search(net, network, sampler_kwargs, opts, device)
        dist.print0('GITS time schedule: [' + ', '.join(f'{t:.4f}' for t in t_steps) + ']')
        dist.print0('Reuse it with --t_steps=[' + ','.join(f'{t:g}' for t in t_steps) + ']')
        if dist.get_rank() == 0:
            _write_json(os.path.join(outdir, 'gits_schedule.json'), dict(search=search, t_steps=t_steps))
        sampler_kwargs.pop('num_steps', None)
        sampler_kwargs['t_steps'] = t_steps

    nfe = describe_nfe(kind, sampler_kwargs)
    dist.print0(f'Sampler: {kind} {json.dumps(sampler_kwargs)}' + (f'; NFE = {nfe}' if nfe is not None else ''))
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    sampler_fn = make_sampler_fn(kind, sampler_kwargs)
    try:
        generation.generate_images(net, seeds, outdir, sampler_fn, max_batch_size=max_batch_size,
                                   class_idx=class_idx, subdirs=subdirs, device=device)
    except (ValueError, TypeError) as e:  # Invalid sampler settings detected by the library (one line).
        raise click.ClickException(str(e))
    if grid and dist.get_rank() == 0:
        dist.print0(f'Saved grid to {generation.save_grid(outdir, seeds, subdirs)}')
    dist.barrier()
    dist.print0('Done.')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
