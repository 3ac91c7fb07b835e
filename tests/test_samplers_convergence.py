"""samplers: empirical order of convergence against exact PF-ODE solutions, and convergence as NFE grows."""

import numpy as np
import pytest
import torch

import samplers
from samplers import analytic

# ----------------------------------------------------------------------------
# Order of convergence on a Gaussian (closed-form PF-ODE solution), float64 state, polynomial rho=7 schedule.
#
# The data lie well inside [-1, 1] (means in [-0.3, 0.3], std <= 0.15), so the dynamic thresholding of the
# data-prediction solvers is inactive. The order is the slope of log(error) against log(1 / steps), fitted over
# step counts where the asymptotic regime holds for that method (the rho=7 grid is very uneven, and warm-up or
# lower-order final steps of multistep methods need many steps before they stop dominating).


def gaussian_problem():
    return analytic.order_study_problem()


ORDER_CASES = analytic.ORDER_STUDY


@pytest.mark.parametrize('solver, options, steps, lo, hi', ORDER_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES])
def test_order_of_convergence(solver, options, steps, lo, hi):
    net, z = gaussian_problem()
    exact = net.exact_solution(z * 80, 80.0, 0.002)
    assert exact.abs().max() < 0.95  # thresholding stays inactive
    order, errs = analytic.empirical_order(net, z, solver, steps, **options)
    assert np.all(np.diff(errs) < 0), errs  # error decreases with every doubling
    assert order >= lo, (order, errs)
    if hi is not None:
        assert order <= hi, (order, errs)


# Orders of the methods whose order does not depend on the grid: Euler 1; Heun 2 (Karras et al. 2022, Alg. 1);
# DPM-Solver-2 2 (Lu et al. 2022, Alg. 1); DPM-Solver++(2M) 2 (Lu et al. 2022b, Alg. 2), also as multistep
# DPM-Solver-2 with noise prediction.
PAPER_ORDERS = {('euler', None): 1, ('heun', None): 2, ('dpm', None): 2, ('dpmpp', 2): 2}


def test_order_study_covers_every_solver_at_its_maximum_order():
    assert {c[0] for c in ORDER_CASES} == set(samplers.solver_names(kind='ode'))
    net, z = gaussian_problem()
    t = samplers.get_schedule(6, 0.002, 80, dtype=torch.float64)
    for solver in samplers.solver_names(kind='ode'):
        studied = [c[1]['max_order'] for c in ORDER_CASES if c[0] == solver and 'max_order' in c[1]]
        if 'max_order' not in samplers.solver_defaults(solver):
            assert not studied
            continue
        top = max(studied)  # The highest order the solver accepts: one more is refused.
        samplers.sample(net, z, solver=solver, t_steps=t, max_order=top)
        with pytest.raises(ValueError, match='max_order'):
            samplers.sample(net, z, solver=solver, t_steps=t, max_order=top + 1)
    # Where the paper's order holds on any grid, the measured order is that order.
    measured = 0
    for solver, options, steps, _lo, _hi in ORDER_CASES:
        paper = PAPER_ORDERS.get((solver, options.get('max_order')))
        if paper is not None:
            order, _errs = analytic.empirical_order(net, z, solver, steps, **options)
            assert abs(order - paper) < 0.3, (solver, options, order)  # Measured: 0.98, 2.07, 2.06, 2.05, 2.15.
            measured += 1
    assert measured == 5


def test_gaussian_exact_solution_is_the_ode_solution():
    net, z = gaussian_problem()
    closed = net.exact_solution(z * 80, 80.0, 0.002)
    numeric = analytic.solve_pf_ode(net, z * 80, 80.0, 0.002)
    assert float((closed - numeric).abs().max()) < 1e-9

# ----------------------------------------------------------------------------
# Convergence as NFE grows, on the Gaussian mixture of the golden fixture, with the public float32 path.


@pytest.fixture(scope='module')
def mixture_problem(golden):
    net = analytic.GaussianMixture(golden['mu'], golden['s2'], golden['w'], shape=golden['latents'].shape[1:])
    z = golden['latents'][:2]
    t0, t1 = samplers.get_schedule(2, 0.002, 80)
    exact = analytic.solve_pf_ode(net, z.double() * t0.double(), t0, t1, rtol=1e-9, atol=1e-10)
    return net, z, exact


# (solver, options, largest accepted relative error at NFE 64). Measured: euler 1.9e-2, heun 7.8e-3, dpm 4.5e-3,
# ipndm 6.3e-4, ipndm_v 2.5e-4, deis 3.8e-4 (rhoab 4.8e-4), dpmpp 3.3e-4 (noise 1.2e-4), unipc 1.2e-4.
CONVERGENCE_CASES = [
    ('euler', {}, 0.03), ('heun', {}, 0.015), ('dpm', {}, 0.01), ('ipndm', {}, 2e-3), ('ipndm_v', {}, 1e-3),
    ('deis', {}, 1e-3), ('deis', dict(deis_mode='rhoab'), 1e-3), ('dpmpp', {}, 1e-3),
    ('dpmpp', dict(predict_x0=False), 5e-4), ('unipc', {}, 5e-4), ('unipc', dict(variant='bh1'), 5e-4),
]


@pytest.mark.parametrize('solver, options, tol', CONVERGENCE_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in CONVERGENCE_CASES])
def test_convergence_as_nfe_grows(mixture_problem, solver, options, tol):
    net, z, exact = mixture_problem
    errs = []
    for nfe in (8, 16, 32, 64):
        per_step = 2 if solver in ('heun', 'dpm') else 1
        x = samplers.sample(net, z, solver=solver, num_steps=nfe // per_step + 1, **options)
        errs.append(float(((x.double() - exact).norm() / exact.norm())))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < tol, errs
    assert errs[-1] < errs[0] / (4 if solver == 'euler' else 8), errs  # 8x the NFE
