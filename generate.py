"""Generate images with a trained diffusion model (EDM and fast ODE samplers).

Which sampler runs is decided by one rule, so every published command line keeps its meaning:
  (a) any of --disc/--schedule/--scaling  -> EDM's ablation sampler (--solver euler|heun, --steps);
  (b) else no --solver, or --solver=edm     -> EDM Algorithm 2 (Heun with churn; --steps, --S_* options);
  (c) else the named fast solver            -> --num_steps timestamps (the GITS toolbox's meaning).
"""

import json
import os
import pickle

import click
import numpy as np
import torch

import dnnlib
import samplers
from dnnlib.cli import BoolType, FloatListType, IntListType, bool_option, unsupported_option
from samplers import generation, selection
from torch_utils import distributed as dist
from torch_utils import persistence

ODE_SOLVERS = tuple(samplers.solver_names(kind='ode'))
TEACHERS = tuple(samplers.solver_names(kind='ode', teacher=True))
MAX_ORDER = max(spec.max_order or 1 for spec in samplers.SOLVERS.values())


def _max_order_help():
    lower = {}
    for spec in samplers.SOLVERS.values():
        if spec.max_order is not None and spec.max_order < MAX_ORDER:
            lower.setdefault(spec.max_order, []).append(spec.name)
    ranges = ''.join(f'; 1-{k} for {"/".join(names)}' for k, names in sorted(lower.items()))
    return f'Fast solvers: multistep order (1-{MAX_ORDER}{ranges})  [default: solver\'s]'


def choose_sampler(opts):
    """The sampler rule (`samplers.selection.choose_sampler`) with click's one-line errors."""
    try:
        return selection.choose_sampler(opts, note=dist.print0)
    except selection.OptionError as e:
        if e.param:
            raise click.BadParameter(str(e), param_hint=f'--{e.param}') from None
        raise click.UsageError(str(e)) from None

# ----------------------------------------------------------------------------


def load_net(network, trust_pickle, device):
    """Load the `ema` network of a checkpoint, with one-line errors."""
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


@click.command(epilog=selection.describe_rule())
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
              type=click.Choice(samplers.solver_names()), default=None)
@click.option('--disc', help='Ablation: time step discretization', type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule', help='Ablation: noise schedule sigma(t)', type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling', help='Ablation: signal scaling s(t)', type=click.Choice(['vp', 'none']))
# Fast solvers (GITS toolbox).
@click.option('--num_steps', help='Fast solvers: number of timestamps (NFE = num_steps-1 for one-stage '
              'solvers)  [default: 7]', metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--schedule_type', help='Fast solvers: time schedule (learned: searched for the solver, cached)  '
              '[default: polynomial]', type=click.Choice([*samplers.SCHEDULE_TYPES, 'learned']), default=None)
@click.option('--schedule_rho', help='Fast solvers: schedule exponent  [default: 7]', metavar='FLOAT', type=float,
              default=None)
@click.option('--max_order', help=_max_order_help(), metavar='INT', type=click.IntRange(1, MAX_ORDER), default=None)
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
@click.option('--num_warmup', help='GITS and learned schedules: warm-up trajectories', metavar='INT',
              type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--solver_tea', help='GITS: teacher solver', type=click.Choice(TEACHERS), default='ipndm',
              show_default=True)
@click.option('--num_steps_tea', help='GITS: teacher timestamps (fine grid)', metavar='INT',
              type=click.IntRange(min=3), default=61, show_default=True)
@unsupported_option('--randn_like', 'the Ito-Taylor SDE sampler (docs/design.md, planned model families) is not '
                   'available')
@unsupported_option('--pfgmpp', 'PFGM++ sampling (docs/design.md, planned model families) is not available')
@unsupported_option('--aug_dim', 'PFGM++ sampling (docs/design.md, planned model families) is not available')
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
        selection.check_sampler(kind, sampler_kwargs)
    except selection.OptionError as e:
        raise click.UsageError(str(e)) from None
    try:
        device = dist.init(device)
    except RuntimeError as e:
        raise click.BadParameter(str(e), param_hint='--device')
    try:
        _generate(network, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_pickle, kind,
                  sampler_kwargs, opts)
    finally:
        dist.shutdown()


def _generate(network, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_pickle, kind,
              sampler_kwargs, opts):
    check_outdir(outdir)
    net = load_net(network, trust_pickle, device)
    if class_idx is not None:
        if not net.label_dim:
            raise click.BadParameter('the network is unconditional (no class labels)', param_hint='--class')
        if class_idx >= net.label_dim:
            raise click.BadParameter(f'{class_idx} is out of range: the network has {net.label_dim} classes '
                                     f'(0-{net.label_dim - 1})', param_hint='--class')

    found = selection.search_schedule(net, network, sampler_kwargs, opts, device) if kind == 'fast' else None
    if found is not None:  # GITS (--dp) or learned (--schedule_type=learned) schedule, searched once and cached
        name, t_steps, search = found
        label = 'GITS' if name == 'gits' else 'Learned'
        dist.print0(f'{label} time schedule: [' + ', '.join(f'{t:.4f}' for t in t_steps) + ']')
        # Shortest float32 text of each level: the sampler's float32 schedule is then reproduced exactly.
        dist.print0('Reuse it with --t_steps=[' + ','.join(f'{np.float32(t)}' for t in t_steps) + ']')
        if dist.get_rank() == 0:
            selection.write_json(os.path.join(outdir, f'{name}_schedule.json'), dict(search=search, t_steps=t_steps))
        sampler_kwargs.pop('num_steps', None)
        sampler_kwargs['t_steps'] = t_steps

    nfe = selection.describe_nfe(kind, sampler_kwargs)
    dist.print0(f'Sampler: {kind} {json.dumps(sampler_kwargs)}; NFE = {nfe}')
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    sampler_fn = selection.make_sampler_fn(kind, sampler_kwargs)
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
