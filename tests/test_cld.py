"""CLD process, gDDIM sampler, exact oracles and the CLD training pieces (docs/cld_gddim.md)."""

import ast
import inspect
import math
import pickle

import numpy as np
import pytest
import torch

from samplers.cld import CLD, GaussianCLD, GaussianMixtureCLD, apply, split, stack
from samplers.gddim import euler_maruyama, gddim, sdeis_coefficients, time_steps
from torch_utils.misc import StackedRandomGenerator
from training import cld as training_cld


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # Many tiny float64 ops: one thread avoids oversubscription on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


F64 = dict(dtype=torch.float64)

# ----------------------------------------------------------------------------
# The process.


def test_closed_form_matches_reference_values():
    # Defaults beta = 4, M = 1/4, gamma = 0.04, Sigma_0 = diag(1e-6, 0.01 + 1e-6); values of gDDIM's CIFAR-10 setup.
    cld = CLD()
    t = torch.tensor([0.001, 0.1, 0.5], **F64)
    sigma = [[4.19408e-6, 2.19196e-4, 1.75586e-2], [0.221811, 0.12986, 0.215758], [0.986461, 5.28688e-3, 0.247934]]
    r = [[8.4875e-4, 1.86379e-3, -0.0267363, 0.129784], [0.112752, -0.457273, 0.428948, -0.17822],
         [-0.584152, 0.80326, -0.40581, -0.288534]]
    psi = [[0.999968, 0.0158725, -0.00396813, 0.984096], [0.808792, 0.718926, -0.179732, 0.0898658],
           [0.0915782, 0.146525, -0.0366313, -0.0549469]]
    s = cld.cov(t)
    np.testing.assert_allclose(torch.stack([s[:, 0, 0], s[:, 0, 1], s[:, 1, 1]], 1), sigma, rtol=3e-5)
    np.testing.assert_allclose(cld.R(t).flatten(1), r, rtol=5e-5, atol=1e-7)
    np.testing.assert_allclose(cld.psi(t).flatten(1), psi, rtol=2e-5)
    np.testing.assert_allclose(cld.psi(1.0), math.exp(-8) * np.array([[9, 16], [-4, -7]]), rtol=1e-12)


def test_R_is_the_gddim_square_root():
    cld = CLD()
    t = torch.tensor([0.0, 1e-5, 1e-3, 0.02, 0.3, 0.77, 1.0], **F64)
    r, s = cld.R(t), cld.cov(t)
    assert float((r @ r.transpose(-1, -2) - s).abs().max()) < 1e-10
    np.testing.assert_allclose(r[0], np.diag([1e-3, math.sqrt(0.01 + 1e-6)]), rtol=1e-14)
    # dR/dt = (F + G G^T Sigma^-1 / 2) R (central differences, relative error of the derivative).
    for t0 in [1e-3, 0.05, 0.6]:
        h = 1e-6 * t0
        slope = (cld.R(t0 + h) - cld.R(t0 - h)) / (2 * h)
        rhs = (cld.drift(t0) + 0.5 * cld.diffusion_sq(t0) @ torch.linalg.inv(cld.cov(t0))) @ cld.R(t0)
        assert float((slope - rhs).abs().max() / rhs.abs().max()) < 1e-8
    # Psi is a transition matrix: Psi(t, s) Psi(s, r) = Psi(t, r), also backwards in time.
    np.testing.assert_allclose(cld.psi(0.2, 0.7) @ cld.psi(0.7, 0.4), cld.psi(0.2, 0.4), rtol=1e-12, atol=1e-15)


def test_mean_and_covariance_match_monte_carlo_of_the_forward_sde():
    cld = CLD()
    gen = torch.Generator().manual_seed(1)
    n, dt, x0 = 20000, 5e-4, 0.5
    a, b = cld.var0()
    x = x0 + math.sqrt(a) * torch.randn(n, generator=gen, **F64)
    v = math.sqrt(b) * torch.randn(n, generator=gen, **F64)
    k, noise = cld.kappa, math.sqrt(2 * cld.Gamma * cld.beta_0 * dt)
    checks = {100: 0.05, 400: 0.2, 2000: 1.0}
    for step in range(1, 2001):  # Euler-Maruyama of du = F u dt + G dW (beta constant)
        x, v = x + cld.beta_0 * k * k * v * dt, v - cld.beta_0 * (x + 2 * k * v) * dt + noise * torch.randn(
            n, generator=gen, **F64)
        if step in checks:
            t = checks[step]
            mean = cld.mean(torch.full([1, 1, 1, 1], x0, **F64), t).reshape(2)
            cov = cld.cov(t)
            samples = torch.stack([x, v])
            se_mean = (cov.diagonal() / n).sqrt()
            assert bool(((samples.mean(1) - mean).abs() < 3 * se_mean).all()), (t, samples.mean(1), mean)
            emp = torch.cov(samples)
            se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov ** 2) / n).sqrt()
            assert bool(((emp - cov).abs() < 3 * se_cov).all()), (t, emp, cov)


