"""Peak memory of `fid.py ref` as the dataset grows: it must stay flat (images are streamed, sums are fixed-size).

Builds zips of small random images (EDM layout) under benchmarks/_work/, a stand-in TorchScript detector with
2048 features (the Inception feature size, so the [2048, 2048] float64 accumulator is realistic), runs
`python fid.py ref` on each size and samples the resident set size (RSS) of the process and of its whole tree
(main process + data-loader workers) every 20 ms. Writes a markdown table to docs/fid_memory.md.

    python benchmarks/fid_memory.py                       # 2000 and 10000 images of 32x32
    python benchmarks/fid_memory.py --sizes=2000,10000 --workers=2
"""

import os
import subprocess
import sys
import time
import zipfile

import click
import numpy as np
import psutil
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dnnlib.util import atomic_path  # noqa: E402 pylint: disable=wrong-import-position
from training.dataset import archive_name, encode_png  # noqa: E402 pylint: disable=wrong-import-position


class StandInDetector(torch.nn.Module):
    """uint8 NCHW -> [N, 2048]: 4x4 average pooling, a fixed random linear map and tanh."""

    def __init__(self, dim=2048, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer('weight', torch.randn(dim, 3 * 4 * 4, generator=g) * 0.5)
        self.register_buffer('bias', torch.randn(dim, generator=g))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1)
        return torch.tanh(f @ self.weight.T + self.bias)


def make_zip(path, num, res, seed=0):
    """An EDM-layout zip of `num` random RGB images (uncompressed PNGs), written without a temporary folder."""
    if os.path.isfile(path):
        return
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as z:
        for i in range(num):
            img = rng.integers(0, 256, size=(res, res, 3), dtype=np.uint8)
            z.writestr(archive_name(i), encode_png(img))
        z.writestr('dataset.json', '{"labels": null}')


def measure(cmd, interval=0.02):
    """Run `cmd`; return (wall seconds, peak RSS of the main process, peak RSS summed over its process tree)."""
    start = time.time()
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            main = proc.memory_info().rss
            tree = main
            for child in proc.children(recursive=True):
                try:
                    tree += child.memory_info().rss
                except psutil.Error:
                    pass
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        except psutil.Error:
            pass
        time.sleep(interval)
    stderr = proc.stderr.read().decode('utf-8', 'replace')
    if proc.returncode != 0:
        raise click.ClickException(f'{" ".join(cmd)} failed: {stderr.strip().splitlines()[-1:]}')
    return time.time() - start, peak_main, peak_tree


@click.command()
@click.option('--sizes', help='Dataset sizes (comma-separated)', default='2000,10000', show_default=True)
@click.option('--res', help='Image resolution', type=int, default=32, show_default=True)
@click.option('--workers', help='fid.py --workers', type=int, default=2, show_default=True)
@click.option('--batch', help='fid.py --batch', type=int, default=64, show_default=True)
@click.option('--out', help='Markdown output', default=os.path.join(ROOT, 'docs', 'fid_memory.md'), show_default=True)
def main(sizes, res, workers, batch, out):
    """Peak RSS of `fid.py ref` for several dataset sizes."""
    work = os.path.join(ROOT, 'benchmarks', '_work', 'fid_memory')
    os.makedirs(work, exist_ok=True)
    det_path = os.path.join(work, 'detector-2048.pt')
    torch.jit.save(torch.jit.script(StandInDetector()), det_path)
    sizes = [int(s) for s in sizes.split(',')]
    rows = []
    for num in sizes:
        data = os.path.join(work, f'random-{num}-{res}x{res}.zip')
        make_zip(data, num, res)
        dest = os.path.join(work, f'random-{num}.npz')
        cmd = [sys.executable, 'fid.py', 'ref', f'--data={data}', f'--dest={dest}', f'--detector={det_path}',
               '--trust-detector', '--device=cpu', f'--workers={workers}', f'--batch={batch}']
        wall, peak_main, peak_tree = measure(cmd)
        rows.append((num, wall, peak_main / 2**20, peak_tree / 2**20))
        print(f'{num:6d} images: {wall:6.1f} s, peak RSS main {peak_main / 2**20:7.1f} MiB, '
              f'tree {peak_tree / 2**20:7.1f} MiB', flush=True)

    base = rows[0]
    lines = [
        '# Peak memory of `fid.py ref`',
        '',
        f'Generated by `python benchmarks/fid_memory.py` ({res}x{res} random RGB images in an EDM zip, stand-in',
        f'TorchScript detector with 2048 features, `--device=cpu --workers={workers} --batch={batch}`,',
        f'torch {torch.__version__}, {psutil.cpu_count()} visible CPU cores, shared with other jobs).',
        'RSS sampled every 20 ms; "tree" sums the main process and its data-loader workers (shared pages are',
        'counted in every process that maps them, so it overstates the true footprint).',
        '',
        '| images | wall time (s) | peak RSS, main (MiB) | peak RSS, tree (MiB) | '
        f'main / {base[0]} | tree / {base[0]} |',
        '|---:|---:|---:|---:|---:|---:|',
    ]
    for num, wall, main_mib, tree_mib in rows:
        lines.append(f'| {num} | {wall:.1f} | {main_mib:.1f} | {tree_mib:.1f} | {main_mib / base[2]:.3f} | '
                     f'{tree_mib / base[3]:.3f} |')
    lines += ['', 'Acceptance: peak RSS at the largest size within 1.5x of the smallest.', '']
    with open(out, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    print(f'Wrote {out}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
