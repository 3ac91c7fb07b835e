"""samplers: empirical order of convergence against exact PF-ODE solutions, and convergence as NFE grows."""

import numpy as np
import pytest
import torch

from conftest import fixtures_dir

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


def test_order_study_covers_every_solver_at_its_maximum_order():
    assert {c[0] for c in ORDER_CASES} == set(samplers.solver_names(kind='ode'))
    highest = dict(ipndm=4, ipndm_v=4, deis=4, dpmpp=3, unipc=3, dpmpp_singlestep=3)
    for solver, options, steps, lo, hi in ORDER_CASES:
        if solver == 'euler':
            assert (lo, hi) == (0.7, 1.3)
        elif solver in ('heun', 'dpm') or (solver == 'dpmpp' and options['max_order'] == 2):
            assert (lo, hi) == (1.7, 2.3)
        else:
            assert lo >= 1.7 and options['max_order'] == highest[solver]
    assert {c[1]['max_order'] for c in ORDER_CASES if c[0] == 'dpmpp'} == {2, 3}


def test_gaussian_exact_solution_is_the_ode_solution():
    net, z = gaussian_problem()
    closed = net.exact_solution(z * 80, 80.0, 0.002)
    numeric = analytic.solve_pf_ode(net, z * 80, 80.0, 0.002)
    assert float((closed - numeric).abs().max()) < 1e-9

# ----------------------------------------------------------------------------
# Convergence as NFE grows, on the Gaussian mixture of the golden fixture, with the public float32 path.


@pytest.fixture(scope='module')
def mixture_problem():
    d = torch.load(fixtures_dir('samplers', 'gits_reference_cases.pt'), weights_only=True)
    net = analytic.GaussianMixture(d['mu'], d['s2'], d['w'], shape=d['latents'].shape[1:])
    z = d['latents'][:2]
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