def test_prior_and_perturbation_layout():
    cld = CLD()
    latents = torch.randn(3, 2, 4, 4, **F64)
    gen = StackedRandomGenerator('cpu', [5, 6, 7])
    u = cld.prior(latents, gen.randn_like)
    assert u.shape == (3, 4, 4, 4)
    assert torch.equal(split(u)[0], latents)  # x is the caller's latents; v is drawn after them
    v_again = StackedRandomGenerator('cpu', [5, 6, 7]).randn(latents.shape, **F64) * 0.5
    assert torch.equal(split(u)[1], v_again)
    # Score <-> eps are inverse; the perturbation is mean + R z per sample.
    z = torch.randn(3, 4, 4, 4, **F64)
    t = torch.tensor([0.01, 0.3, 0.9], **F64)
    assert torch.allclose(cld.score_to_eps(cld.eps_to_score(z, t), t), z, atol=1e-12)
    ut = cld.perturb(latents, t, z)
    expected = apply(cld.psi(t), stack(latents, 0 * latents)) + apply(cld.R(t), z)
    assert torch.allclose(ut, expected, atol=1e-14)
    with pytest.raises(ValueError, match='gamma'):
        CLD(gamma=-1)

# ----------------------------------------------------------------------------
# Oracles.


def test_mixture_oracle_is_the_scaled_score():
    cld = CLD()
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixtureCLD(torch.rand(3, 1, 2, 2, generator=g, **F64) - 0.5, torch.tensor([0.01, 0.04, 0.2]),
                             w=[0.2, 0.3, 0.5], cld=cld)
    u = torch.randn(4, 2, 2, 2, generator=g, **F64)
    t = torch.tensor([0.02, 0.02, 0.3, 0.8], **F64)
    u_var = u.clone().requires_grad_(True)
    score, = torch.autograd.grad(mix.log_prob(u_var, t).sum(), u_var)
    assert torch.allclose(mix(u, t), cld.score_to_eps(score, t), rtol=1e-10, atol=1e-10)
    # Two identical components are one Gaussian.
    mean = torch.rand(1, 2, 2, generator=g, **F64)
    twin = GaussianMixtureCLD(torch.stack([mean, mean]), 0.09, cld=cld)
    assert torch.allclose(twin(u, t), GaussianCLD(mean, 0.09, cld)(u, t), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# gDDIM and Euler-Maruyama with exact moment propagation (Gaussian data, no final denoising step).


def _propagate(net, sampler, num_intervals, **options):
    """Exact mean and covariance at t_min of a sampler started from N(m_1, S_1), and the exact ones.

    The update is affine in (u, noise) for Gaussian data, so one run on a batch of unit inputs gives its matrices:
    rows 0, 1 start at e_x, e_v; row 2 at 0; rows 3 + 2k + c start at 0 and get e_c as the noise of step k."""
    t = time_steps(num_intervals + 1)
    rows = 3 + 2 * num_intervals
    u = torch.zeros(rows, 2, 1, 1, **F64)
    u[0, 0] = u[1, 1] = 1
    calls = []

    def unit_noise(like):
        z = torch.zeros_like(like)
        z[3 + 2 * len(calls), 0] = z[4 + 2 * len(calls), 1] = 1
        calls.append(1)
        return z

    out = sampler(net, u, t, randn_like=unit_noise, denoise_final=False, return_u=True, **options).reshape(rows, 2)
    offset = out[2]
    lin, noise = (out[:2] - offset).T, out[3:] - offset
    (m_x, m_v), s = net.marginal(torch.tensor([1.0, 1e-3], **F64))
    means = torch.stack([m_x.reshape(2), m_v.reshape(2)], 1)
    return lin @ means[0] + offset, lin @ s[0].reshape(2, 2) @ lin.T + noise.T @ noise, means[1], s[1].reshape(2, 2)


def _var_error(net, sampler, n, **options):
    _, cov, _, exact = _propagate(net, sampler, n, **options)
    return abs(float(cov[0, 0] / exact[0, 0]) - 1)


@pytest.mark.parametrize('max_order,langevin', [(1, 0), (2, 0), (3, 0), (4, 0), (1, 0.5), (1, 1)])
def test_gddim_is_exact_for_point_mass_data(max_order, langevin):
    net = GaussianCLD(torch.full([1, 1, 1], 0.3), 0.0)
    for n in [1, 2, 7] if langevin else [1, 2, 7, 50]:
        mean, cov, mean_exact, cov_exact = _propagate(net, gddim, n, max_order=max_order, langevin=langevin)
        assert float((mean - mean_exact).abs().max()) < 1e-13
        # One step from t = 1 to 1e-3 amplifies round-off by |Psi(1e-3, 1)| ~ 1e4; the stochastic coefficients
        # come from an RK4 integration.
        assert float((cov - cov_exact).abs().max() / cov_exact.abs().max()) < (1e-8 if langevin else 1e-10)


def _slope(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# max_order, step counts of the fit, relative errors of Var x there (independent float64 computation).
ORDERS = [(1, [40, 80, 160, 320], [0.23, 0.125, 0.066, 0.034]),
          (2, [40, 80, 160, 320], [0.073, 0.021, 5.4e-3, 1.4e-3]),
          (3, [20, 40, 80, 160], [0.11, 0.017, 2.0e-3, 2.2e-4]),
          (4, [20, 40, 80], [0.047, 8.4e-4, 1.5e-4])]


@pytest.mark.parametrize('max_order,steps,reference', ORDERS)
def test_gddim_convergence_order_on_gaussian_data(max_order, steps, reference):
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25)
    errors = [_var_error(net, gddim, n, max_order=max_order) for n in steps]
    np.testing.assert_allclose(errors, reference, rtol=0.06)
    assert _slope(steps, errors) >= 0.85 * max_order


def test_gddim_beats_euler_maruyama_at_equal_nfe():
    # Every order beats Euler on the same probability-flow ODE by orders of magnitude; the default max_order=3
    # (and 4) also beats Euler-Maruyama on the reverse SDE (docs/cld_gddim.md lists the ratios).
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25)
    for n in [10, 20, 50]:
        em_ode = _var_error(net, euler_maruyama, n, langevin=0)
        em_sde = _var_error(net, euler_maruyama, n, langevin=1)
        for k in (1, 2, 3, 4):
            error = _var_error(net, gddim, n, max_order=k)
            assert error < 0.05 * em_ode
            assert k < 3 or error < 0.7 * em_sde


