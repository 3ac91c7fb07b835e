"""Critically-damped Langevin diffusion (CLD) for sampling: the net contract and exact noise models of known data.

CLD's state u = (x, v) and its matrix-valued coefficients do not fit the scalar-sigma denoiser contract, so CLD has
its own contract: a CLD net is called as `net(u, t, class_labels=None, **model_kwargs) -> eps` with u = (x, v)
stacked on the channel axis ([B, 2C, H, W], x first), t a number or one time per sample, and eps the gDDIM noise
prediction of both channels (score = -R_t^-T eps); it has `cld` (the process: `psi`, `R`, `cov`, `drift`,
`diffusion_sq`, `prior` and the layout helpers `stack`, `split`, `mat`, `apply`), `img_channels` (C),
`img_resolution` and `label_dim`. Trained nets are `training.cld.CLDPrecond`, whose `cld` is a `training.cld.CLD`;
this package never imports `training`, so it takes the process from the net or as an argument. Samplers:
`samplers.gddim` (registered as solvers 'gddim' and 'cld_em' of kind 'cld').

Exact noise models (the test oracles, also exported by `samplers.analytic`; Gaussian data gives a Gaussian u_t per
pixel). Each is a CLD net for the process `cld` it is given:
- `GaussianMixtureCLD`: x_0 ~ sum_k w_k N(mu_k, diag(s2_k)), each pixel independent within a component.
- `GaussianCLD`: x_0 ~ N(mean, diag(var)) (one component).
For component k, u_t | k ~ N(m_k, S_k) per pixel with m_k = Psi(t, 0) (mu_k, 0) and S_k = `cld.cov` with initial
covariance diag(s2_k + eps, gamma M + eps); eps*(u, t) = E[z | u_t = u] = -R_t^T grad log p_t(u)
= R_t^T sum_k pi_k(u) S_k^-1 (u - m_k), with responsibilities pi_k from log-sum-exp.
"""

import math

import torch


# ----------------------------------------------------------------------------


class GaussianMixtureCLD:
    """Exact gDDIM noise model of x_0 ~ sum_k w_k N(mu_k, diag(s2_k)) under the CLD process `cld`, in float64.

    mu: [K, C, H, W]; s2: a number, [K] or broadcastable to [K, C, H, W]; w: [K] (default uniform).
    """

    label_dim = 0

    def __init__(self, mu, s2, w=None, *, cld):
        mu = torch.as_tensor(mu, dtype=torch.float64)
        if mu.ndim != 4:
            raise ValueError(f'mu must have shape [K, C, H, W] (got {list(mu.shape)})')
        s2 = torch.as_tensor(s2, dtype=torch.float64)
        s2 = s2.reshape(-1, 1, 1, 1) if s2.ndim == 1 else s2
        self.mu, self.s2 = mu, s2.expand(mu.shape).clone()
        if (self.s2 < 0).any():
            raise ValueError('variances must be non-negative')
        k = mu.shape[0]
        w = torch.full([k], 1.0 / k, dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
        self.w = w / w.sum()
        self.cld = cld
        self.img_channels, self.img_resolution = mu.shape[1], mu.shape[2]

    def _times(self, t, batch, device):
        t = torch.as_tensor(t, dtype=torch.float64, device=device).reshape(-1)
        return t.expand(batch) if t.numel() == 1 else t

    def marginal(self, t):
        """Per-component moments of u_t: means (m_x, m_v), each [B, K, C, H, W], and covariances
        [B, K, C, H, W, 2, 2], for times t [B]."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1, 1, 1)
        p = self.cld.psi(t)
        mu = self.mu.to(t.device)
        _, b = self.cld.var0()
        cov = self.cld.cov(t, var0=(self.s2.to(t.device) + self.cld.eps, b))
        return (p[..., 0, 0] * mu, p[..., 1, 0] * mu), cov

    def _components(self, u, t):
        """log p_t(u | k) + log w_k [B, K] and S_k^-1 (u - m_k) as (g_x, g_v) [B, K, C, H, W]."""
        x, v = self.cld.split(u.to(torch.float64))
        times, index = torch.unique(t, return_inverse=True)  # samplers pass one time for the whole batch
        (m_x, m_v), s = self.marginal(times)
        m_x, m_v, s = m_x[index], m_v[index], s[index]
        dx, dv = x[:, None] - m_x, v[:, None] - m_v
        s_xx, s_xv, s_vv = s[..., 0, 0], s[..., 0, 1], s[..., 1, 1]
        det = s_xx * s_vv - s_xv ** 2
        g_x, g_v = (s_vv * dx - s_xv * dv) / det, (s_xx * dv - s_xv * dx) / det
        quad = dx * g_x + dv * g_v
        logp = -0.5 * (quad + det.log() + 2 * math.log(2 * math.pi)).flatten(2).sum(2)
        return logp + self.w.to(u.device).log(), g_x, g_v

    def log_prob(self, u, t):
        """log p_t(u) [B] (float64)."""
        logp, _, _ = self._components(u, self._times(t, u.shape[0], u.device))
        return torch.logsumexp(logp, dim=1)

    def __call__(self, u, t, class_labels=None, **model_kwargs):
        t = self._times(t, u.shape[0], u.device)
        logp, g_x, g_v = self._components(u, t)
        post = (logp - torch.logsumexp(logp, dim=1, keepdim=True)).exp().reshape(*logp.shape, 1, 1, 1)
        g = self.cld.stack((post * g_x).sum(1), (post * g_v).sum(1))   # -grad log p_t(u)
        times, index = torch.unique(t, return_inverse=True)
        r_t = self.cld.R(times).transpose(-1, -2)[index]
        return self.cld.apply(r_t, g).to(u.dtype)                       # eps* = R_t^T (-score)

    def sample(self, n, generator=None):
        """n samples of x_0 (float64 [n, C, H, W])."""
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn([n, *self.mu.shape[1:]], dtype=torch.float64, generator=generator)
        return self.mu[k] + self.s2[k].sqrt() * z


class GaussianCLD(GaussianMixtureCLD):
    """Exact gDDIM noise model of x_0 ~ N(mean, diag(var)); mean [C, H, W], var a number or broadcastable."""

    def __init__(self, mean, var, *, cld):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        var = torch.as_tensor(var, dtype=torch.float64).expand(mean.shape)
        super().__init__(mean[None], var[None], cld=cld)


__all__ = ['GaussianMixtureCLD', 'GaussianCLD']
