"""CLD process, gDDIM sampler, exact oracles and the CLD training pieces (docs/cld_gddim.md)."""

import ast
import hashlib
import inspect
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import generate
import samplers
import train
from samplers import selection
from samplers.analytic import CountingNet, Gaussian

from samplers.analytic import GaussianCLD, GaussianMixtureCLD
from samplers.generation import draw_inputs
from samplers.gddim import euler_maruyama, gddim, sdeis_coefficients, time_steps
from torch_utils import persistence
from torch_utils.misc import StackedRandomGenerator
from training import cld as training_cld
from training.dataset import ImageFolderDataset
from training.demo_data import write_dataset
from training.networks import EDMPrecond
from training.cld import CLD

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors (tests/conftest.py)

apply, split, stack = CLD.apply, CLD.split, CLD.stack


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
    assert torch.allclose(twin(u, t), GaussianCLD(mean, 0.09, cld=cld)(u, t), rtol=1e-12, atol=1e-12)


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
    net = GaussianCLD(torch.full([1, 1, 1], 0.3), 0.0, cld=CLD())
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
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25, cld=CLD())
    errors = [_var_error(net, gddim, n, max_order=max_order) for n in steps]
    np.testing.assert_allclose(errors, reference, rtol=0.06)
    assert _slope(steps, errors) >= 0.85 * max_order


def test_gddim_beats_euler_maruyama_at_equal_nfe():
    # Every order beats Euler on the same probability-flow ODE by orders of magnitude; the default max_order=3
    # (and 4) also beats Euler-Maruyama on the reverse SDE (docs/cld_gddim.md lists the ratios).
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25, cld=CLD())
    for n in [10, 20, 50]:
        em_ode = _var_error(net, euler_maruyama, n, langevin=0)
        em_sde = _var_error(net, euler_maruyama, n, langevin=1)
        for k in (1, 2, 3, 4):
            error = _var_error(net, gddim, n, max_order=k)
            assert error < 0.05 * em_ode
            assert k < 3 or error < 0.7 * em_sde


def test_stochastic_gddim_matches_reverse_sde_marginals():
    net = GaussianCLD(torch.zeros(1, 1, 1), 0.25, cld=CLD())
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
    net = GaussianMixtureCLD(torch.tensor([[[[-0.5]]], [[[0.5]]]]).expand(2, 1, 2, 2), 0.01, cld=CLD())
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
    oracle = GaussianCLD(mean, 0.16, cld=cld)
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


def test_safe_loading_of_a_cld_snapshot(tmp_path):
    net = _tiny_precond(gamma=0.02, beta_0=3.0).eval()
    path = tmp_path / 'cld.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=training_cld.CLDLoss(gamma=0.02, beta_0=3.0)), f)
    data = persistence.load_network(str(path))  # safe path: classes found by name, rebuilt from their arguments
    ema, loss_fn = data['ema'], data['loss_fn']
    assert type(ema) is training_cld.CLDPrecond and type(loss_fn) is training_cld.CLDLoss
    assert ema.cld.params() == loss_fn.cld.params() == dict(beta_0=3.0, beta_1=0.0, m_inv=4.0, gamma=0.02, eps=1e-6)
    u = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ema(u, 0.4), net(u, 0.4))
    loss_fn.set_step(7)
    assert loss_fn.step == 7 and loss_fn.state_dict() == {}

# ----------------------------------------------------------------------------
# The solver registry, samplers.sample and the sampler rule.


