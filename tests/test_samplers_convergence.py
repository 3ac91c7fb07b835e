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
    g = torch.Generator().manual_seed(0)
    mean = 0.6 * (torch.rand(2, 4, 4, generator=g, dtype=torch.float64) - 0.5)
    var = 0.005 + 0.015 * torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    return analytic.Gaussian(mean, var), z


def measured_order(net, z, solver, steps, **options):
    errs = []
    for n in steps:
        t = samplers.get_schedule(n + 1, 0.002, 80, dtype=torch.float64)
        x = samplers.sample(net, z, solver=solver, t_steps=t, **options)
        exact = net.exact_solution(z * t[0], t[0], t[-1])
        errs.append(((x - exact).reshape(len(z), -1).norm(dim=1) / exact.reshape(len(z), -1).norm(dim=1)).max())
    errs = np.array([float(e) for e in errs])
    slope = np.polyfit(np.log(1 / np.array(steps, dtype=np.float64)), np.log(errs), 1)[0]
    return float(slope), errs


# (solver, options, step counts, lowest accepted order, highest accepted order)
ORDER_CASES = [
    ('euler', {}, [32, 64, 128, 256], 0.7, 1.3),
    ('heun', {}, [16, 32, 64, 128], 1.7, 2.3),
    ('dpm', {}, [16, 32, 64, 128], 1.7, 2.3),
    ('dpmpp', dict(max_order=2), [32, 64, 128, 256], 1.7, 2.3),
    ('dpmpp', dict(max_order=2, predict_x0=False), [32, 64, 128, 256], 1.7, 2.3),
    ('ipndm', dict(max_order=4), [32, 64, 128, 256], 1.7, None),
    ('ipndm_v', dict(max_order=4), [256, 512, 1024, 2048], 1.7, None),
    ('deis', dict(max_order=4, deis_mode='tab'), [16, 32, 64, 128], 1.7, None),
    ('deis', dict(max_order=4, deis_mode='rhoab'), [16, 32, 64, 128], 1.7, None),
    ('dpmpp', dict(max_order=3), [128, 256, 512, 1024], 1.7, None),
    ('dpmpp', dict(max_order=3, predict_x0=False), [128, 256, 512, 1024], 1.7, None),
    ('unipc', dict(max_order=3, variant='bh2'), [16, 32, 64, 128], 1.7, None),
    ('unipc', dict(max_order=3, variant='bh1'), [16, 32, 64, 128], 1.7, None),
    ('unipc', dict(max_order=3, predict_x0=False), [256, 512, 1024, 2048], 1.7, None),
]


@pytest.mark.parametrize('solver, options, steps, lo, hi', ORDER_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES])
def test_order_of_convergence(solver, options, steps, lo, hi):
    net, z = gaussian_problem()
    exact = net.exact_solution(z * 80, 80.0, 0.002)
    assert exact.abs().max() < 0.95  # thresholding stays inactive
    order, errs = measured_order(net, z, solver, steps, **options)
    assert np.all(np.diff(errs) < 0), errs  # error decreases with every doubling
    assert order >= lo, (order, errs)
    if hi is not None:
        assert order <= hi, (order, errs)


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
    z = d['latents']
    t0, t1 = samplers.get_schedule(2, 0.002, 80)
    exact = analytic.solve_pf_ode(net, z.double() * t0.double(), t0, t1)
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
