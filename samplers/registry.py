"""The solver registry: every solver is described once, by a `SolverSpec`.

Everything that lists, checks or counts solvers reads this table: `samplers.sample` (dispatch and option checks),
`samplers.solver_nfe`, the GITS teacher and student choice, `generate.py` (`--solver` choices, option routing, the
NFE report), the samplers benchmark and `docs/samplers.md`. Adding a solver is one `register_solver` call:

    samplers.register_solver(samplers.SolverSpec(
        name='my_solver', fn=my_rule, defaults=dict(max_order=2), evals_per_step=1, max_order=2,
        doc='My solver (Author 2025).'))

Solver kinds (`SolverSpec.kind`):
- 'ode': an update rule run by the shared stepping loop (`samplers.stepping.integrate`) over a schedule of
  `num_steps` timestamps without a trailing zero (the GITS toolbox's meaning); supports AFS, `denoise_to_zero`
  and explicit `t_steps`. `fn(s, **options) -> x_next` receives one `samplers.stepping.Step`.
- 'edm': a complete loop over an EDM schedule (`num_steps` noise levels plus a final zero, EDM's meaning;
  `schedule_rho` is EDM's rho) with float64 state: `fn(net, x, t_steps, class_labels, *, randn_like, callback,
  model_kwargs, **options) -> x`.
- 'cld': a complete loop for a CLD net (`samplers.cld` contract) over gDDIM's time grid
  (`samplers.gddim.time_steps(num_steps)`), started from the state u = (x, v) that the prior hook draws; same call
  as 'edm', returning the images x. These solvers have needs='cld'.
"""

import dataclasses
import types
from typing import Callable, Optional

