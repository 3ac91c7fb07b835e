"""How noise becomes data: time schedules, ODE solvers, GITS schedule search and exact test problems.

Public API (stable):

    samplers.get_schedule(num_steps, sigma_min, sigma_max, schedule_type='polynomial', schedule_rho=7, net=None,
                          device=None)
    samplers.sample(net, latents, class_labels=None, *, solver, num_steps=None, t_steps=None, sigma_min=0.002,
                    sigma_max=80, schedule_type='polynomial', schedule_rho=7, afs=False, denoise_to_zero=False,
                    randn_like=None, return_trajectory=False, **solver_options)
    samplers.gits_schedule(net, num_steps, warmup_latents, class_labels=None, solver_tea='ipndm',
                           num_steps_tea=61, metric='dev', coeff=1.15, sigma_min=0.002, sigma_max=80,
                           schedule_type='polynomial', schedule_rho=7, afs=False, max_order=4, **teacher_options)
    samplers.SOLVERS                      # name -> solver function (without 'edm', which `sample` routes)
    samplers.solver_nfe(solver, num_steps, afs=False, denoise_to_zero=False, **options)
    samplers.solver_defaults(solver)      # accepted options and their defaults

`num_steps` counts timestamps without a trailing zero (the GITS toolbox's meaning), except for solver='edm'.
See docs/samplers.md for accuracy numbers and the differences from the GITS toolbox.
"""

from .schedules import SCHEDULE_TYPES, get_schedule
from .solvers import SOLVERS, SOLVER_DEFAULTS, solver_defaults, solver_nfe
from .sampling import sample
from .gits import gits_schedule, gits_cost_matrix, gits_dp, teacher_trajectory

__all__ = ['SCHEDULE_TYPES', 'get_schedule', 'SOLVERS', 'SOLVER_DEFAULTS', 'solver_defaults', 'solver_nfe',
           'sample', 'gits_schedule', 'gits_cost_matrix', 'gits_dp', 'teacher_trajectory']