def test_sample_runs_gddim_on_a_cld_net_with_per_seed_priors():
    oracle = GaussianMixtureCLD(torch.tensor([-0.4, 0.4], **F64).reshape(2, 1, 1, 1).expand(2, 1, 2, 2), 0.01,
                                cld=CLD())
    seeds = [11, 12, 13]
    latents, _, gen = draw_inputs(oracle, seeds, 'cpu')
    counter = CountingNet(oracle)
    x = samplers.sample(counter, latents, solver='gddim', num_steps=12, max_order=2, generator=gen)
    assert counter.calls == samplers.solver_nfe('gddim', 12) == 12  # NFE = num_steps (final denoising call)
    # The same as the sampler called directly: the velocity is drawn from each seed's generator after the latents.
    latents, _, gen = draw_inputs(oracle, seeds, 'cpu')
    direct = gddim(oracle, oracle.cld.prior(latents, gen.randn_like), time_steps(12), max_order=2)
    assert x.shape == (3, 1, 2, 2) and torch.equal(x, direct)
    assert samplers.solver_nfe('gddim', 50) == 50 and samplers.solver_defaults('gddim') == dict(max_order=3,
                                                                                                 langevin=0.0)
    # Stochastic solvers: each image depends only on its seed; callbacks see the state u = (x, v).
    records = []
    outs = []
    for batch in (seeds, seeds[2:]):
        latents, _, gen = draw_inputs(oracle, batch, 'cpu')
        outs.append(samplers.sample(oracle, latents, solver='cld_em', num_steps=6, generator=gen,
                                    callback=records.append))
    assert torch.equal(outs[0][2], outs[1][0]) and not torch.equal(outs[0][0], outs[0][1])
    assert len(records) == 10 and records[0].x_cur.shape == (3, 2, 2, 2) and float(records[0].t_cur) == 1.0


def test_sample_refuses_the_wrong_kind_of_net():
    cld_net = GaussianCLD(torch.zeros(1, 2, 2), 0.25, cld=CLD())
    denoiser = Gaussian(torch.zeros(1, 2, 2, **F64), torch.full([1, 2, 2], 0.25, **F64))
    latents = torch.randn(1, 1, 2, 2)
    cases = [(cld_net, dict(solver='ipndm'), "needs a scalar-sigma denoiser.*use solver='gddim' or 'cld_em'"),
             (cld_net, dict(solver='edm'), 'needs a scalar-sigma denoiser'),
             (denoiser, dict(solver='gddim'), 'samples CLD nets'),
             (cld_net, dict(solver='gddim', langevin=1.0), 'set max_order=1'),
             (cld_net, dict(solver='gddim', max_order=5), 'max_order must be'),
             (cld_net, dict(solver='cld_em', afs=True), 'does not support afs'),
             (cld_net, dict(solver='gddim', num_steps=4, t_steps=[1.0, 0.1, 0.001]), 'does not match')]
    for net, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            samplers.sample(net, latents, **kwargs)
    with pytest.raises(TypeError, match='schedule_rho|deis_mode'):
        samplers.sample(cld_net, latents, solver='gddim', deis_mode='tab')


def _opts(**given):
    opts = dict(rho=None, afs=False, denoise_to_zero=False, dp=False)
    opts.update(given)
    return opts


@pytest.mark.parametrize('given,expected,nfe', [
    (dict(), dict(solver='gddim', num_steps=50), 50),
    (dict(num_steps=20, max_order=2), dict(solver='gddim', num_steps=20, max_order=2), 20),
    (dict(solver='gddim', max_order=1, langevin=1.0), dict(solver='gddim', num_steps=50, max_order=1, langevin=1.0),
     50),
    (dict(solver='cld_em', num_steps=30, langevin=0.0), dict(solver='cld_em', num_steps=30, langevin=0.0), 30),
])
def test_sampler_rule_for_cld_networks(given, expected, nfe):
    kind, kwargs = selection.choose_sampler(_opts(**given), family='cld')
    assert (kind, kwargs) == ('cld', expected)
    selection.check_sampler(kind, kwargs)
    assert selection.describe_nfe(kind, kwargs) == nfe
    # Before the network is known, options some family accepts pass.
    selection.precheck(_opts(**given))


