"""GITS schedule search: dynamic programme, cost matrix, teacher options, AFS insertion."""

import itertools

import numpy as np
import pytest
import torch

import samplers
from samplers import analytic
from samplers.analytic import CountingNet
from samplers.gits import gits_cost_matrix, gits_dp, teacher_trajectory


@pytest.fixture(scope='module')
def mixture(golden):
    return analytic.GaussianMixture(golden['mu'], golden['s2'], golden['w'], shape=golden['latents'].shape[1:])


def brute_force(cost, num_steps, coeff):
    m = cost.shape[0]
    best = None
    for inner in itertools.combinations(range(1, m - 1), num_steps - 2):
        path = [0, *inner, m - 1]
        total = sum(coeff ** k * float(cost[a, b]) for k, (a, b) in enumerate(zip(path[:-1], path[1:])))
        if best is None or total < best[0] - 1e-12:
            best = (total, path)
    return best

# ----------------------------------------------------------------------------
# Dynamic programme.


def test_dp_hand_made_matrix():
    # Paths 0 -> j -> 4: cost C[0, j] + coeff * C[j, 4].
    #   j=1: 1 + 3 coeff, j=2: 3 + 1.5 coeff, j=3: 5 + 0.2 coeff.
    # coeff=1: 4, 4.5, 5.2 -> j=1; coeff=2: 7, 6, 5.4 -> j=3 (the discount weighs the steps near the data).
    c = torch.zeros(5, 5)
    c[0, 1], c[1, 4] = 1, 3
    c[0, 2], c[2, 4] = 3, 1.5
    c[0, 3], c[3, 4] = 5, 0.2
    c[0, 4] = 100
    for j in (1, 2, 3):
        for k in range(j + 1, 4):
            c[j, k] = 100
    assert gits_dp(c, 3, coeff=1.0) == [0, 1, 4]
    assert gits_dp(c, 3, coeff=2.0) == [0, 3, 4]
    assert gits_dp(c, 3, coeff=1.5) == [0, 2, 4]  # 5.5, 5.25, 5.3
    assert gits_dp(c, 2, coeff=1.15) == [0, 4]


def test_dp_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(6):
        m = 9
        cost = torch.tensor(np.triu(rng.uniform(0.1, 2.0, [m, m]), 1), dtype=torch.float32)
        for num_steps in range(2, m + 1):
            for coeff in (0.8, 1.0, 1.15):
                path = gits_dp(cost, num_steps, coeff)
                assert len(path) == num_steps and path[0] == 0 and path[-1] == m - 1
                assert all(b > a for a, b in zip(path, path[1:]))
                total = sum(coeff ** k * float(cost[a, b]) for k, (a, b) in enumerate(zip(path[:-1], path[1:])))
                best = brute_force(cost, num_steps, coeff)
                assert total == pytest.approx(best[0], rel=1e-12, abs=1e-12), (trial, num_steps, coeff)


def test_dp_ties_take_smallest_index():
    cost = torch.triu(torch.ones(8, 8), 1)
    assert gits_dp(cost, 4, coeff=1.0) == [0, 1, 2, 7]
    with pytest.raises(ValueError, match='num_steps'):
        gits_dp(cost, 9)

# ----------------------------------------------------------------------------
# Cost matrix.


def test_cost_matrix_of_a_straight_teacher_is_zero():
    # X_j = a + t_j b with constant derivative b: every Euler jump lands on the teacher.
    t = samplers.get_schedule(11, 0.002, 80, dtype=torch.float64)
    a, b = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)
    states = torch.stack([a + tj * b for tj in t])
    derivs = b.expand(10, *b.shape)
    for metric in ('l1', 'l2', 'dev'):
        cost = gits_cost_matrix(states, derivs, t, metric)
        assert cost.dtype == torch.float32 and cost.shape == (11, 11)
        assert float(cost.abs().max()) < 1e-4 * float(b.abs().max() * 80), metric


