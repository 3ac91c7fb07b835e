"""Small helpers: per-seed random generators, parameter copying, DDP checks."""

import re

import numpy as np
import torch

# ----------------------------------------------------------------------------


class StackedRandomGenerator:
    """One `torch.Generator` per seed, so each sample's randomness depends only on its own seed.

    Same semantics and draw order as EDM's generate.py: sample i of a batch is drawn from the generator seeded
    with `seeds[i] % 2**32`, whatever the batch size or the number of processes.
    """

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def rand(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.rand(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])

# ----------------------------------------------------------------------------


def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy parameters and buffers from `src_module` into same-named ones of `dst_module`."""
    assert isinstance(src_module, torch.nn.Module) and isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(src_module.named_parameters())
    src_tensors.update(dict(src_module.named_buffers()))
    for name, tensor in list(dst_module.named_parameters()) + list(dst_module.named_buffers()):
        if name in src_tensors:
            if src_tensors[name].shape != tensor.shape:
                raise ValueError(f'cannot copy "{name}": shape {tuple(src_tensors[name].shape)} '
                                 f'!= {tuple(tensor.shape)}')
            with torch.no_grad():
                tensor.copy_(src_tensors[name])
        elif require_all:
            raise ValueError(f'"{name}" is missing in the source network')


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every rank holds the same parameters and buffers (no-op for one process)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if ignore_regex is not None and re.fullmatch(ignore_regex, name):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        if not (tensor == other).all():
            raise RuntimeError(f'parameter/buffer "{name}" differs between ranks')


def randomize_parameters(module, generator, draw_dtype=torch.float32):
    """Random weights in every layer, for tests and benchmarks (a network's own initialisation zeroes its output
    layers, which makes its output trivially 0): fan-in-scaled normal weights, norm gains 1 + 0.1 N(0, 1), other
    vectors 0.1 N(0, 1). Draws in `draw_dtype` from `generator`; returns `module`."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=generator, dtype=draw_dtype).to(p.dtype)
            if p.ndim > 1:
                p.copy_(r / np.sqrt(p[0].numel()))
            elif 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)
    return module


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A constant tensor (EDM-era code imports `misc.constant`): dtype defaults to torch's default dtype."""
    value = np.asarray(value)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
    if shape is not None:
        tensor = tensor.broadcast_to(shape)
    return tensor.contiguous(memory_format=memory_format or torch.contiguous_format)
