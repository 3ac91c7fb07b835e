"""The training loop (EDM's training_loop.py, NVlabs/edm, redesigned for exact resume and layout-free randomness).

One call trains a preconditioned denoiser: DDP over torchrun ranks (gloo on CPU, nccl on CUDA), gradient
accumulation from `batch_gpu` up to `batch_size`, Adam with a linear learning-rate ramp-up, EMA with a half-life and
ramp-up, loss scaling, a non-finite gradient guard, statistics reduced over ranks, and periodic files in `run_dir`:

* `network-snapshot-{kimg:06d}.pkl` - the official EDM layout: dict(ema, loss_fn, augment_pipe, dataset_kwargs),
  written with torch_utils.persistence (readable by EDM-based tools and by `persistence.load_network`).
* `training-state-{kimg:06d}.pt` - plain state dicts, tensors and numbers only (`torch.load(weights_only=True)`):
  net, EMA, optimizer, loss state, per-rank RNG states, the position in the data stream, the optimizer step count
  and the options. Resuming from it continues the run exactly.
* `stats.jsonl` (one line per tick) and the status lines printed on rank 0.

Data order: the global stream of samples is a fresh permutation of the dataset per epoch, seeded by (seed, epoch);
step s uses stream positions [s B, (s+1) B), split over ranks and accumulation rounds, so the set of samples in a
step does not depend on the process layout. With `per_sample_rng`, each sample's sigma, noise and augmentation come
from a generator seeded by (seed, stream position), which makes the whole update independent of --batch-gpu and of
the number of processes (dropout still uses each process's own generator).

The loss is told the optimizer step count (`loss_fn.set_step`, once per step before its accumulation rounds, counted
from the start of training) and its `state_dict()` travels in the training state (training.loss.Loss). A loss with a
`reference_size` larger than the per-pass batch (PFGM++'s stable target field) also receives `reference=`: the same
reference_size - batch_gpu extra images for every pass of step s, stream positions [s M, (s+1) M) of a second
stream of the dataset.
"""

import contextlib
import copy
import json
import os
import re
import sys
import time

import numpy as np
import psutil
import torch

import dnnlib
from dnnlib.cli import one_line
from torch_utils import distributed as dist
from torch_utils import misc, persistence, training_stats
from training.config import ConfigError

STATE_FORMAT = 'edm-training-state'
STATE_VERSION = 1

# ----------------------------------------------------------------------------
# Data stream and per-sample randomness.


class SampleStream(torch.utils.data.Dataset):
    """Stream position -> (image, label, position); epoch e visits the dataset in a permutation seeded by (seed, e),
    or by (seed, e, stream) for another independent stream of the same dataset."""

    def __init__(self, dataset, seed, stream=None):
        self.dataset = dataset
        self.seed = int(seed)
        self.stream = stream
        self._epoch, self._order = None, None

    def index(self, position):
        epoch, offset = divmod(int(position), len(self.dataset))
        if epoch != self._epoch:
            key = [self.seed, epoch] + ([] if self.stream is None else [int(self.stream)])
            self._epoch, self._order = epoch, np.random.default_rng(key).permutation(len(self.dataset))
        return int(self._order[offset])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, position):
        image, label = self.dataset[self.index(position)]
        return image, label, int(position)


class StreamSampler(torch.utils.data.Sampler):
    """Endless positions start + rank, start + rank + W, ... (rank r takes every W-th item of the global stream)."""

    def __init__(self, start, rank=0, world_size=1):
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def __iter__(self):
        position = self.start + self.rank
        while True:
            yield position
            position += self.world_size


class SampleRNG(misc.StackedRandomGenerator):
    """One generator per sample, seeded by (seed, stream position); `rand`, `randn`, `randint` as in torch."""

    def __init__(self, device, seed, positions):
        seeds = [np.random.SeedSequence([int(seed), int(p)]).generate_state(1)[0] for p in positions]
        super().__init__(device, seeds)

# ----------------------------------------------------------------------------
# Training state files.


def _rng_state(device):
    return dict(cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None)


