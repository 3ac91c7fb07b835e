"""How noise becomes data: time schedules, the solver registry, GITS schedule search, CLD's gDDIM sampler and exact
test problems.

Public API (stable):

    samplers.sample(net, latents, class_labels=None, *, solver, num_steps=None, t_steps=None, sigma_min=0.002,
                    sigma_max=80, schedule_type='polynomial', schedule_rho=7, afs=False, denoise_to_zero=False,
                    randn_like=None, generator=None, prior=None, callback=None, return_trajectory=False,
                    model_kwargs=None, precision=None, **solver_options)
    samplers.get_schedule(num_steps, sigma_min, sigma_max, schedule_type='polynomial', schedule_rho=7, net=None,
                          device=None)
    samplers.gits_schedule(net, num_steps, warmup_latents, class_labels=None, solver_tea='ipndm',
                           num_steps_tea=61, metric='dev', coeff=1.15, sigma_min=0.002, sigma_max=80,
                           schedule_type='polynomial', schedule_rho=7, afs=False, max_order=4, **teacher_options)
    samplers.learn_schedule(net, num_steps, warmup_latents, class_labels=None, *, solver, teacher=None,
                            sigma_min=0.002, sigma_max=80, afs=False, denoise_to_zero=False, **solver_options)
    samplers.SOLVERS                      # name -> SolverSpec (read-only), registration order
    samplers.register_solver(spec)        # add a solver (see samplers.registry)
    samplers.solver_nfe(solver, num_steps, afs=False, denoise_to_zero=False, **options)
    samplers.solver_cost(solver, num_steps, t_steps=None, **options)  # passes by sort: forward, jvp, jvp2
    samplers.solver_defaults(solver)      # accepted options and their defaults
    samplers.StepRecord                   # what callbacks receive
    samplers.gaussian_prior               # the default prior hook (see samplers.priors)
    samplers.pfgmpp.student_t_prior(D)    # PFGM++'s prior hook (docs/fdm_pfgmpp.md)
    samplers.sweeps                       # checkpoint and robustness sweeps of a run directory

`num_steps` counts timestamps without a trailing zero (the GITS toolbox's meaning) for 'ode' solvers, noise
levels before the final zero (EDM's meaning) for 'edm' solvers (EDM Algorithm 2 `edm`, the Itô–Taylor SDE
sampler `itotaylor` of docs/itotaylor.md and its Euler–Maruyama baseline `edm_em`), and timestamps of gDDIM's time
grid for the 'cld' solvers `gddim` and `cld_em`, which sample CLD nets (`samplers.cld`; NFE = num_steps, default
50). See docs/samplers.md for accuracy numbers and the differences from the GITS toolbox, docs/cld_gddim.md for CLD.
"""

from .registry import (COST_NAMES, SOLVERS, SolverSpec, check_solver_options, get_solver, option_names,
                       register_solver, solver_cost, solver_defaults, solver_names, solver_nfe, unregister_solver)
from .schedules import SCHEDULE_TYPES, edm_schedule, get_schedule
from .stepping import Step, StepRecord
from .priors import gaussian_prior
from .sampling import sample
# Registration order: 'edm', the 'ode' solvers, the 'cld' ones, then the SDE solvers itotaylor and edm_em.
from . import edm, solvers, singlestep, gddim, itotaylor  # noqa: F401
from .gits import gits_schedule, gits_cost_matrix, gits_dp, teacher_trajectory
from .learn import learn_schedule

__all__ = ['SCHEDULE_TYPES', 'get_schedule', 'edm_schedule', 'SOLVERS', 'SolverSpec', 'register_solver',
           'unregister_solver', 'get_solver', 'solver_names', 'option_names', 'solver_defaults',
           'check_solver_options', 'solver_nfe', 'solver_cost', 'COST_NAMES', 'Step', 'StepRecord', 'gaussian_prior',
           'sample', 'gits_schedule', 'gits_cost_matrix', 'gits_dp', 'teacher_trajectory', 'learn_schedule']
