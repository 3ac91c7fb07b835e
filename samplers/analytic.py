"""Exact denoisers of known data distributions, and a high-accuracy probability-flow ODE integrator.

These are the ground truth for the sampler tests and benchmarks. Each denoiser follows the project's denoiser
contract (`net(x, sigma, class_labels=None, **kwargs) -> D(x; sigma)` plus `img_resolution`, `img_channels`,
`label_dim`, `sigma_min`, `sigma_max`, `round_sigma`) and computes D = E[y | y + sigma n = x] in float64,
returning it in the dtype of `x`.

- `Gaussian`: y ~ N(mean, diag(var)). Its PF-ODE has a closed-form solution.
- `GaussianMixture`: y ~ sum_k w_k N(mu_k, s2_k I).
- `IdealDenoiser`: the empirical distribution of a finite set of images (a mixture with s2 = 0), i.e. the
  "ideal denoiser" of Karras et al. 2022.
- `GaussianCLD`, `GaussianMixtureCLD` (from `samplers.cld`): the exact noise models of Gaussian and Gaussian-mixture
  data under a CLD process, usable as CLD nets (`samplers.sample(oracle, latents, solver='gddim')`).

`solve_pf_ode(net, x, sigma_from, sigma_to)` integrates dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al.
2022, eq. 1 and 3 with sigma(t) = t, s(t) = 1) with scipy's DOP853 in float64 and tight tolerances.
"""

import math

import numpy as np
import torch

from .cld import GaussianCLD, GaussianMixtureCLD
from .sampling import sample
from .schedules import get_schedule

# ----------------------------------------------------------------------------