@pytest.mark.parametrize('family,given,message', [
    ('cld', dict(solver='ipndm'), '--solver=ipndm needs a scalar-sigma denoiser, but the network is a CLD network; '
     'use --solver=gddim|cld_em'),
    ('denoiser', dict(solver='gddim'), '--solver=gddim needs a CLD network, but the network is a scalar-sigma'),
    ('cld', dict(steps=18), '--steps cannot be used with a CLD network'),
    ('cld', dict(afs=True, sigma_max=3.0), '--sigma_max, --afs cannot be used with a CLD network'),
    ('denoiser', dict(langevin=1.0), '--langevin only applies to --solver=gddim|cld_em, not to EDM'),
    ('denoiser', dict(disc='vp', langevin=1.0), '--langevin only applies to --solver=gddim|cld_em'),
])
def test_sampler_rule_refusals_by_family(family, given, message):
    with pytest.raises(selection.OptionError, match=message):
        selection.choose_sampler(_opts(**given), family=family)


def test_sampler_rule_notes_and_early_checks():
    notes = []
    kind, kwargs = selection.choose_sampler(_opts(solver='cld_em', max_order=2), note=notes.append, family='cld')
    assert kwargs == dict(solver='cld_em', num_steps=50) and notes == ['Note: --max_order not used by '
                                                                       '--solver=cld_em; ignored.']
    kind, kwargs = selection.choose_sampler(_opts(solver='ipndm', langevin=1.0), note=notes.append)
    assert 'langevin' not in kwargs and notes[-1] == 'Note: --langevin not used by --solver=ipndm; ignored.'
    assert selection.choose_sampler(_opts(solver='dpmpp', predict_x0=False))[1]['predict_x0'] is False
    # Options that no family accepts fail before the network is loaded, with every family's reason.
    with pytest.raises(selection.OptionError, match='For a scalar-sigma denoiser: --langevin .*For a CLD network: '
                       'langevin > 0 .*set max_order=1'):
        selection.precheck(_opts(langevin=1.0))
    with pytest.raises(selection.OptionError, match='langevin > 0'):
        selection.check_sampler(*selection.choose_sampler(_opts(solver='gddim', langevin=0.5), family='cld'))
    assert selection.net_family(_tiny_precond()) == 'cld' and selection.net_family(CountingNet(_tiny_precond())) \
        == 'cld'
    assert selection.net_family(Gaussian(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))) == 'denoiser'

# ----------------------------------------------------------------------------
# train.py --precond=cld and generate.py end to end (in-process).


def _smooth_images(n=8, seed=0):
    """n smooth 8x8 grayscale images (random walks along rows through tanh)."""
    x = np.tanh(np.random.RandomState(seed).randn(n, 8, 8).cumsum(-1) * 0.5)
    return np.clip(np.round(x * 127.5 + 128), 0, 255).astype(np.uint8)


def _dataset_loss(net, data, repeats=8):
    """CLDLoss of `net` on the whole dataset with fixed draws (mean per element)."""
    ds = ImageFolderDataset(data)
    images = torch.tensor(np.stack([ds[i][0] for i in range(len(ds))])).float() / 127.5 - 1
    n = len(images)
    with torch.no_grad():
        return float(np.mean([training_cld.CLDLoss()(net, images, rng=_rng(n, 1000 + n * r)).mean()
                              for r in range(repeats)]))


@pytest.fixture(scope='module')
def cld_run(tmp_path_factory):
    """A 40-step train.py --precond=cld run on 8 smooth 8x8 images (batch 8)."""
    folder = tmp_path_factory.mktemp('cld_run')
    data = write_dataset(_smooth_images(), str(folder / 'smooth.zip'))
    args = [f'--outdir={folder / "runs"}', f'--data={data}', '--precond=cld', '--arch=ddpmpp', '--cbase=8', '--cres=1',
            '--batch=8', '--workers=0', '--augment=0', '--dropout=0', '--lr=2e-3', '--lr-rampup=0', '--ema=0.0001',
            '--seed=1', f'--duration={40 * 8 / 1e6}', '--tick=0.08', '--snap=100', '--dump=100']
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (name,) = os.listdir(folder / 'runs')
    return dict(data=data, run_dir=str(folder / 'runs' / name), output=result.output)


