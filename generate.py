"""Generate images with a trained diffusion model (EDM, fast ODE samplers, Itô–Taylor SDE sampler, CLD with gDDIM).

Which sampler runs is decided by one rule, so every published command line keeps its meaning:
  (a) any of --disc/--schedule/--scaling  -> EDM's ablation sampler (--solver euler|heun, --steps);
  (b) else no --solver, or --solver=edm     -> EDM Algorithm 2 (Heun with churn; --steps, --S_* options);
      --randn_like=ddb or --solver=itotaylor -> the Itô–Taylor SDE sampler on EDM's schedule (docs/itotaylor.md);
  (c) else the named fast solver            -> --num_steps timestamps (the GITS toolbox's meaning);
  (d) CLD networks                          -> gddim (default, NFE 50) or --solver=cld_em (samplers/selection.py).

Without --network, --outdir is a training run directory and every checkpoint in --ckpt..--end_ckpt is sampled
into its ckpt_* folders (samplers.sweeps); PFGM++ networks start from their prior (samplers.pfgmpp).
"""

import json
import os

import click
import numpy as np

import dnnlib
import samplers
from dnnlib.cli import BoolType, Command, FloatListType, IntListType, bool_option, check_output_path
from samplers import generation, pfgmpp, selection, sweeps
from samplers.itotaylor import LAPLACIAN_METHODS
from torch_utils import distributed as dist
from torch_utils import persistence
from torch_utils import precision as fast

ODE_SOLVERS = tuple(samplers.solver_names(kind='ode'))
TEACHERS = tuple(samplers.solver_names(kind='ode', teacher=True))
MAX_ORDER = max(spec.max_order or 1 for spec in samplers.SOLVERS.values())


def _max_order_help():
    lower = {}
    for spec in samplers.SOLVERS.values():
        if spec.max_order is not None and spec.max_order < MAX_ORDER:
            lower.setdefault(spec.max_order, []).append(spec.name)
    ranges = ''.join(f'; 1-{k} for {"/".join(names)}' for k, names in sorted(lower.items()))
    return f'Fast solvers and gddim: multistep order (1-{MAX_ORDER}{ranges})  [default: solver\'s]'


def _one_line(check, *args, **kwargs):
    """Run a `samplers.selection` check with click's one-line errors."""
    try:
        return check(*args, **kwargs)
    except selection.OptionError as e:
        if e.param:
            raise click.BadParameter(str(e), param_hint=f'--{e.param}') from None
        raise click.UsageError(str(e)) from None


def choose_sampler(opts, family='denoiser'):
    """The sampler rule (`samplers.selection.choose_sampler`) for a network of `family`, with one-line errors."""
    return _one_line(selection.choose_sampler, opts, note=dist.print0, family=family)

# ----------------------------------------------------------------------------


def load_net(network, trust_pickle, device, skip_without_network=False):
    """Load the `ema` network of a checkpoint, with one-line errors (None for a file without a network, if
    `skip_without_network`: PFGM++ rewrites training-state-000000.pt with the raw network only)."""
    try:
        data = persistence.load_network(network, trust_pickle=trust_pickle)
    except persistence.NotANetworkError as e:
        if skip_without_network:
            dist.print0(f'Skipping: {e}')
            return None
        raise click.BadParameter(f'cannot load network: {e}', param_hint='--network')
    except dnnlib.util.InputError as e:
        raise click.BadParameter(f'cannot load network: {e}', param_hint='--network')
    net = data['ema'].eval().requires_grad_(False).to(device)
    del data
    fast.release_memory()  # Hand the loader's transient copy back to the OS before sampling starts.
    return net


def make_prior(net, opts):
    """PFGM++'s prior for --pfgmpp/--aug_dim and the network's recorded D (None: EDM's Gaussian prior)."""
    try:
        D = pfgmpp.resolve_aug_dim(net, opts['pfgmpp'], opts['aug_dim'])
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if D is not None:
        dist.print0(f'PFGM++ prior with D = {D}')
    return None if D is None else pfgmpp.student_t_prior(D)


def check_outdir(outdir):
    """Create `outdir` (one line if it cannot be made)."""
    check_output_path(outdir, '--outdir')
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(f'cannot create {outdir} ({e.strerror or e})', param_hint='--outdir')


