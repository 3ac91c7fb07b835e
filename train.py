"""Train a diffusion model (EDM's train.py): parse and check the options, then call training.training_loop."""

import contextlib
import inspect
import json
import os
import secrets

import click

import dnnlib
from dnnlib.cli import (CollectiveError, Command, IntListType, bool_option, check_output_path,
                        unsupported_option)
from torch_utils import distributed as dist
from torch_utils import precision as fast
from training import config, training_loop

# ----------------------------------------------------------------------------


@click.command(cls=Command, context_settings=dict(terminal_width=80, max_content_width=80))
# Main options.
@click.option('--outdir', help='Where to save the results', metavar='DIR', type=str)
@click.option('--data', help='Path to the dataset', metavar='ZIP|DIR', type=str)
@bool_option('--cond', help='Train class-conditional model')
@click.option('--arch', help='Network architecture', type=click.Choice(list(config.ARCHS)), default='ddpmpp',
              show_default=True)
@click.option('--precond', help='Preconditioning & loss function', metavar='vp|ve|edm|fdm_edm|fdm_vp|fdm_ve|cld',
              type=str, default='edm', show_default=True)
# Hyperparameters.
@click.option('--duration', help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True),
              default=200, show_default=True)
@click.option('--batch', help='Total batch size', metavar='INT', type=click.IntRange(min=1), default=512,
              show_default=True)
@click.option('--batch-gpu', help='Limit batch size per GPU', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase', help='Channel multiplier  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cres', help='Channels per resolution  [default: varies]', metavar='LIST',
              type=IntListType(ranges=False, min_value=1))
@click.option('--lr', help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True),
              default=10e-4, show_default=True)
@click.option('--lr-rampup', '--lr_rampup', 'lr_rampup', help='Learning rate ramp-up (0 = none)', metavar='MIMG',
              type=click.FloatRange(min=0), default=10, show_default=True)
@click.option('--ema', help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5,
              show_default=True)
@click.option('--dropout', help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1),
              default=0.13, show_default=True)
@click.option('--augment', help='Augment probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1),
              default=0.12, show_default=True)
@bool_option('--xflip', help='Enable dataset x-flips')
# Performance-related.
@bool_option('--fp16', help='Enable mixed-precision training (CUDA only)')
@click.option('--precision', help='Autocast the network to bf16 (CPU, CUDA) or fp16 (CUDA)',
              type=click.Choice(list(fast.PRECISIONS)), default='fp32', show_default=True)
@bool_option('--compile', 'compile_net', help='torch.compile the network')
@bool_option('--tf32', help='Allow TF32 on CUDA')
@click.option('--ls', help='Loss scaling', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1,
              show_default=True)
@bool_option('--bench', help='Enable cuDNN benchmarking', default=True)
@bool_option('--cache', help='Cache dataset in CPU memory', default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=1,
              show_default=True)
@click.option('--device', help='Device  [default: cuda if available, else cpu]', type=click.Choice(['cpu', 'cuda']))
@bool_option('--per-sample-rng', 'per_sample_rng',
             help='Seed each sample\'s noise and augmentation by its data position (results independent of '
             '--batch-gpu and the number of processes; slower)')
# I/O-related.
@click.option('--desc', help='String to include in result dir name', metavar='STR', type=str)
@click.option('--name', help='Run directory name (instead of the numbered one)', metavar='STR', type=str)
@bool_option('--nosubdir', help='Do not create a subdirectory for results')
@click.option('--tick', help='How often to print progress', metavar='KIMG', type=click.FloatRange(min=0, min_open=True),
              default=50, show_default=True)
@click.option('--snap', help='How often to save snapshots', metavar='TICKS', type=click.IntRange(min=1), default=50,
              show_default=True)
@click.option('--dump', help='How often to dump state', metavar='TICKS', type=click.IntRange(min=1), default=500,
              show_default=True)
@click.option('--seed', help='Random seed  [default: random]', metavar='INT', type=click.IntRange(min=0))
@click.option('--transfer', '--pretrain', 'transfer', help='Transfer learning from network pickle', metavar='PKL|URL',
              type=str)
@click.option('--resume', help='Resume from previous training state', metavar='PT', type=str)
@bool_option('--trust-pickle', 'trust_pickle',
             help='Allow legacy unpickling of --transfer, which runs code embedded in it (trusted files only)')
@click.option('--snapshot-format', 'snapshot_format', help='Network snapshots as EDM pickles or safetensors',
              type=click.Choice(['pickle', 'safetensors']), default='pickle', show_default=True)
@bool_option('-n', '--dry-run', 'dry_run', help='Print training options and exit')
# FDM (Wu et al. 2023) and PFGM++ (Xu et al. 2023); see docs/fdm_pfgmpp.md.
@click.option('--warmup_ite', help='FDM: loss-weight warm-up length (0 = none)', metavar='STEPS',
              type=click.FloatRange(min=0))
