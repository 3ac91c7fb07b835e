"""samplers/analytic.py: the exact denoisers are differentiable, so torch.func.jvp through them is exact."""

import pytest
import torch

from samplers import analytic

SHAPE = (2, 4, 4)


def denoisers():
    g = torch.Generator().manual_seed(0)
    rand = lambda *size: torch.rand(*size, generator=g, dtype=torch.float64)  # noqa: E731
    randn = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        'gaussian': analytic.Gaussian(0.6 * (rand(*SHAPE) - 0.5), 0.005 + 0.015 * rand(*SHAPE)),
        'mixture': analytic.GaussianMixture(0.5 * randn(5, *SHAPE), 0.01 + 0.05 * rand(5), 0.1 + rand(5)),
        'ideal': analytic.IdealDenoiser(0.5 * randn(6, *SHAPE)),
    }


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # torch's own jvp decompositions, on first use
@pytest.mark.parametrize('name', ['gaussian', 'mixture', 'ideal'])
@pytest.mark.parametrize('sigma', [0.05, 0.5, 5.0])
def test_jvp_matches_central_differences(name, sigma):
    net = denoisers()[name]
    g = torch.Generator().manual_seed(1)
    x = (0.5 + sigma) * torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    s = torch.full([3], sigma, dtype=torch.float64)
    dx = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    ds = sigma * torch.rand(3, generator=g, dtype=torch.float64)  # Tangent in x and in sigma at once.
    out, tangent = torch.func.jvp(lambda x, s: net(x, s), (x, s), (dx, ds))
    torch.testing.assert_close(out, net(x, s), rtol=0, atol=0)
    h = 1e-6 * sigma  # The denoiser varies on the scale of sigma.
    central = (net(x + h * dx, s + h * ds) - net(x - h * dx, s - h * ds)) / (2 * h)
    assert central.norm() > 1e-3  # The derivative is far from zero, so a detached input would fail.
    # Measured: <= 3e-9, except 5e-8 for the ideal denoiser at sigma = 0.05 (its posterior is nearly one-hot there).
    assert float((tangent - central).norm() / central.norm()) <= 1e-6