def resolve_model(network, dataset_name, outdir, grid):
    """(network, outdir or None): --dataset_name picks an official checkpoint and, without --outdir, the GITS
    toolbox's output folder (its solver/NFE part is added once the sampler is known). Without either --network or
    --dataset_name, --outdir is a training run directory whose checkpoints are sampled (network None)."""
    if dataset_name is None:
        if network is None and outdir is None:
            raise click.UsageError('Missing option \'--network\' (or name a model with --dataset_name, or a training '
                                   'run directory with --outdir)')
        if outdir is None:
            raise click.UsageError('Missing option \'--outdir\'')
        return network, outdir
    if network is not None:
        raise click.UsageError('--network and --dataset_name both name the model; give one of them')
    try:
        network = selection.toolbox_network(dataset_name)
    except selection.OptionError as e:
        raise click.BadParameter(str(e), param_hint='--dataset_name') from None
    if outdir is None:
        check_output_path(selection.toolbox_outdir(dataset_name, grid), '--outdir')
    return network, outdir


@click.command(cls=Command, epilog=selection.describe_rule())
@click.option('--network', 'network', help='Network pickle filename or URL  [default: every checkpoint of --outdir]',
              metavar='PATH|URL')
@click.option('--dataset_name', help='GITS toolbox model name instead of --network: '
              f'{"|".join(selection.TOOLBOX_MODELS)} (official EDM checkpoints)', metavar='NAME')
@click.option('--outdir', help='Where to save the output images (the run directory without --network)  [default '
              'with --dataset_name: samples/NAME/SOLVER_nfeNFE, under samples/grids/ with --grid]', metavar='DIR')
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
# Speed (torch_utils/precision.py).
@click.option('--precision', help='Network precision: fp32, or autocast to bf16 (CPU, CUDA) or fp16 (CUDA)',
              type=click.Choice(list(fast.PRECISIONS)), default='fp32', show_default=True)
@bool_option('--compile', 'compile_net', help='torch.compile the network (the first batch compiles)')
@bool_option('--tf32', help='Allow TF32 matrix products and convolutions on CUDA')
# EDM sampler (Algorithm 2) and ablation sampler.
@click.option('--steps', 'steps', help='EDM and SDE samplers: number of noise levels (NFE = 2*steps-1)  '
              '[default: 18]',
              metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--sigma_min', help='Lowest noise level  [default: 0.002, clipped to the net]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--sigma_max', help='Highest noise level  [default: 80, clipped to the net]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--rho', help='EDM: time step exponent  [default: 7]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--S_churn', 'S_churn', help='EDM: stochasticity strength  [default: 0]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_min', 'S_min', help='EDM and SDE samplers: stoch. min noise level  [default: 0]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_max', 'S_max', help='EDM and SDE samplers: stoch. max noise level  [default: inf]', metavar='FLOAT',
              type=click.FloatRange(min=0), default=None)
@click.option('--S_noise', 'S_noise', help='EDM: stoch. noise inflation  [default: 1]', metavar='FLOAT',
              type=float, default=None)
@click.option('--solver', help='edm (default), EDM ablation euler|heun, a fast solver, the SDE samplers '
              'itotaylor|edm_em, or for CLD networks gddim (their default) or cld_em',
              type=click.Choice(samplers.solver_names()), default=None)
@click.option('--disc', help='Ablation: time step discretization', type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule', help='Ablation: noise schedule sigma(t)', type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling', help='Ablation: signal scaling s(t)', type=click.Choice(['vp', 'none']))
# Fast solvers (GITS toolbox).
@click.option('--num_steps', help='Fast solvers and CLD: number of timestamps (NFE = num_steps-1 for one-stage '
              'solvers, num_steps for gddim|cld_em)  [default: 7; CLD: 50]', metavar='INT', type=click.IntRange(min=2),
              default=None)
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
# SDE samplers.
@click.option('--langevin', help='Langevin strength of the SDE samplers: 0 = probability-flow ODE, 1 = reverse SDE  '
              '[default: solver\'s]', metavar='FLOAT', type=click.FloatRange(min=0), default=None)
