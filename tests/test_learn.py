"""Learned time schedules: accuracy on held-out latents, determinism, NFE and end points, refusals, generate.py."""

import json
import math

import pytest
import torch

import samplers
from samplers import analytic
from samplers.analytic import CountingNet
from samplers.learn import params_from_schedule, schedule_from_params


def small_mixture(seed=0, components=4):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * (2 * torch.rand(components, 2, 4, 4, generator=g, dtype=torch.float64) - 1)
    s2 = 0.005 + 0.015 * torch.rand(components, generator=g, dtype=torch.float64)
    return analytic.GaussianMixture(mu, s2, 0.5 + torch.rand(components, generator=g, dtype=torch.float64))


def rms_error(x, exact):
    b = len(x)
    return float(((x.double() - exact).reshape(b, -1).norm(dim=1) / math.sqrt(x[0].numel())).mean())


@pytest.fixture(scope='module')
def problem():
    net = small_mixture()
    warmup = torch.randn(128, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    held_out = torch.randn(128, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t0 = float(samplers.get_schedule(2, 0.002, 80)[0])  # float32 80, as the samplers start
    exact = analytic.solve_pf_ode(net, held_out.double() * t0, t0, 0.002, rtol=1e-9, atol=1e-10)
    return net, warmup, held_out, exact


def test_parameters_round_trip():
    t = samplers.get_schedule(7, 0.002, 80, dtype=torch.float64)
    back = schedule_from_params(params_from_schedule(t), 0.002, 80)
    assert torch.allclose(back, t, rtol=1e-9)
    t = schedule_from_params(torch.tensor([30.0, -30.0, 0.5]), 0.01, 50)  # extreme parameters stay valid
    assert t[0] == 50 and t[-1] == 0.01 and bool((t[1:] < t[:-1]).all())


def test_held_out_error_beats_polynomial_and_gits(problem):
    # NFE 5. Peers: iPNDM, iPNDM-v, DEIS and UniPC with polynomial and GITS schedules, with and without AFS.
    net, warmup, held_out, exact = problem
    peers = {}
    for solver in ('ipndm', 'ipndm_v', 'deis', 'unipc'):
        for num_steps, afs in ((6, False), (7, True)):
            gits = samplers.gits_schedule(net, num_steps - afs, warmup, afs=afs, solver=solver)
            assert samplers.solver_nfe(solver, len(gits), afs=afs) == 5
            for name, kw in (('polynomial', dict(num_steps=num_steps)), ('GITS', dict(t_steps=gits))):
                x = samplers.sample(net, held_out, solver=solver, afs=afs, **kw)
                peers[(solver, afs, name)] = rms_error(x, exact)
    best_peer = min(peers.values())
    t, info = samplers.learn_schedule(net, 7, warmup, solver='ipndm', afs=True, return_info=True)
    counter = CountingNet(net)
    learned = rms_error(samplers.sample(counter, held_out, solver='ipndm', t_steps=t, afs=True), exact)
    assert counter.calls == 5
    assert info['loss'] < info['history'][0][1]
    assert learned < 0.6 * best_peer, (learned, sorted(peers.items(), key=lambda kv: kv[1])[:3])


def test_same_search_twice_gives_the_same_schedule(problem):
    net, warmup, _, _ = problem
    runs = [samplers.learn_schedule(net, 5, warmup[:32], solver='dpmpp', max_evals=60, restarts=1)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], samplers.get_schedule(5, 0.002, 80, dtype=torch.float64))


@pytest.mark.parametrize('solver,num_steps,afs,denoise_to_zero', [('heun', 3, True, False), ('euler', 5, False, True),
                                                                  ('unipc', 4, False, False)])
def test_schedule_keeps_ends_and_nfe(problem, solver, num_steps, afs, denoise_to_zero):
    net, warmup, _, _ = problem
    t = samplers.learn_schedule(net, num_steps, warmup[:16], solver=solver, afs=afs, denoise_to_zero=denoise_to_zero,
                                sigma_min=0.001, sigma_max=100, max_evals=20, restarts=0)
    assert len(t) == num_steps and bool((t[1:] < t[:-1]).all())
    assert float(t[0]) == 80 and float(t[-1]) == 0.002  # clipped to the net's range, as samplers.sample does
    counter = CountingNet(net)
    samplers.sample(counter, warmup[:2], solver=solver, t_steps=t, afs=afs, denoise_to_zero=denoise_to_zero)
    assert counter.calls == samplers.solver_nfe(solver, num_steps, afs=afs, denoise_to_zero=denoise_to_zero)


def test_teacher_samples_define_the_target(problem):
    # With the student's own samples on a given schedule as the teacher, that schedule is a global minimum (L = 0).
    net, warmup, _, _ = problem
    t_star = torch.tensor([80, 5.0, 0.3, 0.002], dtype=torch.float64)
    target = samplers.sample(net, warmup[:16].double(), solver='euler', t_steps=t_star)
    t, info = samplers.learn_schedule(net, 4, warmup[:16], solver='euler', teacher=target, return_info=True,
                                      restarts=0)
    assert info['loss'] < 1e-6
    assert torch.allclose(t, t_star, rtol=1e-3)


def test_refusals(problem):
    net, warmup, _, _ = problem
    with pytest.raises(ValueError, match='deterministic ODE solver'):
        samplers.learn_schedule(net, 5, warmup, solver='edm')
    with pytest.raises(TypeError, match='does not accept'):
        samplers.learn_schedule(net, 5, warmup, solver='euler', max_order=2)
    with pytest.raises(ValueError, match='teacher samples have shape'):
        samplers.learn_schedule(net, 5, warmup, solver='euler', teacher=warmup[:3])
    with pytest.raises(ValueError, match='start schedule 0 has 3'):
        samplers.learn_schedule(net, 5, warmup[:4], solver='euler', starts=[[80, 1, 0.002]])
