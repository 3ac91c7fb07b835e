"""How a network runs: reduced precision (autocast), channels_last, torch.compile, TF32 and Adam's implementation.

`precision` (`--precision` of generate.py, train.py and example.py; `precision=` of `samplers.sample` and `wrap`):

- ``fp32``: the network computes in float32 (the default; exact, the golden fixtures hold).
- ``bf16``: the network call runs under ``torch.autocast`` with bfloat16, on the CPU and on CUDA. Convolutions and
  matrix products run in bf16; autocast keeps its float32 operations in float32. Training needs no loss scaling.
- ``fp16``: the same with float16, CUDA only; training scales the loss dynamically (`grad_scaler`).

Only the network call is autocast (`wrap`): the sampler state, the ODE arithmetic and the preconditioner's
c_skip x + c_out F keep their own precision. Under autocast the preconditioners turn off EDM's own fp16 path
(`use_fp16`, set by train.py's `--fp16=1`): autocast alone decides. docs/design.md describes the defaults.
"""

import contextlib
import copy
import ctypes
import gc
import platform

import torch

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class PrecisionError(ValueError):
    """A precision the device cannot run; the message is one line."""


def autocast_dtype(precision):
    """The autocast dtype of a precision name (None for fp32)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    return PRECISIONS[precision]


def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86; oneDNN's check elsewhere)."""
    probes = [getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    if platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686') and all(probes):
        return any(probe() for probe in probes)
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check(precision, device):
    """Raise PrecisionError if `device` cannot run `precision`; return a warning (str) if it runs slowly, else None."""
    dtype = autocast_dtype(precision)
    device = torch.device(device)
    if dtype is None:
        return None
    if device.type not in ('cpu', 'cuda'):
        raise PrecisionError(f'precision {precision} needs a cpu or cuda device, not {device.type}')
    if device.type == 'cpu' and dtype == torch.float16:
        raise PrecisionError('fp16 needs CUDA; on the CPU use bf16 or fp32')
    if device.type == 'cuda' and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f'this GPU ({torch.cuda.get_device_name(device)}) does not support bf16; use fp16')
    if device.type == 'cpu' and not cpu_has_native_bf16():
        return 'this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX): bf16 will be slower than fp32'
    return None


def autocast(precision, device):
    """Context manager: `torch.autocast` for bf16/fp16 on `device`'s type, nothing for fp32."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)

# ----------------------------------------------------------------------------
# Running a network.


def _device_of(net, device=None):
    if device is not None:
        return torch.device(device)
    params = getattr(net, 'parameters', None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device('cpu')


def to_channels_last(module):
    """Convert the 4-D parameters and buffers of `module` to channels_last in place (those already converted are
    left alone, so a module that DistributedDataParallel wraps can be converted before it is wrapped)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        module.to(memory_format=torch.channels_last)
    return module


class WrappedNet:
    """A network called under a precision (autocast), with channels_last inputs and/or torch.compile.

    Calling it calls the network; every other attribute (sigma_min, round_sigma, label_dim, ...) is the network's
    own, so samplers and losses use it in place of the network. Outputs have the contiguous layout.
    """

    def __init__(self, net, precision='fp32', device=None, channels_last=False, compile=False):
        self.__dict__.update(net=net, precision=precision, device=_device_of(net, device),
                             channels_last=bool(channels_last), compiled=bool(compile))
        self.__dict__['call'] = torch.compile(net) if compile else net

    def __call__(self, x, *args, **kwargs):
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            y = self.call(x, *args, **kwargs)
        return y.contiguous() if self.channels_last and isinstance(y, torch.Tensor) else y

    def __deepcopy__(self, memo):  # A copy of the network, run the same way (compiled anew if compiled).
        return WrappedNet(copy.deepcopy(self.net, memo), self.precision, self.device, self.channels_last,
                          self.compiled)

    def __getattr__(self, name):
        net = self.__dict__.get('net')
        if net is None:  # Not yet initialised (copy, unpickling).
            raise AttributeError(name)
        return getattr(net, name)

    def __repr__(self):
        return (f'WrappedNet({type(self.net).__name__}, precision={self.precision!r}, '
                f'channels_last={self.channels_last}, compile={self.compiled})')


def wrap(net, precision='fp32', device=None, channels_last=None, compile=False):
    """`net` as it should run: under autocast for bf16/fp16, channels_last (default: on CUDA), compiled on request.

    Returns `net` itself when nothing applies (fp32 on the CPU without compile), so the default path is unchanged.
    channels_last converts the network's 4-D parameters in place. Raises PrecisionError for what the device cannot
    do (`check` also tells what runs slowly).
    """
    device = _device_of(net, device)
    check(precision, device)
    if channels_last is None:
        channels_last = device.type == 'cuda'
    if precision == 'fp32' and not channels_last and not compile:
        return net
    if channels_last and isinstance(net, torch.nn.Module):
        to_channels_last(net)
    return WrappedNet(net, precision, device, channels_last, compile)


def unwrap(net):
    """The network inside a `WrappedNet` (or `net` itself)."""
    return net.net if isinstance(net, WrappedNet) else net

# ----------------------------------------------------------------------------
# Training: loss scaling, Adam, TF32.


def grad_scaler(precision, device):
    """Dynamic loss scaling for fp16 training (torch.amp.GradScaler); a disabled scaler (a no-op) otherwise."""
    enabled = autocast_dtype(precision) == torch.float16
    return torch.amp.GradScaler(torch.device(device).type, enabled=enabled)


def adam_kwargs(device, params=None):
    """Fastest Adam implementation that torch offers on `device`: {'fused': True} where it is supported (CUDA, and
    the CPU since torch 2.4), else {'foreach': True} on CUDA, else {} (torch's default)."""
    device = torch.device(device)
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.Adam([probe], fused=True)
        return dict(fused=True)
    except (RuntimeError, TypeError, ValueError):
        return dict(foreach=True) if device.type == 'cuda' else {}


def set_tf32(enabled):
    """Allow (or forbid) TF32 in CUDA matrix products and cuDNN convolutions (Ampere and later GPUs)."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, 'conv', None)
    if hasattr(matmul, 'fp32_precision') and conv is not None and hasattr(conv, 'fp32_precision'):
        matmul.fp32_precision = conv.fp32_precision = 'tf32' if enabled else 'ieee'
    else:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)

# ----------------------------------------------------------------------------
# Memory.


def release_memory():
    """Collect garbage and give freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Loading a checkpoint frees a transient copy of the weights in many pieces; glibc keeps those pages, and the
    later sampling or training allocations (larger blocks, served by mmap) do not reuse them, so without this the
    resident memory would carry the freed copy for the whole run.
    """
    gc.collect()
    if platform.system() == 'Linux':
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass


__all__ = ['PRECISIONS', 'PrecisionError', 'autocast_dtype', 'cpu_has_native_bf16', 'check', 'autocast',
           'to_channels_last', 'WrappedNet', 'wrap', 'unwrap', 'grad_scaler', 'adam_kwargs', 'set_tf32',
           'release_memory']