@click.option('--randn_like', help='Noise drawn per step: db = Gaussian (EDM), ddb = (dW, dZ) pairs of the Ito-Taylor '
              f'sampler (selects --solver=itotaylor)  [default: {selection.DEFAULT_RANDN_LIKE}]',
              type=click.Choice(list(selection.RANDN_LIKE)), default=None)
@click.option('--laplacian', help='itotaylor: Laplacian estimate of the weak-order-2 term  [default: hutchinson]',
              type=click.Choice(list(LAPLACIAN_METHODS)), default=None)
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
# PFGM++, checkpoint and robustness sweeps (docs/fdm_pfgmpp.md).
@click.option('--pfgmpp', help='PFGM++: prior at r_max = sigma_max sqrt(D)  [default: the network\'s]',
              type=BoolType(), default=None, is_flag=False, flag_value=True)
@click.option('--aug_dim', help='PFGM++: augmented dimension D  [default: the network\'s]', metavar='INT',
              type=click.IntRange(min=1), default=None)
@click.option('--ckpt', help='Run directory: first checkpoint', metavar='KIMG', type=click.IntRange(min=0), default=0,
              show_default=True)
@click.option('--end_ckpt', help='Run directory: last checkpoint', metavar='KIMG', type=click.IntRange(min=0),
              default=100000000, show_default=True)
@bool_option('--use_pickle', help='Run directory: PFGM++ training-state-*.pkl instead of *.pt')
@bool_option('--save_images', help='Only save the first batch\'s sampling trajectory as an animated GIF')
@click.option('--alpha', help='Robustness: noise injection strengths (folders *_alpha_A)', metavar='LIST',
              type=FloatListType(), default=None)
@click.option('--steps_sweep', help='Robustness: step counts (folders *_steps_N)', metavar='LIST',
              type=IntListType(), default=None)
@click.option('--quant_bits', help='Robustness: weight quantisation bits (folders *_quant_B)', metavar='LIST',
              type=IntListType(), default=None)
def main(network, dataset_name, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_pickle,
         precision, compile_net, tf32, **opts):
    """Generate images with a diffusion model.

    \b
    Examples:
    # 64 images from an official EDM model (EDM Algorithm 2, 18 steps)
    python generate.py --outdir=out --seeds=0-63 --batch=64 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    \b
    # The same in bfloat16 (autocast; faster on CPUs with AVX512-BF16 or AMX and on GPUs)
    python generate.py --outdir=out --seeds=0-63 --precision=bf16 --network=net.pkl
    \b
    # Ito-Taylor SDE sampler (2nd-SED), 84 noise levels, rho = 3
    python generate.py --outdir=out --network=net.pkl --steps=84 --randn_like=ddb --rho=3
    \b
    # iPNDM with a GITS-searched schedule (NFE 6)
    python generate.py --outdir=out --network=net.pkl --solver=ipndm --num_steps=7 --dp=True
    \b
    # iPNDM with AFS and a schedule learned for it (NFE 5), saved as learned_schedule.json
    python generate.py --outdir=out --network=net.pkl --solver=ipndm --num_steps=7 --afs=True \\
        --schedule_type=learned
    \b
    # The GITS toolbox's command lines (sample.py -> generate.py)
    python generate.py --dataset_name=cifar10 --batch=64 --seeds=0-63 \\
        --grid=True --solver=ipndm --num_steps=7 --max_order=4 --dp=True
    \b
    # Two processes
    torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-999 --network=net.pkl
    \b
    # Every checkpoint of a training run (PFGM++ with D = 2048) into its ckpt_* folders
    python generate.py --seeds=0-49999 --outdir=training-runs/exp_name --pfgmpp=1 --aug_dim=2048
    """
    opts['class_idx'] = class_idx
    _one_line(selection.precheck, opts)  # Before any work; the network's family decides the rest once loaded.
    network, outdir = resolve_model(network, dataset_name, outdir, grid)
    if outdir is not None:
        check_output_path(outdir, '--outdir')
    try:
        device = dist.init(device)
    except RuntimeError as e:
        raise click.BadParameter(str(e), param_hint='--device')
    speed = dict(precision=precision, compile=compile_net, tf32=tf32)
    try:
        _generate(network, dataset_name, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid,
                  trust_pickle, opts, speed)
    finally:
        dist.shutdown()


