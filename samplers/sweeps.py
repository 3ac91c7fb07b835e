"""Checkpoint sweeps and robustness sweeps of a training run (the PFGM++ workflow, Xu et al. 2023).

Checkpoint sweep: every checkpoint of a run directory whose kimg lies in [ckpt, end_ckpt] is sampled into
`RUN_DIR/ckpt_<kimg:06d>/<seed - seed % 1000>/<seed>.png` (`ckpt_2_...` / `ckpt_3_...` when the largest seed exceeds
49,999 / 99,999, PFGM++'s names). The checkpoints are the run's `network-snapshot-*.pkl` (this toolkit, EDM, FDM),
or, for a run without snapshots, PFGM++'s `training-state-*.pt` (`training-state-*.pkl` with `use_pickle`). A folder
is finished when it holds every requested seed's image; a partly written one is completed, so an interrupted sweep
resumes where it stopped (PNGs are written atomically).

Robustness sweeps (PFGM++ paper, Sec. 5.3): one folder per value, `<folder>_alpha_<a>` (noise injection
x <- x + alpha sigma_i eps before each Heun step, eps from the seed's generator), `<folder>_steps_<n>` (step count)
and `<folder>_quant_<b>` (post-training min-max quantisation of the weights to b bits, `quantize_weights`).

`fid_rows` / `format_fid_table` score and tabulate the `ckpt_*` folders of a run directory (`fid.py calc`).
"""

import copy
import os
import re

import torch

from dnnlib.util import atomic_path
from torch_utils import distributed as dist
from . import generation, selection
from .priors import resolve_prior
from .schedules import edm_schedule

CHECKPOINT_PATTERNS = dict(snapshot=r'network-snapshot-(\d+)\.pkl', state=r'training-state-(\d+)\.pt',
                           state_pickle=r'training-state-(\d+)\.pkl')
VARIANTS = ('alpha', 'steps', 'quant')
FOLDER_RE = re.compile(r'ckpt_(?:(\d)_)?(\d+)(?:_(alpha|steps|quant)_([0-9.eE+-]+))?')

# ----------------------------------------------------------------------------
# Checkpoints and folders.


def checkpoints(run_dir, ckpt=0, end_ckpt=100000000, use_pickle=False):
    """[(kimg, path)] of the run's checkpoints with ckpt <= kimg <= end_ckpt, by kimg (see the module docstring)."""
    if not os.path.isdir(run_dir):
        raise ValueError(f'{run_dir} is not a directory (a training run directory is needed without --network)')
    names = sorted(os.listdir(run_dir))
    found = {}
    for kind in ('snapshot', 'state_pickle' if use_pickle else 'state'):
        for name in names:
            match = re.fullmatch(CHECKPOINT_PATTERNS[kind], name)
            if match:
                found.setdefault(kind, []).append((int(match.group(1)), os.path.join(run_dir, name)))
        if found:
            break
    if not found:
        what = 'training-state-*.pkl' if use_pickle else 'training-state-*.pt'
        raise ValueError(f'{run_dir} holds no checkpoint (network-snapshot-*.pkl or {what}); pass --network, or '
                         'point --outdir at a training run directory')
    return sorted((kimg, path) for kimg, path in next(iter(found.values())) if ckpt <= kimg <= end_ckpt)


def folder_name(kimg, max_seed, variant=None):
    """`ckpt_<kimg:06d>`, with PFGM++'s prefix for large seeds and the robustness variant as a suffix."""
    prefix = 'ckpt_3_' if max_seed > 99999 else 'ckpt_2_' if max_seed > 49999 else 'ckpt_'
    return f'{prefix}{kimg:06d}' + ('' if variant is None else f'_{variant[0]}_{variant[1]:g}')


def variants(alpha=None, steps=None, quant_bits=None):
    """The robustness variants [(name, value)] of these option lists, or [None] (the plain sampler)."""
    out = [(name, v) for name, values in zip(VARIANTS, (alpha, steps, quant_bits)) for v in (values or [])]
    return out or [None]


def missing_seeds(folder, seeds, subdirs=True):
    """The seeds whose image is not in `folder` yet (decided on rank 0, the same list on every rank)."""
    missing = None
    if dist.get_rank() == 0:
        missing = [s for s in seeds if not os.path.isfile(generation.image_path(folder, s, subdirs))]
    return dist.broadcast_object(missing)