def test_train_py_cld_lowers_the_loss_and_writes_a_loadable_snapshot(cld_run):
    run_dir = cld_run['run_dir']
    assert os.path.basename(run_dir).endswith('-uncond-ddpmpp-cld-gpus1-batch8-fp32')
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        opts = json.load(f)
    assert opts['network_kwargs']['class_name'] == 'training.cld.CLDPrecond'
    assert {k: opts['loss_kwargs'][k] for k in CLD().params()} == CLD().params()
    snapshot = persistence.load_network(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    ema, loss_fn = snapshot['ema'], snapshot['loss_fn']
    assert type(ema).__name__ == 'CLDPrecond' and type(loss_fn).__name__ == 'CLDLoss'
    assert ema.img_channels == 1 and ema.model.init_kwargs['out_channels'] == 2 and ema.init_kwargs['gamma'] == 0.04
    assert ema.cld.params() == loss_fn.cld.params() == CLD().params()
    torch.manual_seed(opts['seed'])  # the loop's initial network
    initial = dnnlib.construct_class_by_name(**opts['network_kwargs'], img_resolution=8, img_channels=1, label_dim=0)
    before, after = _dataset_loss(initial.eval(), cld_run['data']), _dataset_loss(ema.eval(), cld_run['data'])
    assert after < 0.7 * before, (before, after)  # measured: 0.99 -> 0.34


def _generate(*args):
    result = CliRunner().invoke(generate.main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _digests(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), 'rb') as f:
            out[name] = hashlib.md5(f.read()).hexdigest()
    return out


def test_generate_py_samples_a_cld_snapshot_per_seed(cld_run, tmp_path):
    network = os.path.join(cld_run['run_dir'], 'network-snapshot-000000.pkl')
    runs = {}
    for name, extra in [('a', ['--batch=4']), ('b', ['--batch=4']), ('c', ['--batch=3']),
                        ('sde4', ['--batch=4', '--max_order=1', '--langevin=1', '--num_steps=8']),
                        ('sde1', ['--batch=1', '--solver=gddim', '--max_order=1', '--langevin=1', '--num_steps=8'])]:
        code, out = _generate(f'--network={network}', f'--outdir={tmp_path / name}', '--seeds=0-3', *extra)
        assert code == 0, out
        runs[name] = (_digests(tmp_path / name), out)
    assert 'Sampler: cld {"solver": "gddim", "num_steps": 50}; NFE = 50' in runs['a'][1]
    assert 'NFE = 8' in runs['sde4'][1]
    assert sorted(runs['a'][0]) == [f'00000{i}.png' for i in range(4)]
    assert runs['a'][0] == runs['b'][0] == runs['c'][0]          # same seeds -> same bytes, any batch size
    assert runs['sde4'][0] == runs['sde1'][0] != runs['a'][0]    # the reverse SDE draws per seed too
    assert len(set(runs['a'][0].values())) == 4


def test_generate_py_refuses_mismatched_solvers_in_one_line(cld_run, tmp_path):
    cld_network = os.path.join(cld_run['run_dir'], 'network-snapshot-000000.pkl')
    edm_network = str(tmp_path / 'edm.pkl')
    with open(edm_network, 'wb') as f:
        pickle.dump(dict(ema=EDMPrecond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=8,
                                        channel_mult=[1], num_blocks=1, attn_resolutions=[])), f)
    cases = [(cld_network, ['--solver=ipndm'], 'needs a scalar-sigma denoiser, but the network is a CLD network'),
             (cld_network, ['--steps=10'], '--steps cannot be used with a CLD network'),
             (cld_network, ['--langevin=1'], 'set max_order=1'),
             (edm_network, ['--solver=gddim'], 'needs a CLD network, but the network is a scalar-sigma denoiser'),
             (edm_network, ['--max_order=2'], '--max_order only applies to the fast solvers')]
    for network, args, message in cases:
        code, out = _generate(f'--network={network}', f'--outdir={tmp_path / "out"}', '--seeds=0', *args)
        lines = [line for line in out.splitlines() if line.startswith('Error')]
        assert code != 0 and len(lines) == 1 and message in lines[0], out
        assert 'Traceback' not in out and not os.path.exists(tmp_path / 'out' / '000000.png')