def _set_rng_state(state, device):
    torch.set_rng_state(state['cpu'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)


def _gather_rng_states(device):
    """Every rank's RNG state, on every rank (rank order)."""
    state = _rng_state(device)
    if dist.get_world_size() == 1:
        return [state]
    states = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def _plain(obj):
    """JSON-compatible copy of an options structure (EasyDicts become dicts)."""
    return json.loads(json.dumps(obj))


def _structure(network_kwargs):
    # Network options that decide the parameter layout (dropout and fp16 may change when resuming).
    return {k: v for k, v in network_kwargs.items() if k not in ('dropout', 'use_fp16')}


def load_training_state(path):
    """Read a `training-state-NNNNNN.pt` file (tensors and plain values only). Raises ConfigError."""
    if not re.fullmatch(r'training-state-\d+\.pt', os.path.basename(path)):
        raise ConfigError(f'--resume={path}: expected a file named training-state-NNNNNN.pt')
    if not os.path.isfile(path):
        raise ConfigError(f'--resume={path}: no such file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f'--resume={path}: not a training state of this toolkit ({one_line(e)})') from e
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise ConfigError(f'--resume={path}: not a training state of this toolkit')
    if state.get('version') != STATE_VERSION:
        raise ConfigError(f'--resume={path}: training-state version {state.get("version")} is not supported '
                          f'(this toolkit reads version {STATE_VERSION})')
    return state


def check_resume(state, c, path='--resume'):
    """Raise ConfigError (one line) if `state` cannot continue the run configured by `c`."""
    saved = state['options']
    if saved['loss_kwargs']['class_name'] != c.loss_kwargs.class_name:
        raise ConfigError(f'{path} was trained with {saved["loss_kwargs"]["class_name"]}, this run uses '
                          f'{c.loss_kwargs.class_name} (check --precond)')
    old, new = _structure(saved['network_kwargs']), _structure(_plain(c.network_kwargs))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ConfigError(f'{path} is from an incompatible run: network option {key} was {old.get(key)!r}, '
                              f'now {new.get(key)!r}')
    for key in ('resolution', 'channels', 'label_dim'):
        if saved['dataset_info'][key] != c.dataset_info[key]:
            raise ConfigError(f'{path} is from an incompatible run: dataset {key} was {saved["dataset_info"][key]}, '
                              f'now {c.dataset_info[key]}')


def load_transfer(path, c):
    """Load the `ema` network of a checkpoint for --transfer/--pretrain and check that it fits. Raises ConfigError."""
    try:
        net = persistence.load_network(path)['ema']
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f'--transfer={path}: cannot load the network ({one_line(e)})') from e
    info = c.dataset_info
    for attr, want in (('img_resolution', info.resolution), ('img_channels', info.channels),
                       ('label_dim', info.label_dim)):
        have = getattr(net, attr, None)
        if have is not None and have != want:
            raise ConfigError(f'--transfer={path}: the network has {attr}={have}, but the dataset needs {want}')
    # Same-named tensors must have the same shapes (checked on the meta device: no memory, no time).
    with torch.device('meta'):
        target = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=info.resolution,
                                                img_channels=info.channels, label_dim=info.label_dim)
    source = net.state_dict()
    for name, tensor in target.state_dict().items():
        if name in source and source[name].shape != tensor.shape:
            raise ConfigError(f'--transfer={path}: "{name}" has shape {list(source[name].shape)} in the checkpoint '
                              f'but {list(tensor.shape)} with these options (check --arch/--cbase/--cres)')
    return net


def save_atomic(save_fn, path):
    """Call `save_fn(tmp)` with a temporary name next to `path`, then rename it to `path`."""
    with dnnlib.util.atomic_path(path) as tmp:
        save_fn(tmp)

# ----------------------------------------------------------------------------
# Logging.