# ----------------------------------------------------------------------------
# Robustness variants.


def quantize_weights(net, bits):
    """A copy of `net` whose weights are quantised per tensor to `bits` bits (min-max, asymmetric) and back:
    s = (max - min) / (2^b - 1), z = round(clip(-min / s, 0, 2^b - 1)), w' = s (round(clip(z + w / s, 0, 2^b - 1)) - z).
    As in PFGM++'s study, only parameters named `*weight*` are quantised, except those whose names contain `norm`,
    `affine`, `map` or `32`."""
    net = copy.deepcopy(net)
    levels = 2 ** int(bits) - 1
    with torch.no_grad():
        for name, p in net.named_parameters():
            if 'weight' not in name or any(k in name for k in ('norm', 'affine', 'map', '32')):
                continue
            lo, hi = p.min(), p.max()
            scale = (hi - lo) / levels
            if not scale > 0:
                continue
            zero = torch.round((-lo / scale).clamp(0, levels))
            p.copy_(scale * (torch.round((zero + p / scale).clamp(0, levels)) - zero))
    return net


def noisy_heun(net, latents, class_labels=None, *, alpha, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
               generator=None, prior=None, return_trajectory=False):
    """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) with PFGM++'s noise injection: before each
    step x <- x + alpha t_i eps, eps ~ N(0, I) from the seed's generator (float64 state)."""
    randn_like = torch.randn_like if generator is None else generator.randn_like
    t = edm_schedule(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x = resolve_prior(net, prior)(latents.to(torch.float64), t[0], generator)
    trajectory = [x]
    for i, (t_cur, t_next) in enumerate(zip(t[:-1], t[1:])):
        x = x + alpha * t_cur * randn_like(x)
        d = (x - net(x, t_cur, class_labels).to(torch.float64)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if i < num_steps - 1:
            d_next = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d_next)
        x = x_next
        trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def check_variants(kind, kwargs, chosen):
    """Raise selection.OptionError if a robustness variant does not fit the chosen sampler."""
    names = {v[0] for v in chosen if v is not None}
    if 'alpha' in names and (kind != 'edm' or kwargs.get('solver', 'edm') != 'edm' or kwargs.get('S_churn')):
        raise selection.OptionError('--alpha injects noise into EDM\'s deterministic Heun sampler; use it without '
                                    '--solver (or with --solver=edm) and without --S_churn')
    if 'steps' in names and 't_steps' in kwargs:
        raise selection.OptionError('--steps_sweep varies the step count; it cannot be combined with --t_steps')


def sampler_fn(kind, kwargs, variant=None, prior=None, return_trajectory=False):
    """The sampler callable (net, latents, labels, generator) of `selection.make_sampler_fn` for one variant."""
    kwargs = dict(kwargs)
    if prior is not None:
        kwargs['prior'] = prior
    if return_trajectory:
        kwargs['return_trajectory'] = True
    if variant is not None and variant[0] == 'steps':
        kwargs['num_steps'] = int(variant[1])
    if variant is not None and variant[0] == 'alpha':
        options = {k: kwargs[k] for k in ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'prior', 'return_trajectory')
                   if k in kwargs}
        return lambda net, x, c, gen: noisy_heun(net, x, c, alpha=variant[1], generator=gen, **options)
    return selection.make_sampler_fn(kind, kwargs)

# ----------------------------------------------------------------------------
# Generation.


def save_trajectory_gif(path, trajectory, duration_ms=100):
    """Write a sampling trajectory [steps + 1, B, C, H, W] (values in [-1, 1] at the end) as an animated GIF of image
    grids, atomically."""
    import PIL.Image
    frames = []
    for state in trajectory:
        grid = generation.make_grid(generation.to_uint8(state.to(torch.float32)))
        frames.append(PIL.Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid))
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format='GIF', save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path


