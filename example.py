"""Minimal example: sample a grid of images from the bundled demo model or an official EDM checkpoint."""

import time

import click

from dnnlib.cli import Command, bool_option, one_line, refuse_torchrun
from dnnlib.util import InputError, printable
from samplers import demo
from torch_utils import precision as fast


@click.command(cls=Command, context_settings=dict(terminal_width=80, max_content_width=80))
@click.option('--dataset', help='Model: the bundled demo (digits) or an official EDM checkpoint',
              type=click.Choice(list(demo.MODELS)), default='digits', show_default=True)
@click.option('--network', help='Network pickle or URL instead of the default for --dataset (the grid is named '
              'after its file)', metavar='PATH|URL')
@click.option('--outdir', help='Where to write <name>.png', metavar='DIR', default='.', show_default=True)
@click.option('--seed', help='Random seed', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--steps', help='Sampler steps  [default: recommended for --dataset]', metavar='INT',
              type=click.IntRange(min=2))
@click.option('--cols', help='Grid columns  [default: 10 per class row, else 8x8]', metavar='INT',
              type=click.IntRange(min=1))
@click.option('--device', help='Device  [default: cuda if available, else cpu]', type=click.Choice(['cpu', 'cuda']))
@bool_option('--trust-pickle', 'trust_pickle',
             help='Allow legacy unpickling, which runs code embedded in the checkpoint')
@click.option('--precision', help='Network precision: fp32, or autocast to bf16 (CPU, CUDA) or fp16 (CUDA)',
              type=click.Choice(list(fast.PRECISIONS)), default='fp32', show_default=True)
def main(dataset, network, outdir, seed, steps, cols, device, trust_pickle, precision):
    """Generate a grid of images with EDM's sampler (Karras et al. 2022, Algorithm 2).

    With no options: the bundled class-conditional demo model (16x16 digits), one row per class, on the CPU in
    seconds. --dataset=cifar10|ffhq|afhqv2|imagenet downloads the official EDM checkpoint (cached) and uses the
    recommended sampler settings (18, 40, 40, and 256 steps with churn for ImageNet). Set EDM_PRETRAINED_BASE to a
    mirror or a local folder (file:///path/) to fetch the official checkpoints from there. With --network the grid is
    named after the checkpoint's file (net.pkl -> net.png). One process: not for torchrun.

    \b
    Examples:
    python example.py
    python example.py --dataset=cifar10
    """
    refuse_torchrun('example.py')
    start = time.time()
    try:
        note = fast.check(precision, demo.default_device(device))
    except fast.PrecisionError as e:
        raise click.BadParameter(str(e), param_hint='--precision')
    if note:
        print(f'Warning: {note}.')
    url = network or demo.network_url(dataset)
    print(f'Loading network from "{url}"...')
    try:
        path = demo.run(dataset, network=network, outdir=outdir, seed=seed, steps=steps, cols=cols, device=device,
                        trust_pickle=trust_pickle, precision=precision)
    except InputError as e:  # The message names the file.
        raise click.ClickException(str(e))
    except (OSError, ValueError, RuntimeError) as e:
        raise click.ClickException(f'{printable(url)}: {one_line(e)}')
    print(f'Saved "{path}" in {time.time() - start:.1f} s')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
