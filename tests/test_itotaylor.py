"""Second-order Itô–Taylor sampler (samplers/itotaylor.py): weak orders, the Laplacian estimate, costs, seeds.

Reference values: the Gaussian test of Kloeden & Platen style (data N(0, 0.5^2), rho = 7, sigma in [0.002, 80], exact
start, exact variance propagation), whose expected errors are listed in docs/itotaylor.md.
"""

import math

import numpy as np
import pytest
import torch

import samplers
from samplers.analytic import CountingNet, Gaussian, GaussianMixture
from samplers.edm import edm_schedule
from samplers.itotaylor import (euler_maruyama, increments, itotaylor, itotaylor_cost,
                                itotaylor_step, laplacian_estimate, step_map)
from samplers.weak_error import final_expectation, gaussian_final_variance
from torch_utils.misc import StackedRandomGenerator

S = 0.5  # data standard deviation of the Gaussian test
GAUSS = Gaussian(torch.zeros(1, 1, 1), S ** 2)
MIXTURE_1D = GaussianMixture(torch.tensor([[-1.0], [1.0]]), [0.09, 0.09], shape=(1, 1, 1))

pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated'),  # torch's own jvp decompositions
              pytest.mark.usefixtures('one_thread')]


def schedule(net, n):
    """EDM's rho = 7 levels from 80 to 0.002 (n levels, n - 1 steps), without the final zero."""
    return edm_schedule(net, n, 0.002, 80, 7)[:-1]


def slope(steps, errors):
    return -np.polyfit(np.log(steps), np.log(np.abs(errors)), 1)[0]

# ----------------------------------------------------------------------------
# Weak order on Gaussian data: exact variance propagation through the affine step.


# Absolute error of the final variance (target 0.25 + 0.002^2) at N = 20, 40, 80, 160, and the accepted slopes.
GAUSSIAN_CASES = [
    ('itotaylor', 1.0, [0.023, 6.0e-3, 1.5e-3, 3.6e-4], 1.8, 2.2),
    ('euler_maruyama', 1.0, [0.083, 0.035, 0.016, 7.9e-3], 0.7, 1.3),
    ('itotaylor', 0.0, [0.017, 4.3e-3, 1.1e-3, 2.7e-4], 1.8, 2.2),  # deterministic Taylor-2 (exact ODE flow)
]


@pytest.mark.parametrize('scheme,langevin,expected,lo,hi', GAUSSIAN_CASES)
def test_gaussian_weak_order(scheme, langevin, expected, lo, hi):
    step = step_map(GAUSS, langevin) if scheme == 'itotaylor' else step_map(GAUSS, langevin, scheme='em')
    steps = [20, 40, 80, 160]
    errors = []
    for n in steps:
        t = schedule(GAUSS, n)
        errors.append(gaussian_final_variance(step, t, S ** 2 + float(t[0]) ** 2) - (S ** 2 + float(t[-1]) ** 2))
    assert np.allclose(np.abs(errors), expected, rtol=0.05), errors
    assert lo <= slope(steps, errors) <= hi, (slope(steps, errors), errors)


@pytest.mark.parametrize('scheme', ['itotaylor', 'euler_maruyama'])
def test_sampler_follows_the_exact_law(scheme):
    # The sampler (increments from randn_like) against the law of its step: 64 x 1024 samples, N = 20.
    net = Gaussian(torch.zeros(1, 32, 32), S ** 2)
    t = schedule(net, 20)
    rnd = StackedRandomGenerator('cpu', range(64))
    x0 = rnd.randn([64, 1, 32, 32], dtype=torch.float64) * math.sqrt(S ** 2 + float(t[0]) ** 2)
    sampler = itotaylor if scheme == 'itotaylor' else euler_maruyama
    x = sampler(net, x0, t, randn_like=rnd.randn_like)
    step = step_map(GAUSS) if scheme == 'itotaylor' else step_map(GAUSS, scheme='em')
    var = gaussian_final_variance(step, t, S ** 2 + float(t[0]) ** 2)
    se = var * math.sqrt(2 / x.numel())
    assert abs(float(x.square().mean()) - var) < 4 * se
    assert abs(var - S ** 2) > 10 * se  # The law of the scheme is distinguishable from the exact one at N = 20.


