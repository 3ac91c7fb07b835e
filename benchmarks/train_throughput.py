"""Training throughput (images/s) of the CIFAR-10 DDPM++ configuration on the CPU at a small batch.

Runs the real training loop (training.training_loop) with the network, loss and augmentation that
`train.py --cond=1 --arch=ddpmpp` builds for CIFAR-10 (EDMPrecond + SongUNet, 55.7M parameters, augment 0.12,
dropout 0.13), on random 32x32 RGB images with 10 classes, one tick per step and no snapshots. The first step
(warm-up) is left out. Writes a markdown table to docs/train_throughput.md.

    python benchmarks/train_throughput.py                   # batch 4, 6 steps, all threads torch uses
    python benchmarks/train_throughput.py --batch=8 --steps=4 --threads=1
"""

import json
import os
import platform
import sys
import tempfile
import time

import click
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dnnlib  # noqa: E402 pylint: disable=wrong-import-position
from torch_utils import misc  # noqa: E402 pylint: disable=wrong-import-position
from training import config, training_loop  # noqa: E402 pylint: disable=wrong-import-position
from training.demo_data import write_dataset  # noqa: E402 pylint: disable=wrong-import-position


def measure(batch, steps, workdir):
    """Images/s of each step after the first, for the CIFAR-10 DDPM++ configuration."""
    rnd = np.random.RandomState(0)
    data = write_dataset(rnd.randint(0, 256, size=[64, 32, 32, 3]).astype(np.uint8), os.path.join(workdir, 'c.zip'),
                         labels=np.arange(64) % 10)
    c = config.build(data=data, cond=True, arch='ddpmpp', batch=batch, workers=0, tick=1e-9, seed=0)
    config.check_dataset(c)
    c.update(snapshot_ticks=None, state_dump_ticks=None, run_dir=workdir, device='cpu', max_steps=steps)
    start = time.time()
    result = training_loop.training_loop(**c)
    wall = time.time() - start
    with open(os.path.join(workdir, 'stats.jsonl'), encoding='utf-8') as f:
        ticks = [json.loads(line) for line in f]
    rates = [t['Timing/img_per_sec']['mean'] for t in ticks[1:]]
    return dict(rates=rates, params=misc.count_parameters(result['net']), wall=wall)


@click.command()
@click.option('--batch', help='Batch size', type=click.IntRange(min=1), default=4, show_default=True)
@click.option('--steps', help='Optimizer steps (the first is warm-up)', type=click.IntRange(min=2), default=6,
              show_default=True)
@click.option('--threads', help='torch threads  [default: torch\'s]', type=click.IntRange(min=1))
@click.option('--out', help='Markdown output', default=os.path.join(ROOT, 'docs', 'train_throughput.md'),
              show_default=True)
def main(batch, steps, threads, out):
    """Measure training images/s of the CIFAR-10 DDPM++ configuration on the CPU."""
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        r = measure(batch, steps, workdir)
    rates = np.array(r['rates'])
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    lines = [
        '# Training throughput: CIFAR-10 DDPM++ on the CPU',
        '',
        'Measured by `python benchmarks/train_throughput.py` '
        f'(`--batch={batch} --steps={steps}{f" --threads={threads}" if threads else ""}`): the real training loop '
        'with the network, loss and augmentation of `train.py --cond=1 --arch=ddpmpp` at 32x32 (EDMPrecond + SongUNet, '
        'EDM loss, augment 0.12, dropout 0.13, Adam, EMA), random images with 10 classes, one tick per step, no '
        'snapshots. The first step is warm-up and not counted.',
        '',
        '| parameters | batch | steps timed | images/s (median) | min | max | s/step (median) |',
        '|---|---|---|---|---|---|---|',
        f'| {r["params"]:,} | {batch} | {len(rates)} | {np.median(rates):.2f} | {rates.min():.2f} | {rates.max():.2f} '
        f'| {batch / np.median(rates):.2f} |',
        '',
        f'Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads, Python {platform.python_version()}; 1-minute load average at the end '
        f'{load:.1f} (the machine was shared with other jobs, so treat the number as a lower bound).',
        '',
    ]
    with dnnlib.util.atomic_path(out) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