KINDS = ('ode', 'edm', 'cld')
NEEDS = ('denoiser', 'jvp', 'cld')  # what the solver asks of the model: D(x; sigma), also JVPs of D, or a CLD net
# The sorts of network pass a `SolverSpec.cost` counts: plain forward passes, first-order Jacobian-vector products
# (one pass on dual numbers, which also returns D) and nested forward-over-forward JVPs (second derivatives).
COST_NAMES = dict(forward='forward pass', jvp='JVP', jvp2='nested JVP')


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """What the toolkit needs to know about one solver.

    name: the `solver=` / `--solver` name.
    fn: the update rule ('ode') or the loop ('edm', 'cld'); see the module docstring.
    defaults: the options the solver accepts, with their defaults (anything else is refused).
    evals_per_step: model evaluations per step (NFE = evals_per_step * steps, adjusted by `nfe`).
    nfe: optional `nfe(num_steps, options) -> int` replacing the default count (before AFS/denoise_to_zero).
    cost: optional `cost(num_steps, options, t_steps=None) -> dict` for solvers whose network passes are not all
      plain forward passes: the number of passes of each sort (keys of `COST_NAMES`, e.g. forward passes and JVPs);
      `t_steps` is the solver's schedule where the count depends on it. Without `nfe`, NFE is their sum.
    prepare: optional `prepare(t_steps, **options) -> options`, run once per sampling call: checks
      the options and precomputes what every step needs (e.g. a coefficient table); its result goes to `fn`.
    schedule: optional `schedule(num_steps, sigma_min, sigma_max, device=None, dtype=None, **options) -> t_steps`
      ('ode' kind): the solver's own default timestamps, used instead of `get_schedule` (schedule_type and
      schedule_rho are then not used) and without clipping sigma_min/sigma_max to the net's range; explicit
      `t_steps` still take precedence.
    state_dtype: dtype of the state for the 'ode' kind (None: float32 unless the latents are float64), e.g.
      torch.float64 for a solver that reproduces a reference integrating in float64.
    max_order: highest value of the `max_order` option (None if the solver has no such option).
    order: convergence order of the method (documentation and benchmarks).
    stochastic: the solver draws noise (through `randn_like` only).
    needs: 'denoiser', 'jvp' (scalar-sigma denoisers) or 'cld' (CLD nets, `samplers.cld`).
    teacher: usable as a GITS teacher (reports the first-stage derivative of the state it carries).
    doc: one line for listings (`--help`, docs/samplers.md).
    """
    name: str
    fn: Callable
    defaults: dict = dataclasses.field(default_factory=dict)
    kind: str = 'ode'
    evals_per_step: int = 1
    nfe: Optional[Callable] = None
    cost: Optional[Callable] = None
    prepare: Optional[Callable] = None
    schedule: Optional[Callable] = None
    state_dtype: Optional[object] = None
    max_order: Optional[int] = None
    order: Optional[float] = None
    stochastic: bool = False
    needs: str = 'denoiser'
    teacher: bool = True
    doc: str = ''

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'SolverSpec {self.name!r}: kind must be one of {", ".join(KINDS)} (got {self.kind!r})')
        if self.needs not in NEEDS:
            raise ValueError(f'SolverSpec {self.name!r}: needs must be one of {", ".join(NEEDS)}')
        if (self.max_order is None) != ('max_order' not in self.defaults):
            raise ValueError(f'SolverSpec {self.name!r}: max_order and defaults["max_order"] go together')

    def count_nfe(self, num_steps, afs=False, denoise_to_zero=False, t_steps=None, **options):
        """Model evaluations of `samplers.sample(solver=name, num_steps=num_steps, ...)` (a JVP counts as one)."""
        options = self.check_options(options)
        num_steps = int(num_steps)
        if self.nfe is not None:
            nfe = self.nfe(num_steps, options)
        elif self.cost is not None:
            nfe = sum(self.cost(num_steps, options, t_steps).values())
        else:
            steps = num_steps - 1 if self.kind == 'ode' else num_steps
            nfe = self.evals_per_step * steps
        if self.kind == 'ode':
            nfe += int(bool(denoise_to_zero)) - int(bool(afs))
        return nfe

    def count_cost(self, num_steps, t_steps=None, **options):
        """Network passes of each sort (keys of `COST_NAMES`); all plain forward passes unless `cost` is given."""
        if self.cost is None:
            return dict(forward=self.count_nfe(num_steps, **options))
        return dict(self.cost(int(num_steps), self.check_options(options), t_steps))

    def check_options(self, options):
        """Options merged with the defaults; TypeError naming any option the solver does not accept."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            accepted = ', '.join(self.defaults) if self.defaults else 'none'
            raise TypeError(f'solver {self.name!r} does not accept option(s) {", ".join(unknown)} '
                            f'(accepted: {accepted})')
        return {**self.defaults, **options}


_registry = {}
SOLVERS = types.MappingProxyType(_registry)  # name -> SolverSpec, in registration order (read-only view)


def register_solver(spec):
    """Add `spec` to the registry (replacing a solver of the same name); returns it."""
    if not isinstance(spec, SolverSpec):
        raise TypeError(f'register_solver expects a SolverSpec (got {type(spec).__name__})')
    _registry[spec.name] = spec
    return spec


def unregister_solver(name):
    """Remove a registered solver (tests, plug-ins)."""
    _registry.pop(name, None)


def get_solver(name):
    """The `SolverSpec` of `name`; ValueError listing the registered names otherwise."""
    spec = _registry.get(name)
    if spec is None:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(_registry)}")
    return spec


def solver_names(kind=None, teacher=None, stochastic=None, needs=None):
    """Registered names, optionally filtered by kind, GITS-teacher capability, stochasticity or what they need."""
    return [s.name for s in _registry.values() if (kind is None or s.kind == kind)
            and (teacher is None or s.teacher == teacher) and (stochastic is None or s.stochastic == stochastic)
            and (needs is None or s.needs == needs)]


def option_names():
    """Every option some registered solver accepts (generate.py routes exactly these)."""
    names = []
    for spec in _registry.values():
        names += [k for k in spec.defaults if k not in names]
    return names


def solver_defaults(solver):
    """The options `solver` accepts, with their defaults."""
    return dict(get_solver(solver).defaults)


def check_solver_options(solver, options):
    """Raise TypeError naming any option `solver` does not accept; return options merged with defaults."""
    return get_solver(solver).check_options(options)


def solver_cost(solver, num_steps, t_steps=None, **options):
    """Network passes of each sort (`COST_NAMES`) of `samplers.sample(solver=..., num_steps=...)`; `t_steps`, the
    solver's schedule, where the count depends on it (e.g. `itotaylor` with a noise window [S_min, S_max])."""
    return get_solver(solver).count_cost(num_steps, t_steps=t_steps, **options)


def describe_cost(cost):
    """'1 forward pass + 3 JVPs + 3 nested JVPs' (sorts that occur, in the order of `COST_NAMES`)."""
    parts = [f'{cost[k]} {name}{"es" if name.endswith("s") else "s"}' if cost[k] != 1 else f'1 {name}'
             for k, name in COST_NAMES.items() if cost.get(k)]
    return ' + '.join(parts) or 'no network pass'


def solver_nfe(solver, num_steps, afs=False, denoise_to_zero=False, **options):
    """Number of net evaluations of `samplers.sample(solver=..., num_steps=...)`.

    num_steps counts timestamps for 'ode' solvers (for GITS+AFS schedules pass their length) and noise levels
    before the final zero for 'edm' solvers (EDM's meaning; solver 'edm' has NFE = 2 num_steps - 1). 'cld'
    solvers count timestamps too and end with a denoising call: NFE = num_steps.
    """
    return get_solver(solver).count_nfe(num_steps, afs=afs, denoise_to_zero=denoise_to_zero, **options)


__all__ = ['SolverSpec', 'SOLVERS', 'COST_NAMES', 'register_solver', 'unregister_solver', 'get_solver', 'solver_names',
           'option_names', 'solver_defaults', 'check_solver_options', 'solver_cost', 'describe_cost', 'solver_nfe']
