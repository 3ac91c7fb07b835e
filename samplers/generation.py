"""Seeds to PNG files: per-seed randomness, rank split, image conversion and atomic writes.

The image of a seed depends only on the seed: every sample has its own generator (latents, class label and any
sampler noise are drawn from it), so batch size and number of processes never change an image.
"""

import math
import os

import numpy as np
import PIL.Image
import torch
import tqdm

from dnnlib.util import atomic_path
from torch_utils import distributed as dist
from torch_utils.misc import StackedRandomGenerator

# ----------------------------------------------------------------------------
# Images.


def to_uint8(images):
    """[N,C,H,W] float images in [-1,1] -> [N,H,W,C] uint8 numpy (EDM's rounding: clip(127.5 x + 128), truncate)."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(image, path):
    """Write one HWC uint8 image as PNG atomically (grayscale for one channel)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(image, 'L' if image.ndim == 2 else 'RGB').save(tmp, format='PNG')


def image_path(outdir, seed, subdirs=False):
    """EDM's layout: outdir/000123.png, or outdir/000000/000123.png with `subdirs`."""
    if subdirs:
        return os.path.join(outdir, f'{seed - seed % 1000:06d}', f'{seed:06d}.png')
    return os.path.join(outdir, f'{seed:06d}.png')


def make_grid(images, cols=None):
    """[N,H,W,C] uint8 -> one [rows*H, cols*W, C] image, row-major, black where the grid is not full."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    cols = cols or max(int(math.ceil(math.sqrt(n))), 1)
    rows = (n + cols - 1) // cols
    grid = np.zeros([rows * cols, h, w, c], dtype=images.dtype)
    grid[:n] = images
    return grid.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)

# ----------------------------------------------------------------------------
# Generation loop.


def draw_inputs(net, seeds, device, class_idx=None):
    """Per-seed latents (unit variance, float32) and one-hot class labels, in EDM's draw order.

    Returns (latents, class_labels or None, generator); the generator's `randn_like` must be used for any
    further noise of these samples.
    """
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = None
    if net.label_dim:
        # Drawn even when a class is forced, so the per-seed noise stream is the same either way.
        idx = rnd.randint(net.label_dim, size=[len(seeds)], device=device)
        if class_idx is not None:
            idx[:] = class_idx
        class_labels = torch.eye(net.label_dim, device=device)[idx]
    return latents, class_labels, rnd


def generate_images(net, seeds, outdir, sampler_fn, *, max_batch_size=64, class_idx=None, subdirs=False,
                    device=torch.device('cpu'), progress=True, grid=None, max_grid=1024):
    """Sample one PNG per seed into `outdir`; under torchrun the seeds are split across ranks.

    `sampler_fn(net, latents, class_labels, generator)` returns images in [-1, 1]; `generator` is the batch's
    per-seed generator (its `randn_like` is the sampler's noise source, and a prior may draw from it).
    `grid`: a path where rank 0 also saves the images of the first `max_grid` seeds as one grid PNG; they are
    gathered from every rank in memory, so the ranks need no shared file system. Returns the paths written by
    this rank.
    """
    written = []
    kept = {}  # Index in `seeds` -> image, for the grid.
    batches = dist.rank_batches(len(seeds), max_batch_size)
    iterator = tqdm.tqdm(batches, unit='batch', disable=not (progress and dist.get_rank() == 0))
    for batch_indices in iterator:
        dist.barrier()
        if len(batch_indices) == 0:
            continue
        batch_seeds = [seeds[i] for i in batch_indices.tolist()]
        latents, class_labels, rnd = draw_inputs(net, batch_seeds, device, class_idx)
        with torch.no_grad():
            images = sampler_fn(net, latents, class_labels, rnd)
        for index, seed, image in zip(batch_indices.tolist(), batch_seeds, to_uint8(images)):
            path = image_path(outdir, seed, subdirs)
            save_png(image, path)
            written.append(path)
            if grid is not None and index < max_grid:
                kept[index] = image
    dist.barrier()
    if grid is not None:
        kept = _gather_to_rank0(kept)
        if dist.get_rank() == 0:
            save_png(make_grid(np.stack([kept[i] for i in sorted(kept)])), grid)
    return written


def _gather_to_rank0(items):
    """Merge every rank's dict on rank 0 (other ranks get {})."""
    if not torch.distributed.is_initialized() or dist.get_world_size() == 1:
        return items
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    torch.distributed.gather_object(items, parts, dst=0)
    return {k: v for part in parts for k, v in part.items()} if dist.get_rank() == 0 else {}


def grid_path(outdir):
    """Where `--grid` writes: next to the image folder (`out` -> `out-grid.png`), so that FID tools reading the
    folder see only the samples."""
    return os.path.abspath(outdir).rstrip(os.sep) + '-grid.png'