@pytest.mark.parametrize('solver', ['itotaylor', 'edm_em'])
def test_samplers_sample_follows_the_exact_law(solver):
    # Through samplers.sample (registry kind 'edm': EDM's schedule with its final step to zero, Gaussian prior,
    # per-seed noise): the same sampler and law as above, then the final denoising x = D(x; t_{N-1}), a gain of
    # S^2 / (S^2 + t_{N-1}^2) on Gaussian data.
    net = Gaussian(torch.zeros(1, 32, 32), S ** 2)
    t = edm_schedule(net, 20, 0.002, 80, 7)
    rnd = StackedRandomGenerator('cpu', range(64))
    latents = rnd.randn([64, 1, 32, 32], dtype=torch.float64) * math.sqrt(S ** 2 + float(t[0]) ** 2) / float(t[0])
    counter = CountingNet(net)
    x = samplers.sample(counter, latents, solver=solver, num_steps=20, schedule_rho=7, generator=rnd)
    assert x.dtype == torch.float64 and counter.calls == samplers.solver_nfe(solver, 20) == (39 if solver ==
                                                                                              'itotaylor' else 20)
    step = step_map(GAUSS) if solver == 'itotaylor' else step_map(GAUSS, scheme='em')
    gain = S ** 2 / (S ** 2 + float(t[-2]) ** 2)
    var = gain ** 2 * gaussian_final_variance(step, t[:-1], S ** 2 + float(t[0]) ** 2)
    se = var * math.sqrt(2 / x.numel())
    assert abs(float(x.square().mean()) - var) < 4 * se
    assert abs(var - S ** 2) > 10 * se
    # The same numbers as the sampler function on the same per-seed noise (randn_like= as the noise source).
    rnd = StackedRandomGenerator('cpu', range(4))
    lat = rnd.randn([4, 1, 32, 32], dtype=torch.float64)
    fn = itotaylor if solver == 'itotaylor' else euler_maruyama
    direct = fn(net, lat * t[0], t, randn_like=rnd.randn_like, langevin=0.5, S_max=10.0)
    rnd = StackedRandomGenerator('cpu', range(4))
    lat = rnd.randn([4, 1, 32, 32], dtype=torch.float64)
    assert torch.equal(samplers.sample(net, lat, solver=solver, num_steps=20, randn_like=rnd.randn_like,
                                       langevin=0.5, S_max=10.0), direct)


def test_registered_costs():
    assert samplers.solver_cost('itotaylor', 18) == itotaylor_cost(18) == dict(forward=1, jvp=17, jvp2=17)
    assert samplers.solver_nfe('itotaylor', 18) == 35 and samplers.solver_nfe('edm_em', 18) == 18
    assert samplers.solver_nfe('itotaylor', 18, laplacian='symmetric') == 52 + 17
    t = edm_schedule(GAUSS, 18, 0.002, 80, 7)
    assert samplers.solver_cost('itotaylor', 18, t_steps=t, S_max=1.0, laplacian='symmetric') == itotaylor_cost(
        18, t_steps=t, S_max=1.0, laplacian='symmetric')
    assert samplers.solver_cost('edm_em', 18) == dict(forward=18)
    spec = samplers.get_solver('itotaylor')
    assert (spec.kind, spec.needs, spec.stochastic, spec.teacher) == ('edm', 'jvp', True, False)
    assert samplers.solver_defaults('itotaylor') == dict(langevin=1.0, S_min=0.0, S_max=float('inf'),
                                                         laplacian='hutchinson')
    with pytest.raises(TypeError, match="solver 'edm_em' does not accept option.s. laplacian"):
        samplers.sample(GAUSS, torch.zeros(1, 1, 1, 1), solver='edm_em', laplacian='none')
    with pytest.raises(ValueError, match='does not support t_steps'):
        samplers.sample(GAUSS, torch.zeros(1, 1, 1, 1), solver='itotaylor', t_steps=t[:-1])


def test_increment_covariance():
    h = 0.3
    dW, dZ = increments(StackedRandomGenerator('cpu', [7]).randn_like, torch.zeros(1, 200000, dtype=torch.float64), h)
    cov = torch.cov(torch.stack([dW.flatten(), dZ.flatten()]))
    expected = torch.tensor([[h, h ** 2 / 2], [h ** 2 / 2, h ** 3 / 3]], dtype=torch.float64)
    se = torch.tensor([[h, h ** 2], [h ** 2, h ** 3]], dtype=torch.float64) * math.sqrt(2 / 200000)
    assert bool(((cov - expected).abs() < 4 * se).all()), cov

# ----------------------------------------------------------------------------
# The Laplacian term.


def small_mixture():
    g = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    return GaussianMixture(mu, [0.05, 0.08, 0.03], [0.3, 0.3, 0.4]), mu