def test_stochastic_gddim_matches_reverse_sde_marginals():
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25)
    steps = [20, 40, 80, 160]
    errors = []
    for n in steps:
        _, cov, _, exact = _propagate(net, gddim, n, max_order=1, langevin=1.0)
        errors.append(float((cov - exact).abs().max() / exact.abs().max()))
    assert all(e1 < 0.7 * e0 for e0, e1 in zip(errors, errors[1:])), errors
    assert _slope(steps, errors) > 0.75


def test_stochastic_coefficients_match_the_closed_form_at_lambda_one():
    # For lambda = 1, F_hat = F + G G^T Sigma^-1 has the transition Sigma_t Psi(s, t)^T Sigma_s^-1.
    cld = CLD()
    for s, t in [(1.0, 1e-3), (0.5, 0.3), (0.01, 1e-3)]:
        psi, c, noise = sdeis_coefficients(cld, [s, t], langevin=1.0)
        psi_hat = cld.cov(t) @ cld.psi(s, t).T @ torch.linalg.inv(cld.cov(s))
        c_exact = (psi_hat - cld.psi(t, s)) @ cld.R(s)
        p_exact = cld.cov(t) - psi_hat @ cld.cov(s) @ psi_hat.T
        assert float((c[0, 0] - c_exact).abs().max() / c_exact.abs().max()) < 1e-8
        assert float((noise[0] @ noise[0] - p_exact).abs().max() / p_exact.abs().max()) < 1e-8


def test_sampler_contract_nfe_and_per_seed_noise():
    net = GaussianMixtureCLD(torch.tensor([[[[-0.5]]], [[[0.5]]]]).expand(2, 1, 2, 2), 0.01)
    calls = []

    def counting(u, t, class_labels=None):
        calls.append(float(t[0]))
        return net(u, t)
    counting.cld = net.cld
    t = time_steps(50)
    assert len(t) == 50 and float(t[0]) == 1.0 and float(t[-1]) == 1e-3
    assert torch.allclose(t[1], torch.tensor((1 - (1 - 1e-3 ** 0.5) / 49) ** 2, **F64))
    seeds = [3, 4, 5]
    gen = StackedRandomGenerator('cpu', seeds)
    latents = gen.randn([3, 1, 2, 2], **F64)
    x = gddim(counting, net.cld.prior(latents, gen.randn_like), t, max_order=3)
    assert len(calls) == 50 and calls[-1] == 1e-3  # NFE = num_steps with the final denoising step
    assert x.shape == latents.shape and bool(x.isfinite().all())
    # Stochastic sampling depends only on each sample's seed.
    outs = []
    for batch in (seeds, seeds[1:2]):
        gen = StackedRandomGenerator('cpu', batch)
        u = net.cld.prior(gen.randn([len(batch), 1, 2, 2], **F64), gen.randn_like)
        outs.append(gddim(net, u, time_steps(8), max_order=1, langevin=0.5, randn_like=gen.randn_like))
    assert torch.allclose(outs[0][1], outs[1][0], rtol=1e-12, atol=1e-12)
    for bad in [dict(max_order=5), dict(langevin=-1), dict(max_order=3, langevin=1)]:
        with pytest.raises(ValueError):
            gddim(net, u, time_steps(8), **bad)

