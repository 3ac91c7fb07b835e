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
    warmup = torch.randn(256, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    held_out = torch.randn(256, 2, 4, 4, generator=torch.Generator().manual_seed(1))
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
    # NFE 5 on held-out latents. Peers: iPNDM, iPNDM-v and DEIS with polynomial and GITS schedules, with and
    # without AFS (GITS inserts its AFS point for each student). Measured: best peer 1.75e-2 (iPNDM, GITS),
    # learned iPNDM-v + AFS 6.1e-3; the benchmark's bound is 0.5, here 0.6 on a smaller problem.
    net, warmup, held_out, exact = problem
    peers = {}
    for solver in ('ipndm', 'ipndm_v', 'deis'):
        for num_steps, afs in ((6, False), (7, True)):
            gits = samplers.gits_schedule(net, num_steps - afs, warmup, afs=afs, solver=solver)
            for name, kw in (('polynomial', dict(num_steps=num_steps)), ('GITS', dict(t_steps=gits))):
                counter = CountingNet(net)
                x = samplers.sample(counter, held_out, solver=solver, afs=afs, **kw)
                peers[(solver, afs, name)] = rms_error(x, exact)
                assert counter.calls == 5
    best_peer = min(peers.values())
    t, info = samplers.learn_schedule(net, 7, warmup, solver='ipndm_v', afs=True, return_info=True)
    counter = CountingNet(net)
    learned = rms_error(samplers.sample(counter, held_out, solver='ipndm_v', t_steps=t, afs=True), exact)
    assert counter.calls == 5
    assert info['loss'] < 0.5 * info['history'][0][1]  # the search, not the best start, does the work
    assert learned < 0.6 * best_peer, (learned, sorted(peers.items(), key=lambda kv: kv[1])[:3])


def test_same_search_twice_gives_the_same_schedule(problem):
    net, warmup, _, _ = problem
    runs = [samplers.learn_schedule(net, 5, warmup[:32], solver='dpmpp', max_evals=60, restarts=1)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], samplers.get_schedule(5, 0.002, 80, dtype=torch.float64))


@pytest.mark.parametrize('solver,num_steps,afs,denoise_to_zero', [
    ('heun', 3, True, False), ('euler', 5, False, True), ('unipc', 4, False, False), ('ipndm', 2, False, False)])
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

# ----------------------------------------------------------------------------
# generate.py --schedule_type=learned


@pytest.fixture(scope='module')
def tiny_net(tmp_path_factory):
    import pickle
    from training import networks
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=4, model_type='SongUNet',
                              model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    path = str(tmp_path_factory.mktemp('nets') / 'net.pkl')
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net.eval()), f)
    return path


def _generate(args):
    from click.testing import CliRunner
    import generate
    return CliRunner().invoke(generate.main, args, catch_exceptions=False)


def _pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob('*.png'))}


def test_generate_learns_once_then_reuses_the_cache(tiny_net, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    args = [f'--network={tiny_net}', '--seeds=0-1', '--solver=ipndm', '--num_steps=4', '--schedule_type=learned',
            '--num_warmup=3']
    first = _generate(args + [f'--outdir={tmp_path / "a"}'])
    assert first.exit_code == 0, first.output
    assert 'Learning a schedule with 3 warm-up trajectories' in first.output and 'NFE = 3' in first.output
    with open(tmp_path / 'a' / 'learned_schedule.json') as f:
        record = json.load(f)
    t_steps = record['t_steps']
    assert len(t_steps) == 4 and t_steps[0] == 80 and t_steps[-1] == 0.002 and t_steps[1] > t_steps[2]
    assert record['search']['solver'] == 'ipndm' and record['search']['num_warmup'] == 3

    second = _generate(args + [f'--outdir={tmp_path / "b"}'])
    assert second.exit_code == 0 and 'Reusing the LEARNED schedule' in second.output
    assert 'Learning a schedule' not in second.output
    # The printed schedule, passed back with --t_steps, gives the same images.
    reuse = next(line for line in first.output.splitlines() if line.startswith('Reuse it with '))
    third = _generate([f'--network={tiny_net}', '--seeds=0-1', '--solver=ipndm', f'--outdir={tmp_path / "c"}',
                       reuse.split()[-1]])
    assert third.exit_code == 0, third.output
    assert _pngs(tmp_path / 'a') == _pngs(tmp_path / 'b') == _pngs(tmp_path / 'c') and len(_pngs(tmp_path / 'a')) == 2


def test_generate_refuses_learned_with_dp(tiny_net, tmp_path):
    from conftest import error_line
    result = _generate([f'--network={tiny_net}', f'--outdir={tmp_path}', '--solver=ipndm', '--dp=True',
                        '--schedule_type=learned'])
    assert 'choose one' in error_line(result)
