"""The training loop (EDM's training_loop.py, NVlabs/edm, redesigned for exact resume and layout-free randomness).

One call trains a preconditioned denoiser: DDP over torchrun ranks (gloo on CPU, nccl on CUDA), gradient
accumulation from `batch_gpu` up to `batch_size`, Adam with a linear learning-rate ramp-up, EMA with a half-life and
ramp-up, loss scaling, a non-finite gradient guard, statistics reduced over ranks, and periodic files in `run_dir`:

* `network-snapshot-{kimg:06d}.pkl` - the official EDM layout: dict(ema, loss_fn, augment_pipe, dataset_kwargs),
  written with torch_utils.persistence (readable by EDM-based tools and by `persistence.load_network`); with
  `snapshot_format='safetensors'`, `network-snapshot-{kimg:06d}.safetensors` instead (no pickle, same loader).
* `training-state-{kimg:06d}.pt` - plain state dicts, tensors and numbers only (read back with the restricted
  unpickler and checked): net, EMA, optimizer, loss state, per-rank RNG states, the position in the data stream,
  the optimizer step count and the options. Resuming from it continues the run exactly.
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
import functools
import inspect
import json
import math
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
from dnnlib.util import printable
from torch_utils import misc, persistence, safe_pickle, training_stats
from torch_utils import precision as fast
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


class TrainingStateError(ConfigError, dnnlib.util.InputError):
    """A training state that cannot be resumed from (broken, or from an incompatible run); the message is one line
    naming the file and the problem."""


def _state_fail(path, message):
    raise TrainingStateError(f'--resume={printable(path)}: {message}')


def _is_int(value, low=0, high=1 << 63):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def load_training_state(path):
    """Read a `training-state-NNNNNN.pt` file: tensors and plain values only, read with the restricted unpickler
    (torch_utils.safe_pickle.load_torch_zip) and checked field by field. Raises TrainingStateError (one line)."""
    if not re.fullmatch(r'training-state-\d+\.pt', os.path.basename(path)):
        raise TrainingStateError(f'--resume={printable(path)}: expected a file named training-state-NNNNNN.pt')
    if os.path.isdir(path):
        _state_fail(path, 'is a folder; expected a training-state-NNNNNN.pt file')
    if not os.path.isfile(path):
        _state_fail(path, 'no such file')
    description = persistence.describe_file(path)
    if description not in ('a training state of this toolkit', 'a torch.save archive'):
        hint = ' (a network goes to --transfer)' if description in ('a pickle', 'a safetensors file') else ''
        _state_fail(path, f'is {description}, not a training state of this toolkit{hint}')
    with open(path, 'rb') as f:
        state = safe_pickle.load_torch_zip(f, f'--resume={path}')
    _check_state_fields(state, path)
    return state


def _check_state_fields(state, path):
    """The fields of a training state, their types and ranges (what the training loop reads)."""
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        _state_fail(path, 'not a training state of this toolkit')
    if state.get('version') != STATE_VERSION:
        _state_fail(path, f'training-state version {printable(repr(state.get("version")), 20)} is not supported '
                          f'(this toolkit reads version {STATE_VERSION})')
    fields = dict(net=dict, ema=dict, optimizer=dict, loss=dict, rng=list, seed=int, world_size=int, cur_nimg=int,
                  cur_tick=int, tick_start_nimg=int, options=dict)
    missing = sorted(k for k in fields if k not in state)
    optional = dict(format=str, version=int, cur_step=int, grad_scaler=dict)  # grad_scaler: fp16 loss scaling
    extra = sorted(printable(repr(k), 40) for k in state if k not in fields and k not in optional)
    if missing or extra:
        _state_fail(path, f'missing fields {missing}, unexpected fields {extra}')
    for key, kind in [*fields.items(), *((k, v) for k, v in optional.items() if k in state)]:
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            _state_fail(path, f'"{key}" is a {type(state[key]).__name__}, expected {kind.__name__}')
    safe_pickle.check_structure(state, f'--resume={path}', max_items=1_000_000)
    scaler = state.get('grad_scaler') or {}   # torch.amp.GradScaler.state_dict(): empty when it was disabled.
    if scaler and (set(scaler) != {'scale', 'growth_factor', 'backoff_factor', 'growth_interval', '_growth_tracker'}
                   or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                              for v in scaler.values())
                   or not (scaler['scale'] > 0 and scaler['growth_factor'] > 1 and 0 < scaler['backoff_factor'] < 1
                           and scaler['growth_interval'] >= 1 and scaler['_growth_tracker'] >= 0)):
        _state_fail(path, '"grad_scaler" is not the state of a loss scaler (scale, growth and backoff factors, '
                          'growth interval and tracker)')
    for key in ('seed', 'cur_nimg', 'cur_tick', 'tick_start_nimg', 'cur_step'):
        if key in state and not _is_int(state[key]):
            _state_fail(path, f'"{key}" is {printable(repr(state[key]), 40)}, expected a non-negative integer')
    if not 1 <= state['world_size'] <= 1 << 16 or state['tick_start_nimg'] > state['cur_nimg']:
        _state_fail(path, 'inconsistent world_size or image counts')
    for key in ('net', 'ema'):
        for name, value in state[key].items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor) or not value.is_contiguous():
                _state_fail(path, f'"{key}" entry {printable(repr(name), 80)} is not a name and a plain tensor')
    rng_size = torch.get_rng_state().numel()
    if not 1 <= len(state['rng']) <= 1 << 16:
        _state_fail(path, f'"rng" holds {len(state["rng"])} states')
    for entry in state['rng']:
        cpu = entry.get('cpu') if isinstance(entry, dict) else None
        cuda = entry.get('cuda') if isinstance(entry, dict) else None
        if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.shape == (rng_size,)) or \
                not (cuda is None or isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8 and cuda.ndim == 1) \
                or set(entry) != {'cpu', 'cuda'}:
            _state_fail(path, f'an "rng" entry is not dict(cpu=uint8 tensor of {rng_size}, cuda=None or uint8 tensor)')
    options = state['options']

    def plain(value):
        if not (value is None or isinstance(value, (bool, int, float, str))):
            _state_fail(path, f'"options" hold a {type(value).__name__}; expected plain (JSON) values')
    safe_pickle.check_structure(options, f'--resume={path}', max_items=100_000, leaf=plain)
    info, loss_kwargs = options.get('dataset_info'), options.get('loss_kwargs')
    schedule = options.get('schedule', {})
    if not (isinstance(options.get('network_kwargs'), dict) and isinstance(loss_kwargs, dict)
            and isinstance(loss_kwargs.get('class_name'), str) and isinstance(options.get('dataset_kwargs'), dict)
            and isinstance(info, dict) and all(_is_int(info.get(k)) for k in ('resolution', 'channels', 'label_dim'))
            and _is_int(options.get('batch_size'), 1) and isinstance(schedule, dict)
            and all(isinstance(schedule.get(k, 0), (int, float)) or schedule.get(k, 0) is None
                    for k in ('ema_rampup_ratio', 'lr_rampup_kimg'))
            and isinstance(schedule.get('lr_rampup_kimg', 0), (int, float))):
        _state_fail(path, '"options" lack network_kwargs, loss_kwargs, dataset_kwargs, dataset_info, batch_size or a '
                          'valid schedule')


def check_resume(state, c, path='--resume'):
    """Raise TrainingStateError (one line) if `state` cannot continue the run configured by `c`: other options, or
    tensors, optimizer or loss state that do not fit the network and optimizer these options build."""
    saved = state['options']
    if saved['loss_kwargs']['class_name'] != c.loss_kwargs.class_name:
        raise TrainingStateError(f'{path} was trained with {printable(saved["loss_kwargs"]["class_name"])}, this run '
                                 f'uses {c.loss_kwargs.class_name} (check --precond)')
    old, new = _structure(saved['network_kwargs']), _structure(_plain(c.network_kwargs))
    for key in sorted(set(old) | set(new), key=str):
        if old.get(key) != new.get(key):
            raise TrainingStateError(f'{path} is from an incompatible run: network option {printable(key)} was '
                                     f'{printable(repr(old.get(key)), 80)}, now {new.get(key)!r}')
    for key in ('resolution', 'channels', 'label_dim'):
        if saved['dataset_info'][key] != c.dataset_info[key]:
            raise TrainingStateError(f'{path} is from an incompatible run: dataset {key} was '
                                     f'{saved["dataset_info"][key]}, now {c.dataset_info[key]}')
    fail = lambda message: _raise(TrainingStateError(f'{printable(path)}: {message}'))  # noqa: E731
    shapes, param_shapes = _network_layout(json.dumps(_plain(dict(c.network_kwargs, **c.dataset_info))))
    for key in ('net', 'ema'):
        missing = sorted(set(shapes) - set(state[key]))
        extra = sorted(printable(k, 80) for k in set(state[key]) - set(shapes))
        if missing or extra:
            fail(f'"{key}" does not match the network: missing {missing[:5]}, unexpected {extra[:5]}')
        for name, tensor in state[key].items():
            if tensor.shape != shapes[name].shape or tensor.dtype != shapes[name].dtype:
                fail(f'"{key}" entry {name} is {tensor.dtype} {list(tensor.shape)}, the network has '
                     f'{shapes[name].dtype} {list(shapes[name].shape)}')
    _check_optimizer_state(state['optimizer'], param_shapes, c.optimizer_kwargs, fail)
    try:
        dnnlib.construct_class_by_name(**c.loss_kwargs).load_state_dict(state['loss'])
    except Exception as e:  # pylint: disable=broad-except
        fail(f'the loss state cannot be loaded ({one_line(e)})')


def _raise(error):
    raise error


@functools.lru_cache(maxsize=4)
def _network_layout(options):
    """(name -> meta tensor of the state dict, parameter shapes in order) of the network for these options (JSON of
    network_kwargs and dataset_info)."""
    options = json.loads(options)
    info = {k: options.pop(k) for k in ('resolution', 'channels', 'label_dim', 'size') if k in options}
    net = _meta_network(dnnlib.EasyDict(network_kwargs=options, dataset_info=dnnlib.EasyDict(info)))
    return dict(net.state_dict()), [p.shape for p in net.parameters()]


def _meta_network(c):
    info = c.dataset_info
    with torch.device('meta'):
        return dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=info.resolution,
                                              img_channels=info.channels, label_dim=info.label_dim)


def _check_optimizer_state(saved, shapes, optimizer_kwargs, fail):
    """The optimizer state must have the layout the optimizer itself writes for these parameter shapes: groups
    covering the parameters in order, and per parameter the entries one step of the same optimizer creates."""
    if set(saved) != {'state', 'param_groups'} or not isinstance(saved['state'], dict) or \
            not isinstance(saved['param_groups'], list) or len(saved['param_groups']) != 1:
        fail('the optimizer state is not {"state": ..., "param_groups": [one group]}')
    group = saved['param_groups'][0]
    if not isinstance(group, dict) or group.get('params') != list(range(len(shapes))):
        fail(f'the optimizer state does not cover the network\'s {len(shapes)} parameters in order')
    cls = dnnlib.util.get_obj_by_name(optimizer_kwargs['class_name'])
    accepted = inspect.signature(cls).parameters
    settings = {k: v for k, v in group.items() if k != 'params'}
    if any(not isinstance(k, str) or k not in accepted for k in settings) or \
            any(not (isinstance(v, (bool, int, float, type(None))) or isinstance(v, (list, tuple)) and len(v) <= 4
                     and all(isinstance(x, (int, float)) for x in v)) for v in settings.values()):
        fail('the optimizer settings are not options of ' + optimizer_kwargs['class_name'])
    try:  # One step of the same optimizer with these settings shows which entries each parameter has.
        probe = torch.nn.Parameter(torch.zeros([2]))
        optimizer = cls([probe], **settings)
        probe.grad = torch.zeros([2])
        optimizer.step()
        template = optimizer.state_dict()['state'][0]
    except Exception as e:  # pylint: disable=broad-except
        fail(f'the optimizer settings cannot be used ({one_line(e)})')
    for index, entries in saved['state'].items():
        if not _is_int(index, 0, len(shapes)) or not isinstance(entries, dict) or set(entries) != set(template):
            fail(f'optimizer state of parameter {printable(repr(index), 20)} does not have the entries '
                 f'{sorted(template)}')
        for key, value in entries.items():
            want = template[key]
            shape = want.shape if want.ndim == 0 else shapes[index]
            if not isinstance(value, torch.Tensor) or value.shape != shape or value.dtype != want.dtype \
                    or not value.is_contiguous():
                fail(f'optimizer entry {printable(key, 40)} of parameter {index} is not a {want.dtype} tensor of '
                     f'shape {list(shape)}')
            if want.ndim == 0 and not (value.isfinite() and value >= 0):   # Counters such as Adam's step.
                fail(f'optimizer entry {printable(key, 40)} of parameter {index} is {value.item()}, expected a '
                     'finite non-negative count')


def load_transfer(path, c, trust_pickle=False):
    """Load the `ema` network of a checkpoint for --transfer/--pretrain and check that it fits. Raises ConfigError."""
    try:
        net = persistence.load_network(path, trust_pickle=trust_pickle)['ema']
    except dnnlib.util.InputError as e:
        raise ConfigError(f'--transfer={printable(path)}: cannot load the network ({e})') from None
    info = c.dataset_info
    for attr, want in (('img_resolution', info.resolution), ('img_channels', info.channels),
                       ('label_dim', info.label_dim)):
        have = getattr(net, attr, None)
        if have is not None and have != want:
            raise ConfigError(f'--transfer={path}: the network has {attr}={have}, but the dataset needs {want}')
    # Same-named tensors must have the same shapes (checked on the meta device: no memory, no time).
    target = _meta_network(c)
    source = net.state_dict()
    for name, tensor in target.state_dict().items():
        if name in source and source[name].shape != tensor.shape:
            raise ConfigError(f'--transfer={path}: "{name}" has shape {list(source[name].shape)} in the checkpoint '
                              f'but {list(tensor.shape)} with these options (check --arch/--cbase/--cres)')
    return net


def apply_training_state(state, net, ema, optimizer, loss_fn, device):
    """Put a checked training state (load_training_state, check_resume) into fresh objects and set this rank's RNG
    state; returns (cur_tick, tick_start_nimg, cur_step)."""
    net.load_state_dict(state.pop('net'))  # Popped: the stored tensors are released once copied.
    ema.load_state_dict(state.pop('ema'))
    optimizer.load_state_dict(state.pop('optimizer'))
    loss_fn.load_state_dict(state['loss'])
    # States that predate the step count: derived from the images seen (exact unless --batch changed).
    cur_step = int(state.get('cur_step', state['cur_nimg'] // state['options']['batch_size']))
    if len(state['rng']) == dist.get_world_size():
        _set_rng_state(state['rng'][dist.get_rank()], device)
    else:
        dist.print0(f'Note: the state was saved by {len(state["rng"])} process(es), this run has '
                    f'{dist.get_world_size()}; dropout noise will not continue the saved streams.')
    return int(state['cur_tick']), int(state['tick_start_nimg']), cur_step


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


def _optimizer_kwargs(optimizer_kwargs, device):
    """The optimizer's arguments, with the fastest implementation of Adam on `device` unless one is named
    (fused where torch supports it: `torch_utils.precision.adam_kwargs`)."""
    kwargs = dict(optimizer_kwargs)
    if kwargs.get('class_name') == 'torch.optim.Adam' and not {'fused', 'foreach'} & set(kwargs):
        kwargs.update(fast.adam_kwargs(device))
    return kwargs


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
    precision='fp32',            # Network precision: fp32, bf16 or fp16 autocast (torch_utils.precision).
    compile_net=False,           # torch.compile the network.
    tf32=False,                  # Allow TF32 on CUDA (EDM trains without).
    device=torch.device('cpu'),
    dataset_info=None,           # Informational (filled in by config.check_dataset).
    max_steps=None,              # Stop after this many optimizer steps of this call (tests, benchmarks).
    snapshot_format='pickle',    # Network snapshots as 'pickle' (EDM layout, .pkl) or 'safetensors' (no code).
):
    """Train; returns a dict with the final `net`, `ema`, `cur_nimg` and the number of steps taken.

    `transfer_net` and the tensors of `resume_state` are consumed: once copied into the run they are released
    (the transfer network is moved to the meta device, the state's net/EMA/optimizer entries are removed), so
    that no second copy of the weights stays in memory.
    """
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
    fast.set_tf32(tf32)
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
    if device.type == 'cuda':
        fast.to_channels_last(net)  # Before DDP and the EMA copy, so both hold channels_last weights.
    dist.print0(f'Parameters: {misc.count_parameters(net):,}')

    # Loss, optimizer, augmentation, EMA.
    loss_fn = dnnlib.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **_optimizer_kwargs(optimizer_kwargs, device))
    augment_pipe = dnnlib.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    if transfer_net is not None:
        misc.copy_params_and_buffers(src_module=transfer_net, dst_module=net, require_all=False)
        transfer_net.to('meta')  # Release its weights.
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    num_references = max(int(getattr(loss_fn, 'reference_size', 0)) - batch_gpu, 0)

    # Per-rank stream of the global generators (EDM's seeding), or the saved one.
    np.random.seed((seed * world_size + rank) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    cur_tick, tick_start_nimg, cur_step = 0, cur_nimg, 0     # cur_step: optimizer steps since the start of training.
    scaler = fast.grad_scaler(precision, device)            # Dynamic loss scaling for fp16; a no-op otherwise.
    if resume_state is not None:
        dist.print0(f'Resuming from {cur_nimg} images...')
        cur_tick, tick_start_nimg, cur_step = apply_training_state(resume_state, net, ema, optimizer, loss_fn, device)
        if resume_state.get('grad_scaler') and scaler.is_enabled():
            scaler.load_state_dict(resume_state['grad_scaler'])
    ddp = net
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
    run_net = fast.wrap(ddp, precision, device, compile=compile_net)   # What the loss calls: autocast, compile.
    fast.release_memory()

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
                images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1
                labels = labels.to(device, non_blocking=True)
                extra = dict(rng=SampleRNG(device, seed, positions.tolist())) if per_sample_rng else {}
                if num_references:
                    extra['reference'] = references
                loss = loss_fn(run_net, images, labels, augment_pipe=augment_pipe, **extra)
                training_stats.report('Loss/loss', loss)
                # EDM: per-sample pixel sums, averaged over the global batch, times the loss scale.
                scaler.scale(loss.sum().mul(loss_scaling / batch_gpu_total)).backward()

        # Learning-rate ramp-up (EDM: linear in images seen), non-finite guard, Adam step.
        ramp = min(cur_nimg / (lr_rampup_kimg * 1000), 1) if lr_rampup_kimg > 0 else 1
        for g in optimizer.param_groups:
            g['lr'] = optimizer_kwargs['lr'] * ramp
        scaler.unscale_(optimizer)  # fp16: undo the dynamic scale and note overflows (before the guard hides them).
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        scaler.step(optimizer)      # fp16: skipped after an overflow.
        scaler.update()

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
                save = persistence.save_safetensors if snapshot_format == 'safetensors' else persistence.save_pickle
                ext = 'safetensors' if snapshot_format == 'safetensors' else 'pkl'
                save(data, os.path.join(run_dir, f'network-snapshot-{kimg_name}.{ext}'))
            del ema_copy
        if state_dump_ticks is not None and (done or (cur_tick != 0 and cur_tick % state_dump_ticks == 0)):
            rng_states = _gather_rng_states(device)
            if rank == 0:
                state = dict(
                    format=STATE_FORMAT, version=STATE_VERSION,
                    net={k: v.detach().cpu() for k, v in net.state_dict().items()},
                    ema={k: v.detach().cpu() for k, v in ema.state_dict().items()},
                    optimizer=optimizer.state_dict(),
                    loss=loss_fn.state_dict(), cur_step=cur_step, grad_scaler=scaler.state_dict(),
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
