"""The stepping loop shared by the 'ode' solvers: model calls, AFS, history, callback records.

A solver's update rule sees one `Step` and returns the next state; the loop does everything else:

    for i in 0..N-2:  d = first-stage derivative at (x_i, t_i)   (one net call; analytic on the AFS step;
                                                                   reused when the rule evaluated it already)
                      x_{i+1} = rule(Step(i, t_i, t_{i+1}, x_i, d, history, ...), **options)
                      callback(StepRecord(i, t_i, t_{i+1}, x_i, x_{i+1}, d))

The derivative is that of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022,
eq. 1 and 3 with sigma(t) = t, s(t) = 1). AFS (analytical first step of AMED-Solver, Zhou et al. 2024, as in the
GITS toolbox) replaces the first net call by d_0 = x_0 / sqrt(1 + t_0^2).
"""

import dataclasses
from typing import Any, Callable, Optional

import torch


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """What a callback receives after every step (also used for trajectories and GITS teachers).

    d_cur: the first-stage derivative the step used at (x_cur, t_cur) (for EDM's sampler: at the churned point).
    """
    i: int
    t_cur: torch.Tensor
    t_next: torch.Tensor
    x_cur: torch.Tensor
    x_next: torch.Tensor
    d_cur: torch.Tensor


class Model:
    """The net as the solvers call it: fixed class labels and keyword arguments, output in the state dtype."""

    def __init__(self, net, class_labels=None, model_kwargs=None):
        self.net, self.class_labels, self.kwargs = net, class_labels, model_kwargs or {}

    def denoise(self, x, t):
        """D(x; t) in the dtype of x."""
        return self.net(x, t, self.class_labels, **self.kwargs).to(x.dtype)

    def derivative(self, x, t):
        """dx/dt = (x - D(x; t)) / t (Karras et al. 2022, eq. 1 and 3)."""
        return (x - self.denoise(x, t)) / t


def afs_derivative(x, t):
    """Analytical first step (Zhou et al. 2024, AMED-Solver): at t_0 >> 1, D ~ 0, so d ~ x / sqrt(1 + t^2)."""
    return x / torch.sqrt(1 + t ** 2)


@dataclasses.dataclass
class Step:
    """One step as an update rule sees it.

    i, num: step index and number of steps (N - 1); t_cur, t_next, x: the step; d: the first-stage derivative
    at (x_eval, t_cur), where x_eval is x unless the previous step set `reuse`; history: earlier Steps, newest
    first (their `keep` holds what the rule stored); model: `Model`; randn_like: the noise source; t_steps: the
    whole schedule.

    A rule may set `keep` (stored for later steps; default d), `reuse = (x_eval, d)` (an evaluation at t_next
    that the next step takes as its first stage instead of calling the net) and `d_report` (the derivative
    reported to callbacks; default d).
    """
    i: int
    num: int
    t_cur: torch.Tensor
    t_next: torch.Tensor
    x: torch.Tensor
    d: torch.Tensor
    x_eval: torch.Tensor
    history: list
    model: Model
    randn_like: Callable
    t_steps: torch.Tensor
    keep: Any = None
    reuse: Optional[tuple] = None
    d_report: Optional[torch.Tensor] = None

    @property
    def h(self):
        """The sigma increment t_next - t_cur (negative)."""
        return self.t_next - self.t_cur


def integrate(rule, net, x, t_steps, class_labels=None, *, afs=False, callback=None, model_kwargs=None,
              randn_like=None, history=3, **options):
    """Run `rule` over the schedule from state `x` at t_steps[0]; return the state at t_steps[-1].

    history: how many past Steps a rule may look at (older ones are dropped).
    """
    model = Model(net, class_labels, model_kwargs)
    randn_like = torch.randn_like if randn_like is None else randn_like
    past, reuse = [], None
    num = len(t_steps) - 1
    for i in range(num):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        if reuse is not None:
            x_eval, d = reuse
        else:
            x_eval, d = x, (afs_derivative(x, t_cur) if afs and i == 0 else model.derivative(x, t_cur))
        s = Step(i, num, t_cur, t_next, x, d, x_eval, past, model, randn_like, t_steps)
        x_next = rule(s, **options)
        if callback is not None:
            callback(StepRecord(i, t_cur, t_next, x, x_next, d if s.d_report is None else s.d_report))
        if s.keep is None:
            s.keep = d
        s.history = None  # no chain of references from one step to all earlier ones
        past = [s] + past[:history - 1] if history > 0 else []
        reuse = s.reuse
        x = x_next
    return x


__all__ = ['StepRecord', 'Step', 'Model', 'afs_derivative', 'integrate']