class _Tee:
    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def log_to_file(path, preamble=''):
    """Copy stdout and stderr into `path` (appended in place, not written atomically) for the duration of the
    block; `preamble` (what was printed before the file could be opened) is written to the file first."""
    with open(path, 'a', encoding='utf-8') as f:
        f.write(preamble)
        f.flush()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, f), _Tee(sys.stderr, f)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def _format_time(seconds):
    s = int(np.rint(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h'

# ----------------------------------------------------------------------------


def training_loop(
    run_dir='.',                 # Output directory.
    dataset_kwargs={},           # Dataset options (class_name, path, ...).
    data_loader_kwargs={},       # DataLoader options (num_workers, prefetch_factor).
    network_kwargs={},           # Preconditioner options (class_name, model_type, ...).
    loss_kwargs={},              # Loss options (class_name, ...).
    optimizer_kwargs={},         # Optimizer options (class_name, lr, ...).
    augment_kwargs=None,         # Augmentation pipe options, None = no augmentation.
    seed=0,                      # Seed of the data order, network initialisation and training noise.
    batch_size=512,              # Total batch size of one optimizer step, over all ranks.
    batch_gpu=None,              # Samples per forward pass on one rank; None = batch_size // world_size.
    total_kimg=200000,           # Training duration in thousands of images.
    ema_halflife_kimg=500,       # EMA half-life in thousands of images.
    ema_rampup_ratio=0.05,       # EMA ramp-up: half-life at most this fraction of the images seen; None = off.
    lr_rampup_kimg=10000,        # Linear learning-rate ramp-up over this many kimg; 0 = full rate from the start.
    loss_scaling=1,              # Loss scale (never undone; Adam is invariant to it up to eps).
    kimg_per_tick=50,            # Interval of status lines and statistics.
    snapshot_ticks=50,           # Network snapshot every this many ticks (and at the end); None = never.
    state_dump_ticks=500,        # Training state every this many ticks (and at the end); None = never.
    per_sample_rng=False,        # Draw sigma, noise and augmentation per sample from (seed, stream position).
    transfer=None,               # Path or URL of the network whose EMA initialises the run (informational).
    transfer_net=None,           # That network, already loaded.
    resume=None,                 # Path of the training state to resume from (informational).
    resume_state=None,           # A dict from load_training_state(), or None.
    cudnn_benchmark=True,        # torch.backends.cudnn.benchmark.
    device=torch.device('cpu'),
    dataset_info=None,           # Informational (filled in by config.check_dataset).
    max_steps=None,              # Stop after this many optimizer steps of this call (tests, benchmarks).
):
    """Train; returns a dict with the final `net`, `ema`, `cur_nimg` and the number of steps taken."""
    start_time = time.time()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device(device)
    if resume_state is not None:
        seed = int(resume_state['seed'])     # The data order and noise streams continue those of the saved run.
        schedule = resume_state['options'].get('schedule') or {}
        if 'ema_rampup_ratio' in schedule:   # Not expressible with --resume (a fine-tune has none): continue it.
            ema_rampup_ratio = schedule['ema_rampup_ratio']
        if schedule.get('lr_rampup_kimg', lr_rampup_kimg) != lr_rampup_kimg:
            dist.print0(f'Note: the saved run ramped the learning rate over {schedule["lr_rampup_kimg"]:g} kimg, '
                        f'this run uses {lr_rampup_kimg:g} kimg (--lr-rampup).')
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    # Batch layout (EDM): batch_size = batch_gpu * rounds * world_size.
    batch_gpu_total = batch_size // world_size
    batch_gpu = batch_gpu_total if batch_gpu is None else min(batch_gpu, batch_gpu_total)
    num_accumulation_rounds = batch_gpu_total // batch_gpu
    assert batch_size == batch_gpu * num_accumulation_rounds * world_size

    # Data.
    dist.print0('Loading dataset...')
    dataset_obj = dnnlib.construct_class_by_name(**dataset_kwargs)
    cur_nimg = int(resume_state['cur_nimg']) if resume_state is not None else 0
    loader_kwargs = dict(data_loader_kwargs)
    if not loader_kwargs.get('num_workers'):
        loader_kwargs.pop('prefetch_factor', None)
    data_loader = torch.utils.data.DataLoader(
        SampleStream(dataset_obj, seed), sampler=StreamSampler(cur_nimg, rank, world_size), batch_size=batch_gpu,
        pin_memory=(device.type == 'cuda'), generator=torch.Generator().manual_seed(seed), **loader_kwargs)
    dataset_iterator = iter(data_loader)

    # Network: initialised from `seed` alone, so every process layout starts from the same weights.
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels,
                            label_dim=dataset_obj.label_dim)
    torch.manual_seed(seed)
    net = dnnlib.construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.train().requires_grad_(True).to(device)
    dist.print0(f'Parameters: {misc.count_parameters(net):,}')

    # Loss, optimizer, augmentation, EMA.
    loss_fn = dnnlib.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **optimizer_kwargs)
    augment_pipe = dnnlib.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    if transfer_net is not None:
        misc.copy_params_and_buffers(src_module=transfer_net, dst_module=net, require_all=False)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    num_references = max(int(getattr(loss_fn, 'reference_size', 0)) - batch_gpu, 0)

    # Per-rank stream of the global generators (EDM's seeding), or the saved one.
    np.random.seed((seed * world_size + rank) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    cur_tick, tick_start_nimg, cur_step = 0, cur_nimg, 0     # cur_step: optimizer steps since the start of training.
    if resume_state is not None:
        dist.print0(f'Resuming from {cur_nimg} images...')
        net.load_state_dict(resume_state['net'])
        ema.load_state_dict(resume_state['ema'])
        optimizer.load_state_dict(resume_state['optimizer'])
        loss_fn.load_state_dict(resume_state['loss'])
        cur_tick, tick_start_nimg = int(resume_state['cur_tick']), int(resume_state['tick_start_nimg'])
        # States that predate the step count: derived from the images seen (exact unless --batch changed).
        cur_step = int(resume_state.get('cur_step', cur_nimg // resume_state['options']['batch_size']))
        if len(resume_state['rng']) == world_size:
            _set_rng_state(resume_state['rng'][rank], device)
        else:
            dist.print0(f'Note: the state was saved by {len(resume_state["rng"])} process(es), this run has '
                        f'{world_size}; dropout noise will not continue the saved streams.')
    ddp = net
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)

    # Train.
    dist.print0(f'Training for {total_kimg:g} kimg...')
    dist.print0()
    total_nimg = max(int(round(total_kimg * 1000)), 1)
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    dataset_info = dataset_info or dict(resolution=dataset_obj.resolution, channels=dataset_obj.num_channels,
                                        label_dim=dataset_obj.label_dim)
    state_options = _plain(dict(network_kwargs=network_kwargs, loss_kwargs=loss_kwargs, dataset_kwargs=dataset_kwargs,
                                dataset_info=dataset_info, batch_size=batch_size,    # Checked by check_resume().
                                schedule=dict(ema_rampup_ratio=ema_rampup_ratio, lr_rampup_kimg=lr_rampup_kimg)))
    steps = 0
    done = cur_nimg >= total_nimg
    if num_references:   # Its own generator: creating the iterator must not draw from the global one.
        reference_iterator = iter(torch.utils.data.DataLoader(
            SampleStream(dataset_obj, seed, stream=1), sampler=StreamSampler(cur_step * num_references),
            batch_size=num_references, pin_memory=(device.type == 'cuda'),
            generator=torch.Generator().manual_seed(seed), **loader_kwargs))
    while not done:
        # Accumulate gradients over the rounds; DDP synchronises on the last one.
        optimizer.zero_grad(set_to_none=True)
        loss_fn.set_step(cur_step)
        if num_references:
            references = next(reference_iterator)[0].to(device).to(torch.float32) / 127.5 - 1
        for round_idx in range(num_accumulation_rounds):
            sync = contextlib.nullcontext() if (world_size == 1 or round_idx == num_accumulation_rounds - 1) \
                else ddp.no_sync()
            with sync:
                images, labels, positions = next(dataset_iterator)
                images = images.to(device).to(torch.float32) / 127.5 - 1
                labels = labels.to(device)
                extra = dict(rng=SampleRNG(device, seed, positions.tolist())) if per_sample_rng else {}
                if num_references:
                    extra['reference'] = references
                loss = loss_fn(ddp, images, labels, augment_pipe=augment_pipe, **extra)
                training_stats.report('Loss/loss', loss)
                # EDM: per-sample pixel sums, averaged over the global batch, times the loss scale.
                loss.sum().mul(loss_scaling / batch_gpu_total).backward()

        # Learning-rate ramp-up (EDM: linear in images seen), non-finite guard, Adam step.
        ramp = min(cur_nimg / (lr_rampup_kimg * 1000), 1) if lr_rampup_kimg > 0 else 1
        for g in optimizer.param_groups:
            g['lr'] = optimizer_kwargs['lr'] * ramp
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()

        # EMA (EDM): beta = 0.5^(batch / half-life), half-life ramped up with the images seen; parameters only.
        ema_halflife_nimg = ema_halflife_kimg * 1000
        if ema_rampup_ratio is not None:
            ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
        ema_beta = 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))

        cur_nimg += batch_size
        cur_step += 1
        steps += 1
        done = cur_nimg >= total_nimg or (max_steps is not None and steps >= max_steps)
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue

        # Tick: status line, statistics, files.
        tick_end_time = time.time()
        tick_time = tick_end_time - tick_start_time
        tick_nimg = max(cur_nimg - tick_start_nimg, 1)
        cpu_mem_gb = psutil.Process(os.getpid()).memory_info().rss / 2 ** 30
        gpu_mem_gb = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else 0
        gpu_res_gb = torch.cuda.max_memory_reserved(device) / 2 ** 30 if device.type == 'cuda' else 0
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        training_stats.report0('Progress/tick', cur_tick)
        training_stats.report0('Progress/kimg', cur_nimg / 1e3)
        training_stats.report0('Timing/total_sec', tick_end_time - start_time)
        training_stats.report0('Timing/sec_per_tick', tick_time)
        training_stats.report0('Timing/sec_per_kimg', tick_time / tick_nimg * 1e3)
        training_stats.report0('Timing/img_per_sec', tick_nimg / max(tick_time, 1e-8))
        training_stats.report0('Timing/maintenance_sec', maintenance_time)
        training_stats.report('Resources/cpu_mem_gb', cpu_mem_gb)
        training_stats.report0('Resources/peak_gpu_mem_gb', gpu_mem_gb)
        training_stats.report0('Resources/peak_gpu_mem_reserved_gb', gpu_res_gb)
        training_stats.default_collector.update()
        stats = training_stats.default_collector.as_dict()
        dist.print0('  '.join([
            f'tick {cur_tick:<5d}', f'kimg {cur_nimg / 1e3:<9.3f}',
            f'time {_format_time(tick_end_time - start_time):<9s}',
            f'sec/tick {tick_time:<7.1f}', f'sec/kimg {tick_time / tick_nimg * 1e3:<7.2f}',
            f'img/s {tick_nimg / max(tick_time, 1e-8):<8.1f}', f'loss {stats["Loss/loss"]["mean"]:<8.4f}',
            f'maintenance {maintenance_time:<6.1f}', f'cpumem {stats["Resources/cpu_mem_gb"]["mean"]:<6.2f}',
            f'gpumem {gpu_mem_gb:<6.2f}', f'reserved {gpu_res_gb:<6.2f}']))

        kimg_name = f'{cur_nimg // 1000:06d}'
        if snapshot_ticks is not None and (done or cur_tick % snapshot_ticks == 0):
            ema_copy = copy.deepcopy(ema).cpu().eval().requires_grad_(False)
            misc.check_ddp_consistency(ema)
            if rank == 0:
                data = dict(ema=ema_copy, loss_fn=loss_fn, augment_pipe=augment_pipe,
                            dataset_kwargs=_plain(dataset_kwargs))
                persistence.save_pickle(data, os.path.join(run_dir, f'network-snapshot-{kimg_name}.pkl'))
            del ema_copy
        if state_dump_ticks is not None and (done or (cur_tick != 0 and cur_tick % state_dump_ticks == 0)):
            rng_states = _gather_rng_states(device)
            if rank == 0:
                state = dict(
                    format=STATE_FORMAT, version=STATE_VERSION,
                    net={k: v.detach().cpu() for k, v in net.state_dict().items()},
                    ema={k: v.detach().cpu() for k, v in ema.state_dict().items()},
                    optimizer=optimizer.state_dict(),
                    loss=loss_fn.state_dict(), cur_step=cur_step,
                    rng=rng_states, seed=seed, world_size=world_size, cur_nimg=cur_nimg,
                    cur_tick=cur_tick + 1, tick_start_nimg=cur_nimg,
                    options=state_options)
                save_atomic(lambda p: torch.save(state, p), os.path.join(run_dir, f'training-state-{kimg_name}.pt'))
                del state
        if rank == 0:
            with open(stats_path, 'at', encoding='utf-8') as f:
                f.write(json.dumps(dict(stats, timestamp=time.time())) + '\n')
        dist.barrier()

        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time

    dist.print0()
    dist.print0('Exiting...')
    return dict(net=net, ema=ema, cur_nimg=cur_nimg, steps=steps)