def generate(net, seeds, outdir, kind, kwargs, *, kimg=None, chosen=(None,), prior=None, subdirs=False,
             save_gif=False, max_batch_size=64, class_idx=None, device=torch.device('cpu'), grid=None, note=print):
    """Sample `net` for every variant in `chosen`; returns the folders written.

    grid: a path for the grid PNG of a single plain run (`generation.generate_images`), else None.

    kimg None: one network, images into `outdir` (or `outdir/<name>_<value>` per variant), all seeds regenerated.
    kimg given: a checkpoint of the run directory `outdir`, into its `ckpt_*` folders with 1000-seed subfolders;
    only missing images are generated. With `save_gif` only the first batch's trajectory is written, as
    `<folder>-movie.gif` (no PNGs).
    """
    folders = []
    for variant in chosen:
        if kimg is None:
            folder = outdir if variant is None else os.path.join(outdir, f'{variant[0]}_{variant[1]:g}')
        else:
            folder = os.path.join(outdir, folder_name(kimg, max(seeds), variant))
        model = quantize_weights(net, variant[1]) if variant is not None and variant[0] == 'quant' else net
        if save_gif:
            batch = seeds[:max_batch_size]
            fn = sampler_fn(kind, kwargs, variant, prior, return_trajectory=True)
            if dist.get_rank() == 0:
                latents, labels, rnd = generation.draw_inputs(model, batch, device, class_idx)
                with torch.no_grad():
                    _, trajectory = fn(model, latents, labels, rnd)
                note(f'Saved the trajectory of seeds {batch[0]}-{batch[-1]} to '
                     f'{save_trajectory_gif(folder.rstrip(os.sep) + "-movie.gif", trajectory)}')
            dist.barrier()
            continue
        todo = seeds if kimg is None else missing_seeds(folder, seeds)
        if not todo:
            note(f'{folder}: all {len(seeds)} images present; skipped.')
            continue
        note(f'Generating {len(todo)} images to "{folder}"' + (f' ({len(seeds) - len(todo)} already there)...'
                                                                  if len(todo) < len(seeds) else '...'))
        generation.generate_images(model, todo, folder, sampler_fn(kind, kwargs, variant, prior),
                                   max_batch_size=max_batch_size, class_idx=class_idx,
                                   subdirs=subdirs or kimg is not None, device=device,
                                   grid=grid if (kimg is None and variant is None) else None)
        folders.append(folder)
    return folders

# ----------------------------------------------------------------------------
# FID of the ckpt_* folders of a run directory.


def image_folders(run_dir):
    """The `ckpt_*` image folders of a run directory, as [(name, info)] by kimg then name; info = dict(kimg,
    variant, value)."""
    out = []
    for name in sorted(os.listdir(run_dir)):
        match = FOLDER_RE.fullmatch(name)
        if match and os.path.isdir(os.path.join(run_dir, name)):
            out.append((name, dict(kimg=int(match.group(2)), variant=match.group(3), value=match.group(4))))
    return sorted(out, key=lambda item: (item[1]['kimg'], item[0]))


def fid_rows(run_dir, score):
    """[dict(folder, kimg, variant, value, fid, error)] for every `ckpt_*` folder; `score(folder) -> float` may raise
    ValueError-like errors with a one-line message, recorded as the row's error. ValueError if there is none."""
    folders = image_folders(run_dir)
    if not folders:
        raise ValueError(f'{run_dir} has no ckpt_* image folders; sample the run first with '
                         f'generate.py --outdir={run_dir} (without --network)')
    rows = []
    for name, info in folders:
        try:
            rows.append(dict(folder=name, **info, fid=float(score(os.path.join(run_dir, name))), error=None))
        except (ValueError, RuntimeError) as e:
            rows.append(dict(folder=name, **info, fid=None, error=str(e)))
    return rows


def format_fid_table(rows):
    """The rows of `fid_rows` as an aligned text table."""
    lines = [f'{"folder":<28s} {"kimg":>8s} {"FID":>10s}']
    for row in rows:
        value = f'{row["fid"]:10.4f}' if row['fid'] is not None else f'{"-":>10s}  ({row["error"]})'
        lines.append(f'{row["folder"]:<28s} {row["kimg"]:>8d} {value}')
    return '\n'.join(lines)


__all__ = ['checkpoints', 'folder_name', 'variants', 'missing_seeds', 'quantize_weights', 'noisy_heun',
           'check_variants', 'sampler_fn', 'save_trajectory_gif', 'generate', 'image_folders', 'fid_rows',
           'format_fid_table']