def mixed_point():
    """The small mixture, a point between two of its components (mixed responsibilities) and sigma."""
    net, mu = small_mixture()
    return net, (0.5 * (mu[0] + mu[1]) + 0.1).reshape(1, 2, 2, 2), torch.tensor(0.4, dtype=torch.float64)


def rademacher(n, seed):
    return torch.randn(n, 2, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).sign()


@pytest.mark.parametrize('method,rel_step', [('hutchinson', None), ('symmetric', 0.03)])
def test_laplacian_estimate_is_unbiased(method, rel_step):
    net, x, sigma = mixed_point()

    def flat(z):
        return net(z.reshape(1, 2, 2, 2), sigma).reshape(-1)
    hessians = torch.func.jacfwd(torch.func.jacrev(flat))(x.reshape(-1))  # [out, in, in], nested autograd
    exact = torch.diagonal(hessians, dim1=1, dim2=2).sum(1)

    probes = 20000
    v = rademacher(probes, 1)
    value, est = laplacian_estimate(net, x.repeat(probes, 1, 1, 1), sigma, v, method, rel_step=rel_step)
    assert torch.allclose(value[0], net(x, sigma)[0], rtol=1e-12, atol=1e-14)
    est = est.reshape(probes, -1)
    se = est.std(0) / math.sqrt(probes)
    assert bool(((est.mean(0) - exact).abs() <= 3 * se).all()), ((est.mean(0) - exact) / se)
    assert exact.abs().max() > 20 * se.max()  # A zero estimate would fail.
    if method == 'hutchinson':  # Each probe gives v^T H_i v exactly.
        quad = torch.einsum('pj,ijk,pk->pi', v.reshape(probes, -1)[:50], hessians, v.reshape(probes, -1)[:50])
        assert torch.allclose(est[:50], quad, rtol=1e-9, atol=1e-12)


def test_symmetric_difference_bias_is_second_order():
    # Same probes for every step size, so the bias ratio is free of Monte Carlo noise.
    net, x, sigma = mixed_point()
    v = rademacher(2000, 2)
    x = x.repeat(len(v), 1, 1, 1)
    exact = laplacian_estimate(net, x, sigma, v, 'hutchinson')[1].mean(0)
    bias = [(laplacian_estimate(net, x, sigma, v, 'symmetric', rel_step=eta)[1].mean(0) - exact).abs().max()
            for eta in (0.2, 0.1)]
    assert 3.6 < bias[0] / bias[1] < 4.4 and bias[0] > 1e-3 * exact.abs().max(), bias


def test_laplacian_term_gives_weak_order_two_on_a_mixture():
    # 1-D mixture 0.5 N(-1, 0.3^2) + 0.5 N(1, 0.3^2); error of E[x^2] at sigma_min, computed exactly (no MC noise).
    start = [(0.5, -1.0, 0.09 + 80.0 ** 2), (0.5, 1.0, 0.09 + 80.0 ** 2)]
    steps = [40, 80, 160]
    errors = {}
    for name, step in [('with', step_map(MIXTURE_1D)), ('without', step_map(MIXTURE_1D, laplacian='none')),
                       ('em', step_map(MIXTURE_1D, scheme='em'))]:
        errors[name] = []
        for n in steps:
            t = schedule(MIXTURE_1D, n)
            errors[name].append(final_expectation(step, t, start) - (1.09 + float(t[-1]) ** 2))
    with_lap, without, em_err = (np.abs(errors[k]) for k in ('with', 'without', 'em'))
    assert bool((without >= 2 * with_lap).all()), errors
    assert np.allclose(errors['with'], [-8.88e-3, -2.81e-3, -8.19e-4], rtol=0.02), errors
    assert with_lap[-1] < 0.5 * em_err[-1] and slope(steps[1:], with_lap[1:]) > 1.6, errors
    assert 0.8 < slope(steps, em_err) < 1.2 and 0.8 < slope(steps, without) < 1.2, errors

# ----------------------------------------------------------------------------
# Sampler plumbing: noise window, final step, costs, seeds, validation.


class CallCounter:
    """Counts denoiser calls by kind: plain forward, JVP (one dual level) and nested JVP (two levels)."""

    def __init__(self, net):
        self.net, self.counts = net, dict(forward=0, jvp=0, jvp2=0)

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, x, *args, **kwargs):
        level = torch._C._functorch.maybe_get_level(x)
        self.counts[{-1: 'forward', 1: 'jvp', 2: 'jvp2'}[level]] += 1
        return self.net(x, *args, **kwargs)