# ----------------------------------------------------------------------------
# Training pieces.


def _rng(n, seed):
    return StackedRandomGenerator('cpu', range(seed, seed + n))


def test_loss_of_the_exact_oracle_is_the_analytic_minimum():
    cld = CLD()
    g = torch.Generator().manual_seed(2)
    mean = torch.rand(1, 4, 4, generator=g, **F64) - 0.5
    oracle = GaussianCLD(mean, 0.16, cld)
    loss_fn = training_cld.CLDLoss()
    n = 2000
    images = oracle.sample(n, g)
    loss = loss_fn(oracle, images, rng=_rng(n, 0)).flatten(1).sum(1)
    # E[loss | t] = sum over pixels of tr(I - R^T S^-1 R) = 16 (2 - tr(S_t^-1 Sigma_t)).
    t = loss_fn.epsilon_t + (1 - loss_fn.epsilon_t) * _rng(n, 0).rand([n]).to(torch.float64)
    _, s = oracle.marginal(t)
    s = s[:, 0, 0, 0, 0]  # every pixel has the same covariance
    analytic = 16 * (2 - torch.linalg.solve(s, cld.cov(t)).diagonal(dim1=-2, dim2=-1).sum(-1))
    diff = loss - analytic
    assert abs(float(diff.mean())) < 3 * float(diff.std()) / math.sqrt(n)
    assert 0.5 < float(analytic.mean()) < 8  # far from 0 and from 32 = E|z|^2, the loss of eps = 0

    perturbed = {
        'scaled': lambda u, t, *a, **k: 1.05 * oracle(u, t),
        'shifted': lambda u, t, *a, **k: oracle(u, t) + 0.05,
        'wrong time': lambda u, t, *a, **k: oracle(u, 1.1 * t),
        'Cholesky frame': lambda u, t, *a, **k: apply(torch.linalg.inv(cld.chol(t)) @ cld.R(t), oracle(u, t)),
    }
    for name, net in perturbed.items():
        worse = loss_fn(net, images, rng=_rng(n, 0)).flatten(1).sum(1)
        gain = worse - loss
        assert float(gain.mean()) > 3 * float(gain.std()) / math.sqrt(n), name


def _tiny_precond(**kwargs):
    torch.manual_seed(0)
    return training_cld.CLDPrecond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=16,
                                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0, **kwargs)


def test_precond_persists_its_cld_parameters():
    net = _tiny_precond(gamma=0.02).eval()
    assert net.init_kwargs['gamma'] == 0.02 and net.cld.gamma == 0.02 and net.cld.beta_0 == 4.0
    u = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        eps = net(u, torch.tensor([0.3, 0.7]))
        copy = pickle.loads(pickle.dumps(net))
        assert eps.shape == u.shape and torch.equal(copy(u, torch.tensor([0.3, 0.7])), eps)
    assert copy.cld.params() == net.cld.params()
    # The module is embedded in snapshots: its imports are numpy, torch and torch_utils.persistence only.
    tree = ast.parse(inspect.getsource(training_cld))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names if isinstance(n, ast.Import)}
    names |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert names == {'numpy', 'torch', 'torch_utils'}


def test_training_lowers_the_loss_and_the_net_samples():
    torch.manual_seed(1)
    net = _tiny_precond().train()
    loss_fn = training_cld.CLDLoss()
    images = torch.tanh(torch.randn(8, 1, 8, 8).cumsum(-1) * 0.5)  # smooth structured data in [-1, 1]
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        optimizer.zero_grad()
        loss = loss_fn(net, images, rng=_rng(8, 8 * step)).sum() / 8
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    net.eval()
    gen = StackedRandomGenerator('cpu', [0, 1])
    with torch.no_grad():
        x = gddim(net, net.cld.prior(gen.randn([2, 1, 8, 8]), gen.randn_like), time_steps(6))
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32 and bool(x.isfinite().all())
