"""One process or many under `torchrun`: the same code path.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) when present and
joins the process group (gloo on CPU, nccl on CUDA); without torchrun it does nothing and the run is a single
process. Multi-node runs use torchrun's own rendezvous.
"""

import os

import torch

_device = None

# ----------------------------------------------------------------------------


def launched_by_torchrun():
    return 'WORLD_SIZE' in os.environ and 'RANK' in os.environ


def init(device=None):
    """Join the process group if launched by torchrun. Returns the device this rank should use.

    `device`: 'cpu', 'cuda' or None (CUDA if available). Under torchrun each rank uses cuda:LOCAL_RANK.
    Idempotent.
    """
    global _device
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('CUDA was requested but is not available; use --device=cpu')
        if device.index is None:
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    if launched_by_torchrun() and int(os.environ['WORLD_SIZE']) > 1 and not torch.distributed.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend=backend, init_method='env://')
    _device = device
    try:
        from . import training_stats
    except ImportError:
        training_stats = None
    if hasattr(training_stats, 'init_multiprocessing'):
        sync_device = device if get_world_size() > 1 else None
        training_stats.init_multiprocessing(rank=get_rank(), sync_device=sync_device)
    return device


def device():
    """The device chosen by init() (CPU before init)."""
    return _device if _device is not None else torch.device('cpu')


def shutdown():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def get_rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def print0(*args, **kwargs):
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(tensor):
    """Sum `tensor` over ranks, in place (no-op for a single process). Returns the tensor."""
    if torch.distributed.is_initialized() and get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src=0):
    """Send a picklable object from rank `src` to every rank (identity for a single process)."""
    if not torch.distributed.is_initialized() or get_world_size() == 1:
        return obj
    buf = [obj]
    torch.distributed.broadcast_object_list(buf, src=src)
    return buf[0]


def rank_batches(num_items, max_batch_size, rank=None, world_size=None):
    """Split item indices 0..num_items-1 into this rank's batches (EDM's scheme).

    There are ceil(num_items / (max_batch_size * W)) * W near-equal consecutive batches; rank r takes batches
    r, r + W, r + 2W, ... so every rank runs the same number of iterations (some batches may be empty).
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    num_batches = max((num_items - 1) // (max_batch_size * world_size) + 1, 1) * world_size
    all_batches = torch.arange(num_items).tensor_split(num_batches)
    return list(all_batches[rank::world_size])