class AnalyticDenoiser:
    """Shared plumbing: shape bookkeeping, the denoiser-contract attributes and the float64 evaluation."""

    label_dim = 0

    def __init__(self, shape, sigma_min=0.002, sigma_max=80.0):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f'shape must be (channels, height, width) (got {shape})')
        self.shape = shape
        self.dim = int(np.prod(shape))
        self.img_channels = shape[0]
        self.img_resolution = shape[1]
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def _flat_sigma(self, sigma, batch, device):
        """sigma given as a number, a 0-dim tensor, [B] or [B,1,1,1] -> float64 [B, 1]."""
        s = torch.as_tensor(sigma, dtype=torch.float64, device=device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        if s.numel() != batch:
            raise ValueError(f'sigma has {s.numel()} entries for a batch of {batch}')
        return s.reshape(batch, 1)

    def __call__(self, x, sigma, class_labels=None, **model_kwargs):
        batch = x.shape[0]
        x64 = x.to(torch.float64).reshape(batch, self.dim)
        s = self._flat_sigma(sigma, batch, x.device)
        return self.denoise_flat(x64, s).reshape(x.shape).to(x.dtype)

    def denoise_flat(self, x, sigma):
        """D(x; sigma) for float64 x of shape [B, dim] and sigma of shape [B, 1]."""
        raise NotImplementedError

    def exact_solution(self, x, sigma_from, sigma_to, **kwargs):
        """The PF-ODE solution at sigma_to that passes through x at sigma_from (float64)."""
        return solve_pf_ode(self, x, sigma_from, sigma_to, **kwargs)


class Gaussian(AnalyticDenoiser):
    """y ~ N(mean, diag(var)); `mean` of shape (C,H,W), `var` a number or broadcastable to (C,H,W)."""

    def __init__(self, mean, var, sigma_min=0.002, sigma_max=80.0):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        super().__init__(mean.shape, sigma_min, sigma_max)
        self.mean = mean.reshape(1, self.dim)
        self.var = torch.as_tensor(var, dtype=torch.float64).expand(mean.shape).reshape(1, self.dim).clone()

    def denoise_flat(self, x, sigma):
        mean, var = self.mean.to(x.device), self.var.to(x.device)
        # Posterior mean of a Gaussian prior: E[y|x] = m + v / (v + sigma^2) (x - m).
        return mean + var / (var + sigma ** 2) * (x - mean)

    def exact_solution(self, x, sigma_from, sigma_to, **kwargs):
        # dx/dsigma = sigma (x - m) / (v + sigma^2) (Karras et al. 2022, eq. 1 and 3) => x - m ~ sqrt(v + sigma^2).
        batch = x.shape[0]
        x64 = x.detach().to(torch.float64).reshape(batch, self.dim)
        s0 = self._flat_sigma(sigma_from, batch, x.device)
        s1 = self._flat_sigma(sigma_to, batch, x.device)
        mean, var = self.mean.to(x.device), self.var.to(x.device)
        out = mean + (x64 - mean) * torch.sqrt((var + s1 ** 2) / (var + s0 ** 2))
        return out.reshape(x.shape)

    def sample(self, n, generator=None):
        z = torch.randn([n, self.dim], dtype=torch.float64, generator=generator)
        return (self.mean + self.var.sqrt() * z).reshape(n, *self.shape)


class GaussianMixture(AnalyticDenoiser):
    """y ~ sum_k w_k N(mu_k, s2_k I). `mu`: [K, C, H, W] (or [K, D] with `shape`), `s2`: [K], `w`: [K]."""

    def __init__(self, mu, s2, w=None, shape=None, sigma_min=0.002, sigma_max=80.0):
        mu = torch.as_tensor(mu, dtype=torch.float64)
        shape = tuple(shape) if shape is not None else tuple(mu.shape[1:])
        super().__init__(shape, sigma_min, sigma_max)
        self.mu = mu.reshape(mu.shape[0], self.dim)
        k = self.mu.shape[0]
        self.s2 = torch.as_tensor(s2, dtype=torch.float64).expand(k).clone()
        w = torch.full([k], 1.0 / k, dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
        self.w = w / w.sum()

    def responsibilities(self, x, sigma):
        """Posterior component probabilities p(k | x) for float64 x [B, D], sigma [B, 1]."""
        mu, s2, w = self.mu.to(x.device), self.s2.to(x.device), self.w.to(x.device)
        var = s2[None, :] + sigma ** 2  # [B, K]: x | k ~ N(mu_k, (s2_k + sigma^2) I)
        # Squared distances from differences (exact; torch.cdist has no forward-mode derivative for torch.func.jvp).
        dist2 = (x[:, None, :] - mu[None, :, :]).square().sum(2)  # [B, K]
        logp = torch.log(w)[None, :] - 0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * dist2 / var
        return torch.softmax(logp, dim=1), var

    def denoise_flat(self, x, sigma):
        post, var = self.responsibilities(x, sigma)
        gain = self.s2.to(x.device)[None, :] / var  # [B, K]: shrinkage s2_k / (s2_k + sigma^2)
        # E[y|x] = sum_k p(k|x) (mu_k + s2_k / (s2_k + sigma^2) (x - mu_k)).
        return (post * (1 - gain)) @ self.mu.to(x.device) + (post * gain).sum(1, keepdim=True) * x

    def sample(self, n, generator=None):
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn([n, self.dim], dtype=torch.float64, generator=generator)
        return (self.mu[k] + self.s2[k, None].sqrt() * z).reshape(n, *self.shape)


class IdealDenoiser(GaussianMixture):
    """The ideal denoiser of a finite set of images (Karras et al. 2022): uniform weights, s2 = 0."""

    def __init__(self, images, sigma_min=0.002, sigma_max=80.0):
        images = torch.as_tensor(images, dtype=torch.float64)
        super().__init__(images, torch.zeros([images.shape[0]], dtype=torch.float64), None, images.shape[1:],
                         sigma_min, sigma_max)

# ----------------------------------------------------------------------------


class CountingNet:
    """Wraps a denoiser and counts its calls (NFE); every other attribute is the wrapped net's."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def solve_pf_ode(net, x, sigma_from, sigma_to, rtol=1e-11, atol=1e-12, class_labels=None, method='DOP853',
                 sigma_floor=1e-7):
    """Integrate the PF-ODE from sigma_from to sigma_to with scipy in float64; returns float64 [like x].

    Uses the variable s = ln(sigma): dx/ds = x - D(x; sigma) (Karras et al. 2022, eq. 1 and 3, times sigma),
    which keeps the right-hand side smooth over the whole range 80 -> 0.002. sigma_to = 0 is replaced by `sigma_floor`
    (the solution of a mixture with s2 > 0 moves by O(sigma^2) below it).
    """
    from scipy.integrate import solve_ivp

    shape = x.shape
    device = x.device
    y0 = x.detach().to(torch.float64).reshape(-1).cpu().numpy()
    s0 = math.log(float(sigma_from))
    s1 = math.log(max(float(sigma_to), sigma_floor))
    if s0 == s1:
        return x.detach().to(torch.float64).clone()

    def rhs(s, y):
        xt = torch.from_numpy(y).to(device).reshape(shape)
        sigma = torch.tensor(math.exp(s), dtype=torch.float64, device=device)
        d = xt - net(xt, sigma, class_labels).to(torch.float64)
        return d.reshape(-1).cpu().numpy()

    sol = solve_ivp(rhs, (s0, s1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f'reference PF-ODE integration failed: {sol.message}')
    return torch.from_numpy(sol.y[:, -1].copy()).to(device).reshape(shape)


# ----------------------------------------------------------------------------
# The convergence study shared by tests/test_samplers_convergence.py and benchmarks/samplers.py.


def order_study_problem(seed=0, batch=4):
    """A Gaussian in 2x4x4 with means in [-0.3, 0.3] and std <= 0.15 (so the data, and every data prediction of
    a converging solver, stay well inside [-1, 1]: dynamic thresholding is inactive), and float64 latents."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.6 * (torch.rand(2, 4, 4, generator=g, dtype=torch.float64) - 0.5)
    var = 0.005 + 0.015 * torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(batch, 2, 4, 4, generator=g, dtype=torch.float64)
    return Gaussian(mean, var), z


def empirical_order(net, latents, solver, steps, sigma_min=0.002, sigma_max=80.0, schedule_type='polynomial',
                    schedule_rho=7, **options):
    """Slope of log(error) against log(1 / steps) (least squares), with the errors.

    For each step count n the solver runs in float64 on get_schedule(n + 1, ...) and the error is the largest
    per-sample relative L2 distance to `net.exact_solution` at the last noise level.
    """
    errs = []
    for n in steps:
        t = get_schedule(n + 1, sigma_min, sigma_max, schedule_type, schedule_rho, dtype=torch.float64)
        x = sample(net, latents.to(torch.float64), solver=solver, t_steps=t, **options)
        exact = net.exact_solution(latents.to(torch.float64) * t[0], t[0], t[-1])
        b = len(latents)
        errs.append(float(((x - exact).reshape(b, -1).norm(dim=1) / exact.reshape(b, -1).norm(dim=1)).max()))
    errs = np.array(errs)
    slope = np.polyfit(np.log(1 / np.asarray(steps, dtype=np.float64)), np.log(errs), 1)[0]
    return float(slope), errs


# (solver, options, step counts, lowest accepted order, highest accepted order or None). Step counts are where
# the asymptotic regime holds on the polynomial rho=7 grid for that method: warm-up and lower-order final steps
# of the multistep methods, and the uneven grid, need many steps before they stop dominating.
ORDER_STUDY = [
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
    ('dpmpp_singlestep', dict(max_order=3, denoise=False), [32, 64, 128, 256], 1.7, None),
]


__all__ = ['AnalyticDenoiser', 'Gaussian', 'GaussianMixture', 'IdealDenoiser', 'GaussianCLD', 'GaussianMixtureCLD',
           'solve_pf_ode', 'order_study_problem', 'empirical_order', 'ORDER_STUDY']
