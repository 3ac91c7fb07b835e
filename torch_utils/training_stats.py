"""Scalar statistics reported during training and averaged over all ranks (EDM's training_stats interface).

`report(name, value)` adds the elements of `value` to a running count, sum and sum of squares for `name`;
`Collector.update()` reduces those moments over every rank (one all_reduce for all names) and exposes
`num`, `mean` and `std` for the interval since the previous update. Every rank must report the same names
(use `report0` for values that only rank 0 knows).
"""

import re

import numpy as np
import torch

_num_moments = 3                  # [count, sum, sum of squares]
_dtype = torch.float64            # Moments are accumulated in float64.
_rank = 0                         # Set by init_multiprocessing().
_sync_device = None               # Device for the all_reduce; None means a single process.
_counters = dict()                # name -> moments accumulated since the last Collector.update().
_cumulative = dict()              # name -> moments accumulated over the whole run (synchronised).

# ----------------------------------------------------------------------------


def init_multiprocessing(rank, sync_device):
    """Tell the module this process's rank and the device used to reduce over ranks (None: one process)."""
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device


def report(name, value):
    """Record the elements of `value` (scalar, array or tensor) under `name`. Returns `value` unchanged."""
    moments = _counters.setdefault(name, torch.zeros([_num_moments], dtype=_dtype))
    elems = torch.as_tensor(value).detach().flatten().to(_dtype).cpu()
    if elems.numel():
        moments += torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    return value


def report0(name, value):
    """Like `report`, but only rank 0's value counts (the others register the name with no elements)."""
    report(name, value if _rank == 0 else [])
    return value


def reset():
    """Forget everything reported so far (between independent runs in one process)."""
    _counters.clear()
    _cumulative.clear()

# ----------------------------------------------------------------------------


class Collector:
    """Moments of the reported statistics over the interval between two `update()` calls.

    `regex` selects names; with `keep_previous` a name that received nothing in the last interval keeps its
    previous values instead of disappearing.
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen = dict()       # name -> cumulative moments at the previous update.
        self._moments = dict()    # name -> moments of the last interval.

    def names(self):
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self):
        """Reduce over ranks and compute the moments of the interval since the previous call (collective)."""
        names = self.names()
        totals = _sync(names)
        if not self._keep_previous:
            self._moments.clear()
        for name, total in zip(names, totals):
            delta = total - self._seen.get(name, torch.zeros_like(total))
            self._seen[name] = total
            if delta[0] > 0 or not self._keep_previous:
                self._moments[name] = delta

    def _get(self, name):
        return self._moments.get(name, torch.zeros([_num_moments], dtype=_dtype))

    def num(self, name):
        return int(self._get(name)[0])

    def mean(self, name):
        count, total, _ = self._get(name).tolist()
        return total / count if count else float('nan')

    def std(self, name):
        count, total, squares = self._get(name).tolist()
        if not count:
            return float('nan')
        mean = total / count
        return float(np.sqrt(max(squares / count - mean ** 2, 0)))

    def as_dict(self):
        """{name: {'num', 'mean', 'std'}} for every name with data, in report order."""
        return {name: dict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                for name in self._moments}

    def __getitem__(self, name):
        return self.mean(name)


def _sync(names):
    """Add this rank's pending moments to the cumulative totals, summed over ranks; returns them for `names`."""
    if not names:
        return []
    pending = torch.stack([_counters[name] for name in names])
    for name in names:
        _counters[name] = torch.zeros([_num_moments], dtype=_dtype)
    if _sync_device is not None and torch.distributed.is_initialized():
        pending = pending.to(_sync_device)
        torch.distributed.all_reduce(pending)
        pending = pending.cpu()
    totals = []
    for name, delta in zip(names, pending):
        _cumulative[name] = _cumulative.get(name, torch.zeros([_num_moments], dtype=_dtype)) + delta
        totals.append(_cumulative[name].clone())
    return totals


default_collector = Collector(regex='.*', keep_previous=False)