@click.option('--fdm_multiplier', '--fdm_multipler', 'fdm_multiplier', help='FDM: momentum multiplier m  [default: 2]',
              metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@bool_option('--pfgmpp', help='PFGM++: perturbation kernel in N + D dimensions (--precond=edm|ve)')
@click.option('--aug_dim', help='PFGM++: augmented dimension D  [default: 128]', metavar='INT',
              type=click.IntRange(min=2))
@bool_option('--stf', help='PFGM++: stable target field (--precond=edm)')
@click.option('--rbatch', help='PFGM++: reference images per process for --stf  [default: 4096]', metavar='INT',
              type=click.IntRange(min=1))
# Options of published research command lines that are not implemented.
@unsupported_option('--dm_length', 'a research option whose meaning was never published (use --precond=vp|ve|edm '
                    'without it)')
def main(**opts):
    """Train diffusion-based generative model using the techniques described in the
    paper "Elucidating the Design Space of Diffusion-Based Generative Models".

    \b
    Examples:

    \b
    # Train DDPM++ model for class-conditional CIFAR-10 using 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp

    \b
    # The bundled demo: a small class-conditional model of 16x16 digits on the CPU
    python train.py --outdir=training-runs --data=datasets/digits-16x16.zip --cond=1 ...
    (the exact command is in checkpoints/README.md)
    """
    opts = dnnlib.EasyDict(opts)
    for key in ('outdir', 'data'):
        if opts[key] is None:
            raise click.UsageError(f'--{key} is required')
    check_output_path(opts.outdir, '--outdir')
    try:
        _train(opts)
    finally:
        dist.shutdown()  # On every exit path (dry run, errors): a process that exits in the group can abort.


def _train(opts):
    """Join the process group, check the options, print them and run the training loop (or stop at --dry-run)."""
    try:
        device = dist.init(opts.device)
    except RuntimeError as e:
        raise click.ClickException(str(e))
    if opts.fp16 and device.type != 'cuda':
        dist.print0('Note: --fp16 only takes effect on CUDA; this run computes in float32.')
    try:
        note = fast.check(opts.precision, device)
    except fast.PrecisionError as e:
        raise click.BadParameter(str(e), param_hint='--precision')
    if note:
        dist.print0(f'Warning: {note}.')
    for key, needs in (('aug_dim', 'pfgmpp'), ('rbatch', 'stf')):
        if opts[key] is not None and not opts[needs]:
            dist.print0(f'Note: --{key} is used only with --{needs}=1; ignored.')

    # Options -> training_loop arguments; every mistake is one line.
    try:
        build_args = inspect.signature(config.build).parameters
        c = config.build(**{k: v for k, v in opts.items() if k in build_args}, world_size=dist.get_world_size())
        resume_state = training_loop.load_training_state(opts.resume) if opts.resume else None
        if resume_state is not None:
            c.seed = int(resume_state['seed'])      # The resumed run continues the saved data order and noise.
        elif c.seed is None:
            c.seed = dist.broadcast_object(secrets.randbelow(1 << 31))
        dataset_name = config.check_dataset(c)
        transfer_net = training_loop.load_transfer(opts.transfer, c, opts.trust_pickle) if opts.transfer else None
        if resume_state is not None:
            training_loop.check_resume(resume_state, c, path=f'--resume={opts.resume}')
        desc = config.run_desc(dataset_name, opts.cond, opts.arch, opts.precond, dist.get_world_size(), opts.batch,
                               opts.fp16, opts.desc, precision=opts.precision)
        run_dir = config.choose_run_dir(opts.outdir, desc, name=opts.name, nosubdir=opts.nosubdir, resume=opts.resume)
    except config.ConfigError as e:   # Also TrainingStateError: every process reads the same file.
        raise CollectiveError(str(e))
    run_dir = dist.broadcast_object(run_dir)
    c.run_dir = run_dir
    c.snapshot_format = opts.snapshot_format
    c.device = str(device)

    # Print options (and keep them for log.txt, which is opened once the run directory exists).
    summary = '\n'.join([
        '', 'Training options:', json.dumps(c, indent=2), '',
        f'Output directory:        {run_dir}',
        f'Dataset path:            {c.dataset_kwargs.path}',
        f'Class-conditional:       {c.dataset_kwargs.use_labels}',
        f'Network architecture:    {opts.arch}',
        f'Preconditioning & loss:  {opts.precond}',
        f'Number of processes:     {dist.get_world_size()} ({device.type})',
        f'Batch size:              {c.batch_size}',
        f'Mixed-precision:         {c.network_kwargs.use_fp16 and device.type == "cuda"}',
        f'Autocast precision:      {opts.precision}', '']) + '\n'
    dist.print0(summary, end='')
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    # Create the output directory and train.
    dist.print0('Creating output directory...')
    failed = None
    if dist.get_rank() == 0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            training_loop.save_atomic(lambda path: _write_json(c, path), os.path.join(run_dir, 'training_options.json'))
        except OSError as e:
            failed = f'cannot create the run directory {run_dir} ({e.strerror or e})'
    failed = dist.broadcast_object(failed)
    if failed is not None:
        raise CollectiveError(failed)
    log = training_loop.log_to_file(os.path.join(run_dir, 'log.txt'), preamble=summary + 'Creating output '
                                    'directory...\n') if dist.get_rank() == 0 else None
    with log or contextlib.nullcontext():
        training_loop.training_loop(**c, transfer_net=transfer_net, resume_state=resume_state)


def _write_json(obj, path):
    with open(path, 'wt', encoding='utf-8') as f:
        json.dump(obj, f, indent=2)

# ----------------------------------------------------------------------------


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