@pytest.mark.parametrize('langevin,laplacian,S_min,S_max', [
    (1.0, 'hutchinson', 0.0, float('inf')), (1.0, 'symmetric', 0.0, float('inf')), (0.5, 'none', 0.0, float('inf')),
    (0.0, 'hutchinson', 0.0, float('inf')), (1.0, 'hutchinson', 0.05, 5.0)])
def test_cost_and_noise_window(langevin, laplacian, S_min, S_max):
    net = CallCounter(small_mixture()[0])
    t = edm_schedule(net, 9, 0.002, 80, 7)
    draws = []

    def randn_like(x):
        draws.append(x.shape)
        return torch.randn_like(x)
    x = itotaylor(net, torch.randn(2, 2, 2, 2, dtype=torch.float64) * 80, t, randn_like=randn_like, langevin=langevin,
                  laplacian=laplacian, S_min=S_min, S_max=S_max)
    assert x.dtype == torch.float64 and bool(torch.isfinite(x).all())
    assert net.counts == itotaylor_cost(9, langevin=langevin, laplacian=laplacian, S_min=S_min, S_max=S_max,
                                        t_steps=t)
    noisy = sum(S_min <= float(v) <= S_max for v in t[:-2]) if langevin > 0 else 0
    assert len(draws) == noisy * (2 if laplacian == 'none' else 3)
    if (S_min, S_max) == (0.05, 5.0):
        assert 0 < noisy < 8


def test_cost_table():
    assert itotaylor_cost(18) == dict(forward=1, jvp=17, jvp2=17)
    assert itotaylor_cost(18, laplacian='symmetric') == dict(forward=52, jvp=17, jvp2=0)
    assert itotaylor_cost(18, langevin=0) == dict(forward=18, jvp=17, jvp2=0)
    with pytest.raises(ValueError, match='t_steps'):
        itotaylor_cost(18, S_max=10)


def test_last_step_denoises_and_callback():
    net, _ = small_mixture()
    t = edm_schedule(net, 5, 0.002, 80, 7)
    seen = []
    x = itotaylor(net, torch.randn(2, 2, 2, 2, dtype=torch.float64) * 80, t, randn_like=torch.randn_like,
                  callback=lambda r: seen.append((r.i, float(r.t_cur), float(r.t_next), r.x_cur, r.x_next, r.d_cur)))
    assert [s[:3] for s in seen] == [(i, float(t[i]), float(t[i + 1])) for i in range(5)]
    i, tc, _, x_cur, x_next, d = seen[-1]
    assert torch.equal(x, x_next) and torch.allclose(x_next, net(x_cur, tc), rtol=0, atol=1e-14)
    assert torch.allclose(d, (x_cur - x_next) / tc)


def test_per_seed_noise_is_batch_independent():
    net, _ = small_mixture()
    t = edm_schedule(net, 8, 0.002, 80, 7)

    def run(seeds):
        rnd = StackedRandomGenerator('cpu', seeds)
        x0 = rnd.randn([len(seeds), 2, 2, 2], dtype=torch.float64) * t[0]
        return itotaylor(net, x0, t, randn_like=rnd.randn_like)
    batch = run([3, 4, 5])
    assert torch.allclose(run([4])[0], batch[1], rtol=0, atol=1e-12)
    assert torch.equal(run([3, 4, 5]), batch)
    assert not torch.allclose(batch[0], batch[2])


def test_tiny_network_runs_deterministically():
    from training import networks
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=2, label_dim=3, model_type='SongUNet', model_channels=16,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
    net = net.eval().requires_grad_(False)
    t = edm_schedule(net, 3)
    labels = torch.eye(3)[[0, 2]]

    def run():
        rnd = StackedRandomGenerator('cpu', [0, 1])
        x0 = rnd.randn([2, 2, 8, 8], dtype=torch.float64) * t[0]
        return itotaylor(net, x0, t, labels, randn_like=rnd.randn_like)
    x = run()
    assert x.dtype == torch.float64 and bool(torch.isfinite(x).all()) and torch.equal(x, run())


def test_bad_arguments():
    net, _ = small_mixture()
    x = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match='langevin'):
        itotaylor(net, x, [80.0, 1.0, 0.0], randn_like=torch.randn_like, langevin=-1)
    with pytest.raises(ValueError, match='laplacian'):
        itotaylor(net, x, [80.0, 1.0, 0.0], randn_like=torch.randn_like, laplacian='exact')
    with pytest.raises(ValueError, match='decreasing'):
        itotaylor(net, x, [1.0, 80.0, 0.0], randn_like=torch.randn_like)
    with pytest.raises(ValueError, match='probe'):
        itotaylor_step(net, x, 1.0, 0.5, dW=x, dZ=x)
