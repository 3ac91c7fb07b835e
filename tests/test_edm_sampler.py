"""EDM Algorithm 2 against the reference implementation's outputs, and the ablation sampler's basic laws."""
import numpy as np
import pytest
import torch

from conftest import fixtures_dir
from samplers import edm as edm_samplers
from samplers.generation import draw_inputs, to_uint8
from training import networks


def load_fixture_net(name):
    data = torch.load(fixtures_dir('edm', name), weights_only=True)
    cfg = dict(data['config'])
    net = getattr(networks, cfg.pop('precond'))(**cfg)
    net.load_state_dict(data['state_dict'])
    return net.eval().requires_grad_(False)


@pytest.fixture(scope='module')
def ddpmpp_edm():
    return load_fixture_net('ddpmpp_edm.pt')


@pytest.mark.parametrize('case', ['deterministic_steps5', 'stochastic_steps6'])
def test_edm_sampler_matches_reference(ddpmpp_edm, case):
    ref = torch.load(fixtures_dir('edm', 'edm_sampler_ddpmpp_edm.pt'), weights_only=True)[case]
    net = ddpmpp_edm
    latents, labels, rnd = draw_inputs(net, ref['seeds'], torch.device('cpu'))
    # Our per-seed draws are the reference's (EDM's stacked generator, same order).
    assert torch.equal(latents, ref['latents'])
    assert torch.equal(labels, ref['class_labels'])
    with torch.no_grad():
        images = edm_samplers.edm_sampler(net, latents, labels, randn_like=rnd.randn_like, **ref['sampler_kwargs'])
    assert images.dtype == torch.float64
    err = (images.float() - ref['images']).abs().max().item()
    assert err <= 1e-4, err
    ours, theirs = to_uint8(images), ref['uint8_hwc'].numpy()
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3


def test_edm_schedule_values():
    class Net:
        sigma_min, sigma_max = 0, float('inf')
        round_sigma = staticmethod(torch.as_tensor)
    t = edm_samplers.edm_schedule(Net(), 18)
    expected = [80, 57.586, 40.786, 28.375, 19.352, 12.910, 8.401, 5.315, 3.257, 1.923, 1.088, 0.5853, 0.2964,
                0.1395, 0.05995, 0.02294, 0.007528, 0.002, 0]
    assert t.dtype == torch.float64 and len(t) == 19
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-3, atol=1e-6)


class CountingGaussian(torch.nn.Module):
    """Exact denoiser of N(0, s^2 I) data, counting calls: D(x; sigma) = s^2 / (s^2 + sigma^2) x."""
    img_channels, img_resolution, label_dim = 1, 4, 0
    sigma_min, sigma_max = 0, float('inf')

    def __init__(self, s=0.5):
        super().__init__()
        self.s, self.calls = s, 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        return self.s ** 2 / (self.s ** 2 + sigma ** 2) * x


@pytest.mark.parametrize('solver,disc,schedule,scaling,sigma0,nfe,tol', [
    ('heun', 'edm', 'linear', 'none', 80, 79, 0.015),       # Measured 0.0098 (second order).
    ('euler', 'edm', 'linear', 'none', 80, 40, 0.1),        # Measured 0.070 (first order).
    ('heun', 'vp', 'vp', 'vp', 152.16698, 79, 0.005),       # The paper's VP column; measured 0.0019.
    ('heun', 've', 've', 'none', 100, 79, 0.15),        # Measured 0.121; 0.0283 at 80 steps (2nd order).
])
def test_ablation_sampler_nfe_and_accuracy(solver, disc, schedule, scaling, sigma0, nfe, tol):
    # For N(0, s^2 I) data the PF-ODE maps x(sigma0) = sigma0 z to x(0) = z sigma0 s / sqrt(s^2 + sigma0^2).
    net = CountingGaussian()
    z = torch.randn([3, 1, 4, 4], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = edm_samplers.ablation_sampler(net, z, num_steps=40, solver=solver, discretization=disc,
                                        schedule=schedule, scaling=scaling)
    assert net.calls == nfe
    exact = z * sigma0 * 0.5 / (0.25 + sigma0 ** 2) ** 0.5
    rel = ((out - exact).norm() / exact.norm()).item()
    assert rel < tol, rel


def test_ablation_edm_settings_equal_algorithm_2(ddpmpp_edm):
    # With discretization edm, schedule linear and scaling none, the ablation sampler is Algorithm 2.
    latents, labels, _ = draw_inputs(ddpmpp_edm, [0, 1], torch.device('cpu'))
    with torch.no_grad():
        a = edm_samplers.edm_sampler(ddpmpp_edm, latents, labels, num_steps=4)
        b = edm_samplers.ablation_sampler(ddpmpp_edm, latents, labels, num_steps=4)
    assert (a - b).abs().max().item() < 1e-10


def test_heun_converges_at_second_order():
    net = CountingGaussian(s=0.3)
    z = torch.randn([2, 1, 4, 4], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Compare the state at the last nonzero noise level to the exact solution there.
    errors = []
    for steps in (16, 32, 64):
        _, traj = edm_samplers.edm_sampler(net, z, num_steps=steps, return_trajectory=True)
        t_last = edm_samplers.edm_schedule(net, steps)[-2]
        exact = z * 80 * (0.09 + t_last ** 2) ** 0.5 / (0.09 + 80 ** 2) ** 0.5
        errors.append(((traj[-2] - exact).norm() / exact.norm()).item())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 2) < 0.3), orders