def test_cost_matrix_values_by_hand():
    # One sample in 2-D: teacher X_0 = (2, 0), X_1 = (1, 1), X_2 = (0, 0); chord along -x, so dev = |y|.
    t = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    states = torch.tensor([[[2.0, 0.0]], [[1.0, 1.0]], [[0.0, 0.0]]], dtype=torch.float64)
    derivs = torch.tensor([[[1.0, -1.0]], [[2.0, 2.0]]], dtype=torch.float64)
    # Jumps: 0->1: (2,0) + (-1)(1,-1) = (1, 1); 0->2: (2,0) - 1.5 (1,-1) = (0.5, 1.5); 1->2: (1,1) - 0.5 (2,2) = (0, 0).
    l1 = gits_cost_matrix(states, derivs, t, 'l1')
    assert l1[0, 1].item() == pytest.approx(0.0) and l1[0, 2].item() == pytest.approx(2.0)
    assert l1[1, 2].item() == pytest.approx(0.0)
    l2 = gits_cost_matrix(states, derivs, t, 'l2')
    assert l2[0, 2].item() == pytest.approx(np.hypot(0.5, 1.5))
    dev = gits_cost_matrix(states, derivs, t, 'dev')
    # dev(jump) - dev(teacher X_j): 0->1: 1 - 1 = 0; 0->2: 1.5 - 0 = 1.5 (dev of the last point is 0); 1->2: 0 - 0.
    assert dev[0, 1].item() == pytest.approx(0.0, abs=1e-6) and dev[0, 2].item() == pytest.approx(1.5)
    assert dev[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert float(dev.tril().abs().max()) == 0.0
    with pytest.raises(ValueError, match='metric'):
        gits_cost_matrix(states, derivs, t, 'bdev')

# ----------------------------------------------------------------------------
# gits_schedule.


def test_fixture_schedule_with_rounds(golden, mixture):
    # Costs averaged over rounds of equal size give the same schedule as one batch.
    g = golden['gits']
    t_steps, idx = samplers.gits_schedule(mixture, 7, g['warmup_latents'], batch_size=32, return_indices=True)
    assert idx == [0, 27, 30, 32, 35, 46, 60]
    torch.testing.assert_close(t_steps, g['t_steps'], rtol=1e-6, atol=0)


def test_teacher_takes_its_own_options(golden, mixture):
    lat = golden['gits']['warmup_latents'][:16]
    kw = dict(num_steps_tea=21)
    # An ipndm teacher of order 1 is an Euler teacher.
    a = samplers.gits_schedule(mixture, 5, lat, solver_tea='ipndm', max_order=1, return_indices=True, **kw)[1]
    b = samplers.gits_schedule(mixture, 5, lat, solver_tea='euler', return_indices=True, **kw)[1]
    assert a == b
    # The student's AFS does not reach the teacher: removing the inserted point gives the plain schedule.
    plain = samplers.gits_schedule(mixture, 5, lat, return_indices=True, **kw)[1]
    t_afs, with_afs = samplers.gits_schedule(mixture, 5, lat, afs=True, solver='dpmpp',
                                             solver_options=dict(max_order=3), return_indices=True, **kw)
    if plain[1] > 1:
        assert len(with_afs) == 6 and with_afs[0] == 0 and 0 < with_afs[1] < plain[1]
        assert [with_afs[0]] + with_afs[2:] == plain
    # Teacher options are checked and passed: predict_x0 for a dpmpp teacher (its max_order is capped at 3).
    c = samplers.gits_schedule(mixture, 5, lat, solver_tea='dpmpp', predict_x0=False, return_indices=True, **kw)[1]
    assert len(c) == 5
    with pytest.raises(TypeError, match='deis_mode'):
        samplers.gits_schedule(mixture, 5, lat, solver_tea='ipndm', deis_mode='tab', **kw)
    with pytest.raises(ValueError, match='teacher'):
        samplers.gits_schedule(mixture, 5, lat, solver_tea='unipc', **kw)


def test_afs_insertion_picks_best_student_point(golden, mixture):
    lat = golden['gits']['warmup_latents'][:16]
    fine = samplers.get_schedule(21, 0.002, 80)
    plain = samplers.gits_schedule(mixture, 4, lat, num_steps_tea=21, return_indices=True)[1]
    _, idx = samplers.gits_schedule(mixture, 4, lat, num_steps_tea=21, afs=True, solver='ipndm',
                                    return_indices=True)
    states, _ = teacher_trajectory(mixture, lat, fine, solver='ipndm', max_order=4)
    errors = {}
    for k in range(1, plain[1]):
        x = samplers.sample(mixture, lat, solver='ipndm', t_steps=fine[[0, k] + plain[1:]], afs=True)
        errors[k] = float((x - states[-1]).reshape(len(lat), -1).norm(dim=1).mean())
    assert idx == [0, min(errors, key=errors.get)] + plain[1:]


@pytest.mark.parametrize('solver', ['dpmpp', 'unipc'])
def test_afs_schedule_with_lower_order_final_runs(golden, mixture, solver):
    # Fixed: the toolbox crashed here (its num_steps was not updated to the longer AFS schedule).
    lat = golden['gits']['warmup_latents'][:8]
    t_steps = samplers.gits_schedule(mixture, 6, lat, num_steps_tea=21, afs=True, solver=solver,
                                     solver_options=dict(max_order=3, lower_order_final=True))
    assert len(t_steps) in (6, 7)
    net = CountingNet(mixture)
    x = samplers.sample(net, golden['latents'], solver=solver, t_steps=t_steps, afs=True, max_order=3,
                        lower_order_final=True)
    assert torch.isfinite(x).all()
    assert net.calls == samplers.solver_nfe(solver, len(t_steps), afs=True, max_order=3) == len(t_steps) - 2


@pytest.mark.parametrize('metric', ['l1', 'l2'])
def test_other_metrics(golden, mixture, metric):
    lat = golden['gits']['warmup_latents'][:16]
    idx = samplers.gits_schedule(mixture, 6, lat, num_steps_tea=31, metric=metric, return_indices=True)[1]
    assert len(idx) == 6 and idx[0] == 0 and idx[-1] == 30 and all(b > a for a, b in zip(idx, idx[1:]))


def test_teacher_trajectory_records_states_and_derivatives(mixture):
    lat = torch.randn(2, *mixture.shape, generator=torch.Generator().manual_seed(0))
    t = samplers.get_schedule(9, 0.002, 80)
    states, derivs = teacher_trajectory(mixture, lat, t, solver='heun')
    assert states.shape == (9, 2, *mixture.shape) and derivs.shape == (8, 2, *mixture.shape)
    torch.testing.assert_close(states[-1], samplers.sample(mixture, lat, solver='heun', t_steps=t), rtol=0, atol=0)
    d0 = (states[0] - mixture(states[0], t[0])) / t[0]
    torch.testing.assert_close(derivs[0], d0, rtol=0, atol=0)