def _generate(network, dataset_name, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_pickle,
              opts, speed):
    try:
        note = fast.check(speed['precision'], device)
    except fast.PrecisionError as e:
        raise click.BadParameter(str(e), param_hint='--precision')
    if note:
        dist.print0(f'Warning: {note}.')
    if outdir is not None:
        check_outdir(outdir)
    if network is not None:
        targets = [(None, network)]
    else:
        try:
            targets = sweeps.checkpoints(outdir, opts['ckpt'], opts['end_ckpt'], opts['use_pickle'])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--outdir') from None
        dist.print0(f'{len(targets)} checkpoint(s) of {outdir} in {opts["ckpt"]}..{opts["end_ckpt"]} kimg')
    fast.set_tf32(speed['tf32'])
    for kimg, path in targets:
        net = load_net(path, trust_pickle, device, skip_without_network=kimg is not None)
        if net is not None:
            net = fast.wrap(net, speed['precision'], device, compile=speed['compile'])
            _generate_one(net, path, kimg, dataset_name, outdir, seeds, subdirs, class_idx, max_batch_size, device,
                          grid, opts)
    dist.barrier()
    dist.print0('Done.')


def _generate_one(net, network, kimg, dataset_name, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid,
                  opts):
    if class_idx is not None:
        if not net.label_dim:
            raise click.BadParameter('the network is unconditional (no class labels)', param_hint='--class')
        if class_idx >= net.label_dim:
            raise click.BadParameter(f'{class_idx} is out of range: the network has {net.label_dim} classes '
                                     f'(0-{net.label_dim - 1})', param_hint='--class')
    kind, sampler_kwargs = choose_sampler(opts, selection.net_family(net))
    _one_line(selection.check_sampler, kind, sampler_kwargs)
    _one_line(selection.check_net, kind, sampler_kwargs, net)
    _one_line(sweeps.check_variants, kind, sampler_kwargs,
              sweeps.variants(opts['alpha'], opts['steps_sweep'], opts['quant_bits']))
    prior = make_prior(net, opts)

    sampler_kwargs = dict(sampler_kwargs)
    found = selection.search_schedule(net, network, sampler_kwargs, opts, device) if kind == 'fast' else None
    if found is not None:  # GITS (--dp) or learned (--schedule_type=learned) schedule, searched once and cached
        name, t_steps, search = found
        dist.print0(f'{"GITS" if name == "gits" else "Learned"} time schedule: ['
                    + ', '.join(f'{t:.4f}' for t in t_steps) + ']')
        # The shortest text of each float32 level: the sampler's float32 schedule is reproduced exactly.
        dist.print0('Reuse it with --t_steps=[' + ','.join(f'{np.float32(t)}' for t in t_steps) + ']')
        sampler_kwargs.pop('num_steps', None)
        sampler_kwargs['t_steps'] = t_steps

    nfe = selection.describe_nfe(kind, sampler_kwargs, net)
    cost = selection.describe_cost(kind, sampler_kwargs, net)
    if outdir is None:  # --dataset_name without --outdir: the GITS toolbox's folder.
        solver = sampler_kwargs.get('solver', 'edm')
        outdir = selection.toolbox_outdir(dataset_name, grid, solver, nfe)
        check_outdir(outdir)
    if found is not None and dist.get_rank() == 0:
        selection.write_json(os.path.join(outdir, f'{name}_schedule.json'), dict(search=search, t_steps=t_steps))
    dist.print0(f'Sampler: {kind} {json.dumps(sampler_kwargs)}; NFE = {nfe}' + (f' ({cost})' if cost else ''))
    chosen = sweeps.variants(opts['alpha'], opts['steps_sweep'], opts['quant_bits'])
    single = kimg is None and chosen == [None] and not opts['save_images']
    grid_path = generation.grid_path(outdir) if grid and single else None
    try:
        sweeps.generate(net, seeds, outdir, kind, sampler_kwargs, kimg=kimg, chosen=chosen, prior=prior,
                        subdirs=subdirs, save_gif=opts['save_images'], max_batch_size=max_batch_size,
                        class_idx=class_idx, device=device, grid=grid_path, note=dist.print0)
    except (ValueError, TypeError) as e:  # Invalid sampler settings detected by the library (one line).
        raise click.ClickException(str(e))
    if grid_path is not None:
        dist.print0(f'Saved grid to {grid_path}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
