"""samplers: golden cases of the GITS toolbox, schedules, NFE accounting, options and the fixed quirks."""

import itertools
import math

import numpy as np
import pytest
import torch

import samplers
from samplers import analytic
from samplers.analytic import CountingNet
from samplers.solvers import _deis_tab_table, _ipndm_v_coeffs, _rhoab_table

# ----------------------------------------------------------------------------
# Helpers.


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope='module')
def golden_net(golden):
    return analytic.GaussianMixture(golden['mu'], golden['s2'], golden['w'], shape=golden['latents'].shape[1:])


def small_gaussian(shape=(1, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = 0.6 * (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5)
    var = 0.005 + 0.015 * torch.rand(shape, generator=g, dtype=torch.float64)
    return analytic.Gaussian(mean, var)

# ----------------------------------------------------------------------------
# Golden data of the GITS toolbox (zju-pi/diff-sampler).


def test_fixture_cases(golden, golden_net):
    assert len(golden['cases']) == 24
    worst = 0.0
    for case in golden['cases']:
        cfg = dict(case['config'])
        solver = cfg.pop('solver')
        net = CountingNet(golden_net)
        out = samplers.sample(net, golden['latents'], solver=solver, **cfg)
        assert out.dtype == torch.float32 and out.shape == case['expected'].shape
        err = rel_err(out, case['expected'])
        worst = max(worst, err)
        assert err <= 1e-5, (solver, cfg, err)
        assert net.calls == case['nfe'], (solver, cfg, net.calls)
        opts = {k: v for k, v in cfg.items() if k not in ('num_steps', 'schedule_type', 'schedule_rho')}
        assert samplers.solver_nfe(solver, cfg['num_steps'], **opts) == case['nfe']
    assert worst < 5e-6  # measured: 0 for euler/heun/dpm/ipndm/ipndm_v, ~1e-6 deis, ~4e-7 dpmpp/unipc


def test_fixture_gits_schedule(golden, golden_net):
    g = golden['gits']
    t_steps, indices = samplers.gits_schedule(
        golden_net, g['num_steps'], g['warmup_latents'], solver_tea=g['solver_tea'], num_steps_tea=g['num_steps_tea'],
        metric=g['metric'], coeff=g['coeff'], max_order=g['max_order'], return_indices=True)
    assert indices == [int(i) for i in g['indices']] == [0, 27, 30, 32, 35, 46, 60]
    assert t_steps.dtype == torch.float32
    assert rel_err(t_steps, g['t_steps']) <= 1e-6

# ----------------------------------------------------------------------------
# Schedules (float32 values printed by the GITS toolbox's solver_utils.get_schedule, zju-pi/diff-sampler).


@pytest.mark.parametrize('num_steps, schedule_type, rho, expected', [
    (7, 'polynomial', 7, [80, 30.18325, 9.723201, 2.515219, 0.4699788, 0.05153237, 0.002]),
    (7, 'logsnr', 7, [80, 13.67981, 2.339214, 0.4, 0.06839903, 0.01169607, 0.002]),
    (7, 'time_uniform', 2, [80, 8.672516, 2.304358, 0.926268, 0.384322, 0.109855, 0.0020132]),
    (6, 'time_uniform', 1, [80, 16.50628, 4.74637, 1.75413, 0.65023, 0.00201]),
    (6, 'polynomial', 7, [80, 24.40833, 5.83894, 0.96542, 0.08509, 0.002]),
])
def test_schedule_reference_values(num_steps, schedule_type, rho, expected):
    t = samplers.get_schedule(num_steps, 0.002, 80, schedule_type, rho)
    assert t.dtype == torch.float32 and t.shape == (num_steps,)
    for value, ref in zip(t.tolist(), expected):  # to the printed digits of the reference
        decimals = len(repr(float(ref)).split('.')[1].rstrip('0')) if '.' in repr(float(ref)) else 0
        assert abs(value - ref) <= 0.5 * 10 ** -decimals + 1e-6 * abs(ref), (value, ref)
    assert bool(torch.all(t[1:] < t[:-1]))


def test_schedule_float32_artefacts():
    assert samplers.get_schedule(7, 0.002, 80).tolist()[0] == pytest.approx(79.99998, abs=1e-5)
    assert samplers.get_schedule(7, 0.002, 80)[0].item() != 80.0
    last = samplers.get_schedule(7, 0.002, 80, 'time_uniform', 2)[-1].item()
    assert last == pytest.approx(0.0020132, abs=1e-7)  # [quirk kept] float32 end point
    clean = samplers.get_schedule(7, 0.002, 80, 'time_uniform', 2, dtype=torch.float64)
    assert clean[-1].item() == pytest.approx(0.002, rel=1e-9) and clean[0].item() == pytest.approx(80, rel=1e-12)


def test_gits_fine_grid_values():
    t = samplers.get_schedule(61, 0.002, 80)
    expected = {0: 80.0, 19: 10.9836, 27: 3.8811, 33: 1.584, 39: 0.5666, 45: 0.1698, 60: 0.002}
    for i, v in expected.items():
        assert t[i].item() == pytest.approx(v, abs=6e-5)


class VPTimeNet:
    """Continuous VP sigma(t) (ADM, beta_d = 19.9, beta_min = 0.1, eps_t = 1e-3) with its inverse."""
    beta_d, beta_min = 19.9, 0.1

    def __init__(self):
        self.sigma_min = float(self.sigma(torch.tensor(1e-3, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d


class DiscreteTableNet:
    """sigma(t) of LDM / Stable Diffusion: 1000 discrete alpha-bars, interpolated in log(alpha) (GITS toolbox)."""

    def __init__(self, beta_start, beta_end):
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, 1000, dtype=np.float64) ** 2
        abar = np.cumprod(1 - betas).astype(np.float32).astype(np.float64)
        self.tau = np.arange(1, 1001) / 1000
        self.log_alpha = 0.5 * np.log(abar)  # keypoint k/1000 <-> log sqrt(abar_{k-1})
        self.sigma_min = float(self.sigma(torch.tensor(1e-3)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0)))

    def sigma(self, t):
        la = np.interp(np.asarray(t, dtype=np.float64), self.tau, self.log_alpha)
        return torch.as_tensor(np.sqrt(1 - np.exp(2 * la)) / np.exp(la))

    def sigma_inv(self, sigma):
        la = -0.5 * np.logaddexp(0, 2 * np.log(np.asarray(sigma, dtype=np.float64)))
        return torch.as_tensor(np.interp(la, self.log_alpha[::-1], self.tau[::-1]))


@pytest.mark.parametrize('net, num_steps, expected', [
    (VPTimeNet(), 6, [152.167, 25.1488, 6.1117, 2.0344, 0.7238, 0.0105]),
    (DiscreteTableNet(0.00085, 0.012), 11,
     [14.6146, 8.3072, 5.0924, 3.3251, 2.2797, 1.6156, 1.1629, 0.8319, 0.5712, 0.3437, 0.0292]),
    (DiscreteTableNet(0.0015, 0.0195), 6, [83.8225, 15.346, 4.4906, 1.8041, 0.7912, 0.0388]),
], ids=['adm256', 'sd15', 'ldm_bedroom'])
def test_discrete_schedule_reference_values(net, num_steps, expected):
    t = samplers.get_schedule(num_steps, net.sigma_min, net.sigma_max, 'discrete', 1, net=net)
    np.testing.assert_allclose(t.numpy(), expected, rtol=2e-4, atol=6e-5)


def test_discrete_schedule_vp_equals_time_uniform():
    net = VPTimeNet()
    a = samplers.get_schedule(6, net.sigma_min, net.sigma_max, 'discrete', 1, net=net)
    b = samplers.get_schedule(6, net.sigma_min, net.sigma_max, 'time_uniform', 1)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4)


def test_discrete_schedule_needs_sigma_inv():
    net = small_gaussian()
    with pytest.raises(ValueError) as info:
        samplers.get_schedule(7, 0.002, 80, 'discrete', 1, net=net)
    msg = str(info.value)
    assert '\n' not in msg and 'sigma_inv' in msg and 'Gaussian' in msg
    with pytest.raises(ValueError, match='sigma_inv'):
        samplers.sample(net, torch.randn(1, 1, 2, 2), solver='euler', schedule_type='discrete')
    with pytest.raises(ValueError, match='net=None'):
        samplers.get_schedule(7, 0.002, 80, 'discrete')


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match='at least 2'):
        samplers.get_schedule(1, 0.002, 80)
    with pytest.raises(ValueError, match='schedule_type'):
        samplers.get_schedule(7, 0.002, 80, 'cosine')


def test_sigma_range_clipped_to_net():
    net = small_gaussian()
    net.sigma_min, net.sigma_max = 0.01, 40.0
    t = samplers.get_schedule(5, 0.01, 40)
    lat = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    x, traj = samplers.sample(net, lat, solver='euler', num_steps=5, return_trajectory=True)
    torch.testing.assert_close(traj[0], lat * t[0], rtol=0, atol=0)
    assert t[-1].item() == pytest.approx(0.01, rel=1e-5) and t[0].item() == pytest.approx(40, rel=1e-5)
    # With t_steps the schedule is used verbatim (any range).
    x2 = samplers.sample(net, lat, solver='euler', t_steps=[80, 10, 1, 0.002])
    x3 = samplers.sample(net, lat, solver='euler', t_steps=torch.tensor([80, 10, 1, 0.002]))
    torch.testing.assert_close(x2, x3, rtol=0, atol=0)

# ----------------------------------------------------------------------------
# NFE, counted by calls, for every solver and option combination.


def _option_grid(solver):
    if solver in ('euler', 'heun', 'dpm'):
        return [{}]
    if solver in ('ipndm', 'ipndm_v'):
        return [dict(max_order=k) for k in range(1, 5)]
    if solver == 'deis':
        return [dict(max_order=k, deis_mode=m) for k in range(1, 5) for m in ('tab', 'rhoab')]
    if solver == 'dpmpp_singlestep':
        return [dict(max_order=k, denoise=d) for k in range(1, 4) for d in (True, False)]
    if solver == 'dpmpp':
        return [dict(max_order=k, predict_x0=p, lower_order_final=lo)
                for k in range(1, 4) for p in (True, False) for lo in (True, False)]
    return [dict(max_order=k, predict_x0=p, lower_order_final=lo, variant=v)
            for k in range(1, 4) for p in (True, False) for lo in (True, False) for v in ('bh1', 'bh2')]


@pytest.mark.parametrize('solver', samplers.solver_names(kind='ode'))
def test_nfe_counts(solver):
    base = small_gaussian()
    lat = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    checked = 0
    for opts, num_steps, afs, dtz in itertools.product(_option_grid(solver), (2, 3, 4, 7), (False, True),
                                                       (False, True)):
        net = CountingNet(base)
        x = samplers.sample(net, lat, solver=solver, num_steps=num_steps, afs=afs, denoise_to_zero=dtz, **opts)
        assert torch.isfinite(x).all()
        expected = samplers.solver_nfe(solver, num_steps, afs=afs, denoise_to_zero=dtz, **opts)
        assert net.calls == expected, (solver, opts, num_steps, afs, dtz, net.calls, expected)
        # The documented rule: (N-1) or 2(N-1), minus AFS, plus denoise_to_zero; UniPC one more while in warm-up.
        rule = (2 if solver in ('heun', 'dpm') else 1) * (num_steps - 1) - afs + dtz
        if solver == 'unipc' and num_steps - 1 < opts['max_order']:
            rule += 1
        if solver == 'dpmpp_singlestep' and opts['denoise']:
            rule += 1   # FDM's final denoising call is part of the solver (NFE = num_steps)
        assert net.calls == rule
        checked += 1
    assert checked == 16 * len(_option_grid(solver))


def test_nfe_edm():
    assert samplers.solver_nfe('edm', 18) == 35
    assert samplers.solver_nfe('ipndm', 7) == 6 and samplers.solver_nfe('heun', 7, afs=True) == 11

# ----------------------------------------------------------------------------
# API behaviour.


def test_unknown_options_are_named():
    net = small_gaussian()
    lat = torch.randn(1, 1, 2, 2)
    with pytest.raises(TypeError, match='max_order'):
        samplers.sample(net, lat, solver='euler', max_order=2)
    with pytest.raises(TypeError, match='bogus'):
        samplers.sample(net, lat, solver='dpmpp', bogus=1)
    with pytest.raises(ValueError, match='unknown solver'):
        samplers.sample(net, lat, solver='rk45')
    with pytest.raises(ValueError, match='max_order'):
        samplers.sample(net, lat, solver='dpmpp', max_order=4)
    with pytest.raises(ValueError, match='max_order'):
        samplers.sample(net, lat, solver='ipndm', max_order=0)
    with pytest.raises(ValueError, match='deis_mode'):
        samplers.sample(net, lat, solver='deis', deis_mode='ab')
    with pytest.raises(ValueError, match='variant'):
        samplers.sample(net, lat, solver='unipc', variant='bh3')
    with pytest.raises(ValueError, match='does not match'):
        samplers.sample(net, lat, solver='euler', num_steps=5, t_steps=[80, 1, 0.002])
    with pytest.raises(ValueError, match='decreasing'):
        samplers.sample(net, lat, solver='euler', t_steps=[1, 80, 0.002])
    assert samplers.solver_defaults('unipc') == dict(max_order=3, predict_x0=True, lower_order_final=True,
                                                     variant='bh2')


def test_trajectory_and_dtype(golden, golden_net):
    lat = golden['latents'][:2]
    x, traj = samplers.sample(golden_net, lat, solver='ipndm', num_steps=7, return_trajectory=True)
    assert traj.shape == (7, *lat.shape) and traj.dtype == torch.float32
    torch.testing.assert_close(traj[-1], x, rtol=0, atol=0)
    torch.testing.assert_close(traj[0], lat * samplers.get_schedule(7, 0.002, 80)[0], rtol=0, atol=0)
    x2, traj2 = samplers.sample(golden_net, lat, solver='heun', num_steps=4, denoise_to_zero=True,
                                return_trajectory=True)
    assert traj2.shape == (5, *lat.shape)
    torch.testing.assert_close(traj2[-1], x2, rtol=0, atol=0)
    x64 = samplers.sample(golden_net, lat.double(), solver='ipndm', num_steps=7)
    assert x64.dtype == torch.float64
    assert rel_err(x64, samplers.sample(golden_net, lat, solver='ipndm', num_steps=7)) < 1e-5


def test_class_labels_and_model_kwargs_reach_the_net(golden_net):
    seen = []

    class Spy(CountingNet):
        def __call__(self, x, sigma, class_labels=None, **kwargs):
            seen.append((class_labels, kwargs))
            return self.net(x, sigma, class_labels)

    lat = torch.randn(2, *golden_net.shape)
    labels = torch.eye(2)
    samplers.sample(Spy(golden_net), lat, labels, solver='unipc', num_steps=4, model_kwargs=dict(foo=1))
    assert len(seen) == 3 and all(c is labels and k == dict(foo=1) for c, k in seen)


def test_edm_routes_to_edm_sampler(golden_net):
    edm = pytest.importorskip('samplers.edm')
    lat = torch.randn(2, *golden_net.shape, generator=torch.Generator().manual_seed(1))
    net = CountingNet(golden_net)
    x = samplers.sample(net, lat, solver='edm', num_steps=5)
    assert net.calls == samplers.solver_nfe('edm', 5) == 9
    ref = edm.edm_sampler(golden_net, lat, num_steps=5)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert x.dtype == torch.float64
    with pytest.raises(ValueError, match='afs'):
        samplers.sample(golden_net, lat, solver='edm', afs=True)
    with pytest.raises(TypeError, match='max_order'):
        samplers.sample(golden_net, lat, solver='edm', max_order=3)

# ----------------------------------------------------------------------------
# Coefficients and fixed quirks.


def test_deis_tab_coefficients_match_reference_table():
    table = _deis_tab_table(samplers.get_schedule(7, 0.002, 80), 4)
    expected = [[-31.36294, 10.90256], [-15.58926, 14.28517, -5.90407], [-5.63580, 10.44438, -10.95163, 4.09776],
                [-0.61761, 0.45591, -0.41344, 0.15669], [-0.054244, 0.005607, -0.001169, 0.000287]]
    for row, ref in zip(table[1:], expected):
        np.testing.assert_allclose(row, ref, rtol=2e-5, atol=2e-6)
    t = samplers.get_schedule(7, 0.002, 80).double()
    for i, row in enumerate(table):  # the weights integrate a constant: sum = t_{i+1} - t_i (Riemann-sum error)
        assert float(sum(float(c) for c in row)) == pytest.approx(float(t[i + 1] - t[i]), rel=1e-3)


def test_rhoab_is_adams_bashforth_in_sigma():
    # Fixed: the toolbox's rhoab used one node too many. Here it integrates polynomials of degree < p exactly.
    t = samplers.get_schedule(9, 0.002, 80, dtype=torch.float64)
    table = _rhoab_table(t, 4)
    tt = t.numpy()
    for i, row in enumerate(table):
        p = len(row)
        assert p == min(4, i + 1)
        for deg in range(p):
            approx = sum(c * tt[i - k] ** deg for k, c in enumerate(row))
            exact = (tt[i + 1] ** (deg + 1) - tt[i] ** (deg + 1)) / (deg + 1)
            assert approx == pytest.approx(exact, rel=1e-9, abs=1e-9 * abs(tt[i]) ** (deg + 1))
    # Two nodes: the exact integral of the linear interpolant in sigma (DEIS rhoAB, Zhang & Chen 2023).
    a, b, c = tt[0], tt[1], tt[2]
    assert table[1][0] == pytest.approx(((c - a) ** 2 - (b - a) ** 2) / (2 * (b - a)), rel=1e-12)
    assert table[1][1] == pytest.approx((c - b) ** 2 / (2 * (a - b)), rel=1e-12)


def test_rhoab_runs_for_every_order_and_matches_ipndm_v_at_order_2(golden, golden_net):
    lat = golden['latents']
    for k in range(1, 5):
        out = samplers.sample(golden_net, lat, solver='deis', deis_mode='rhoab', max_order=k, num_steps=9)
        assert torch.isfinite(out).all()
    a = samplers.sample(golden_net, lat, solver='deis', deis_mode='rhoab', max_order=2, num_steps=9)
    b = samplers.sample(golden_net, lat, solver='ipndm_v', max_order=2, num_steps=9)
    assert rel_err(a, b) < 1e-6


def test_max_order_one_is_euler(golden, golden_net):
    # Fixed: max_order=1 crashed in the toolbox (ipndm, ipndm_v, deis).
    lat = golden['latents']
    ref = samplers.sample(golden_net, lat, solver='euler', num_steps=6, schedule_type='logsnr')
    for solver, extra in [('ipndm', {}), ('ipndm_v', {}), ('deis', dict(deis_mode='tab')),
                          ('deis', dict(deis_mode='rhoab'))]:
        out = samplers.sample(golden_net, lat, solver=solver, max_order=1, num_steps=6, schedule_type='logsnr',
                              **extra)
        assert rel_err(out, ref) < 1e-6, solver
    # First-order DPM-Solver++ (DDIM) is the same map as Euler in sigma: (t/s) x + (1 - t/s) D.
    out = samplers.sample(golden_net, lat, solver='dpmpp', max_order=1, num_steps=6, schedule_type='logsnr')
    assert rel_err(out, ref) < 1e-5


def test_ipndm_v_order4_quirk_kept():
    # [quirk kept] On an equal grid the toolbox's order-4 weights are (57, -65, 43, -11)/24, not AB4.
    c = _ipndm_v_coeffs(4, -1.0, -1.0, -1.0, -1.0)
    np.testing.assert_allclose(c, np.array([57, -65, 43, -11]) / 24, rtol=1e-12)
    np.testing.assert_allclose(_ipndm_v_coeffs(3, -1.0, -1.0, -1.0), np.array([23, -16, 5]) / 12, rtol=1e-12)
    np.testing.assert_allclose(_ipndm_v_coeffs(2, -0.5, -1.0), [1.25, -0.25], rtol=1e-12)


def test_dynamic_threshold_kept_in_data_mode(golden_net):
    # [quirk kept] 0.995-quantile thresholding acts when predictions leave [-1, 1]: scaled data changes dpmpp's
    # data-mode output but not its noise-mode output's consistency with Euler at order 1.
    big = analytic.GaussianMixture(golden_net.mu * 4, golden_net.s2, golden_net.w, shape=golden_net.shape)
    lat = torch.randn(2, *big.shape, generator=torch.Generator().manual_seed(0))
    euler = samplers.sample(big, lat, solver='euler', num_steps=6)
    noise = samplers.sample(big, lat, solver='dpmpp', max_order=1, predict_x0=False, num_steps=6)
    data = samplers.sample(big, lat, solver='dpmpp', max_order=1, predict_x0=True, num_steps=6)
    assert rel_err(noise, euler) < 1e-5
    assert rel_err(data, euler) > 1e-2  # the clipped predictions pull samples towards [-1, 1]
    assert data.abs().max() < euler.abs().max()
    # One outlier: s = max(1, q) = 1, a plain clip. Everything at 2: s = 2, rescaled to 1.
    thr = samplers.solvers.dynamic_threshold(torch.tensor([[0.5, -3.0] + [0.1] * 198, [2.0] * 200]))
    assert thr[0, :3].tolist() == [0.5, -1.0, pytest.approx(0.1)] and thr[1].eq(1.0).all()


def test_solvers_share_the_stepping_loop(golden_net):
    lat = torch.randn(1, *golden_net.shape)
    t = samplers.get_schedule(5, 0.002, 80)
    for name in samplers.solver_names(kind='ode'):
        records = []
        samplers.sample(golden_net, lat, solver=name, t_steps=t, callback=records.append)
        assert [r.i for r in records] == [0, 1, 2, 3], name
        first = records[0]
        assert isinstance(first, samplers.StepRecord)
        assert first.t_cur == t[0] and first.t_next == t[1] and first.d_cur.shape == lat.shape
        dtype = first.x_cur.dtype  # float32, or the solver's own state dtype (dpmpp_singlestep: float64)
        torch.testing.assert_close(first.x_cur, lat.to(dtype) * t[0].to(dtype), rtol=0, atol=0)
        for a, b in zip(records[:-1], records[1:]):
            assert b.x_cur is a.x_next  # the loop hands each step's output to the next
        spec = samplers.SOLVERS[name]
        assert spec.fn.__doc__ and 'NFE' in spec.fn.__doc__, name


def test_analytic_denoisers():
    g = small_gaussian(shape=(2, 2, 2))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=gen)
    # Single Gaussian: the mixture with one component gives the same denoiser; the closed-form flow solves the ODE.
    assert g.img_channels == 2 and g.img_resolution == 2 and g.label_dim == 0
    sol = g.exact_solution(x * 80, 80.0, 0.002)
    num = analytic.solve_pf_ode(g, x * 80, 80.0, 0.002)
    assert rel_err(num, sol) < 1e-9
    images = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=gen)
    ideal = analytic.IdealDenoiser(images)
    d = ideal(images[1:2] + 1e-3, torch.tensor(0.01))
    torch.testing.assert_close(d, images[1:2], atol=1e-9, rtol=0)
    big = ideal(torch.zeros(1, 1, 2, 2, dtype=torch.float64), 1e5)
    torch.testing.assert_close(big, images.mean(0, keepdim=True), atol=1e-6, rtol=0)
    assert ideal(torch.zeros(1, 1, 2, 2), 1.0).dtype == torch.float32
    assert math.isclose(float(ideal.round_sigma(0.5)), 0.5)
