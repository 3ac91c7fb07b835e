"""Critically-damped Langevin diffusion (CLD; Dockhorn, Vahdat & Kreis, ICLR 2022) in the noise parameterisation of
gDDIM (Zhang, Tao & Chen, ICLR 2023): the process, the preconditioner and the training loss.

Layout: the state u = (x, v) (data x, velocity v) of an image batch [B, C, H, W] is one tensor [B, 2C, H, W], the C
x-channels first, then the C v-channels; this is also what the network sees and outputs. Every 2x2 matrix acts on
each pixel's (x, v) pair; matrices are float64 tensors [..., 2, 2] whose leading shape is the shape of `t`.

Forward SDE (Dockhorn et al. 2022), with kappa = M^-1/2 and critical damping Gamma = 2 sqrt(M) = 2 / kappa:
    du = beta(t) [[0, kappa^2], [-1, -2 kappa]] u dt + [[0, 0], [0, sqrt(2 Gamma beta(t))]] dW = F_t u dt + G_t dW,
beta(t) = beta_0 + beta_1 t, B(s, t) = int_s^t beta. Data: u_0 = (x_0, v_0) with v_0 ~ N(0, gamma M) integrated
analytically (hybrid score matching), plus the numerical `eps` of gDDIM in the initial covariance:
Sigma_0 = diag(eps, gamma M + eps). Defaults are the CIFAR-10 values of the gDDIM code (qsh-zh/gDDIM).

The samplers (`samplers.cld`, `samplers.gddim`; that package never imports `training`) receive the process from the
net (`net.cld`) and use its static layout helpers (`CLD.stack`, `split`, `mat`, `apply`).

This file is embedded in training snapshots (torch_utils.persistence), so its imports are numpy, torch and
torch_utils.persistence only; the U-Net classes are looked up in training.networks when a network is constructed
(unpickling restores instances without calling their constructor).
"""

import numpy as np
import torch
from torch_utils import persistence

_INV_FACTORIAL = np.cumprod([1.0] + [1.0 / n for n in range(1, 16)])  # 1/n!, n = 0..15


def _phi3(z):
    """exp(z) - 1 - z - z^2/2 without cancellation for small z (Taylor series below |z| = 1/2)."""
    series = torch.zeros_like(z)
    for n in range(15, 2, -1):  # Horner: sum_{n=3}^{15} z^(n-3) / n!
        series = series * z + float(_INV_FACTORIAL[n])
    return torch.where(z.abs() < 0.5, series * z ** 3, torch.expm1(z) - z - z * z / 2)


_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)  # Gauss-Legendre rule on [-1, 1]
_THETA_KNOTS = np.concatenate([[0.0], np.logspace(-12, np.log10(16.0), 450)])  # panels of the theta table
_theta_tables = {}  # (process parameters, device) -> cumulative theta at the knots

# ----------------------------------------------------------------------------
# The process.


class CLD:
    """CLD forward process with closed-form transition Psi(t, s), covariance Sigma_t and the gDDIM factor R_t.

    All methods take times as numbers or tensors (any shape; float64 inside) and return float64 tensors.
    Times lie in [0, 16]; sampling uses [t_min, 1].
    """

    # Per-pixel 2x2 algebra on stacked states. Static, so that code holding only the process (the samplers, which
    # receive it from the net) uses the same layout.

    @staticmethod
    def stack(x, v):
        """u = (x, v) stacked on the channel axis."""
        return torch.cat([x, v], dim=1)

    @staticmethod
    def split(u):
        """(x, v) of a stacked state."""
        return u.chunk(2, dim=1)

    @staticmethod
    def mat(a, b, c, d):
        """The 2x2 matrices [[a, b], [c, d]] (entries broadcast together) as a float64 tensor [..., 2, 2]."""
        a, b, c, d = torch.broadcast_tensors(*[torch.as_tensor(e, dtype=torch.float64) for e in (a, b, c, d)])
        return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)

    @staticmethod
    def inv(m):
        """Inverse of 2x2 matrices [..., 2, 2]."""
        det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
        return CLD.mat(m[..., 1, 1], -m[..., 0, 1], -m[..., 1, 0], m[..., 0, 0]) / det[..., None, None]

    @staticmethod
    def apply(m, u):
        """m u per pixel. m: [2, 2], one matrix per sample [B, 2, 2], or a field [..., 2, 2] that broadcasts against
        the x half of u ([B, C, H, W]). The product is computed in u's dtype."""
        x, v = CLD.split(u)
        if m.ndim == 3:
            m = m.reshape(m.shape[0], *[1] * (x.ndim - 1), 2, 2)
        m = m.to(device=u.device, dtype=u.dtype)
        return CLD.stack(m[..., 0, 0] * x + m[..., 0, 1] * v, m[..., 1, 0] * x + m[..., 1, 1] * v)

    def __init__(self, beta_0=4.0, beta_1=0.0, m_inv=4.0, gamma=0.04, eps=1e-6):
        if not (beta_0 > 0 and beta_1 >= 0 and m_inv > 0 and gamma >= 0 and eps > 0):
            raise ValueError(f'CLD needs beta_0 > 0, beta_1 >= 0, m_inv > 0, gamma >= 0, eps > 0 (got beta_0={beta_0},'
                             f' beta_1={beta_1}, m_inv={m_inv}, gamma={gamma}, eps={eps})')
        self.beta_0, self.beta_1, self.m_inv, self.gamma, self.eps = (float(p) for p in
                                                                      (beta_0, beta_1, m_inv, gamma, eps))
        self.M = 1 / self.m_inv                   # mass
        self.kappa = float(np.sqrt(self.m_inv))   # M^-1/2; the drift's double eigenvalue is -kappa beta
        self.Gamma = 2 / self.kappa               # critical damping Gamma^2 = 4 M

    def params(self):
        return dict(beta_0=self.beta_0, beta_1=self.beta_1, m_inv=self.m_inv, gamma=self.gamma, eps=self.eps)

    def __repr__(self):
        return 'CLD(' + ', '.join(f'{k}={v:g}' for k, v in self.params().items()) + ')'

    @staticmethod
    def _t(t, device=None):
        return torch.as_tensor(t, dtype=torch.float64, device=device)

    def beta(self, t):
        return self.beta_0 + self.beta_1 * self._t(t)

    def beta_int(self, t, s=0.0):
        """B(s, t) = int_s^t beta(r) dr (negative for t < s)."""
        t, s = self._t(t), self._t(s)
        return self.beta_0 * (t - s) + 0.5 * self.beta_1 * (t * t - s * s)

    def drift(self, t):
        """F_t."""
        k, b = self.kappa, self.beta(t)
        return self.mat(0 * b, k * k * b, -b, -2 * k * b)

    def diffusion_sq(self, t):
        """G_t G_t^T = diag(0, 2 Gamma beta(t))."""
        b = self.beta(t)
        return self.mat(0 * b, 0 * b, 0 * b, 2 * self.Gamma * b)

    def psi(self, t, s=0.0):
        """Transition matrix Psi(t, s) = exp(B(s, t) [[0, kappa^2], [-1, -2 kappa]]) (double eigenvalue -kappa)."""
        k, B = self.kappa, self.beta_int(t, s)
        return self.mat(1 + k * B, k * k * B, -B, 1 - k * B) * torch.exp(-k * B)[..., None, None]

    def var0(self):
        """Diagonal of Sigma_0: (eps, gamma M + eps)."""
        return self.eps, self.gamma * self.M + self.eps

    def cov(self, t, var0=None):
        """Sigma_t = Psi(t, 0) diag(a, b) Psi(t, 0)^T + N(B(0, t)), (a, b) = var0 (default `self.var0()`);
        N solves dN/dt = F N + N F^T + G G^T from N = 0 (closed form, written without cancellation)."""
        a, b = self.var0() if var0 is None else var0
        k, B = self.kappa, self.beta_int(t)
        E = torch.exp(-2 * k * B)
        n_xx = E * _phi3(2 * k * B)
        n_xv = E * 2 * k * B * B
        n_vv = E * (torch.expm1(2 * k * B) / (k * k) + 2 * B / k - 2 * B * B)
        p = self.psi(t)
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        a, b = a.to(p.device), b.to(p.device)
        s_xx = a * p[..., 0, 0] ** 2 + b * p[..., 0, 1] ** 2 + n_xx
        s_xv = a * p[..., 0, 0] * p[..., 1, 0] + b * p[..., 0, 1] * p[..., 1, 1] + n_xv
        s_vv = a * p[..., 1, 0] ** 2 + b * p[..., 1, 1] ** 2 + n_vv
        return self.mat(s_xx, s_xv, s_xv, s_vv)

    def chol(self, t):
        """Lower Cholesky factor L_t of Sigma_t (the factor of CLD-SGM)."""
        s = self.cov(t)
        l_xx = s[..., 0, 0].sqrt()
        l_vx = s[..., 0, 1] / l_xx
        l_vv = (s[..., 1, 1] - l_vx ** 2).sqrt()
        return self.mat(l_xx, 0 * l_xx, l_vx, l_vv)

    def _theta_rate(self, t):
        # d theta / dt = -kappa^2 beta L_vv / L_xx = -kappa^2 beta sqrt(det Sigma) / Sigma_xx.
        s = self.cov(t)
        det = s[..., 0, 0] * s[..., 1, 1] - s[..., 0, 1] ** 2
        return -self.kappa ** 2 * self.beta(t) * det.sqrt() / s[..., 0, 0]

    def _theta_table(self, device):
        key = (tuple(self.params().values()), str(device))
        table = _theta_tables.get(key)
        if table is None:
            knots = torch.as_tensor(_THETA_KNOTS, dtype=torch.float64)
            a, b = knots[:-1, None], knots[1:, None]
            x, w = (torch.as_tensor(g, dtype=torch.float64) for g in (_GL_X, _GL_W))
            panels = (0.5 * (b - a) * w * self._theta_rate(a + 0.5 * (b - a) * (x + 1))).sum(1)
            table = (knots, torch.cat([torch.zeros(1, dtype=torch.float64), panels.cumsum(0)]))
            table = tuple(v.to(device) for v in table)
            _theta_tables[key] = table
        return table

    def theta(self, t):
        """Rotation angle of R_t against L_t: theta(t) = -kappa^2 int_0^t beta L_vv / L_xx, theta(0) = 0."""
        t = self._t(t)
        if t.numel() and (t.min() < 0 or t.max() > _THETA_KNOTS[-1]):
            raise ValueError(f'CLD times must lie in [0, {_THETA_KNOTS[-1]:g}]')
        knots, cum = self._theta_table(t.device)
        k = (torch.searchsorted(knots, t.reshape(-1), right=True) - 1).clamp(0, len(knots) - 2).reshape(t.shape)
        a = knots[k]
        x, w = (torch.as_tensor(g, dtype=torch.float64, device=t.device) for g in (_GL_X, _GL_W))
        rate = self._theta_rate(a[..., None] + 0.5 * (t - a)[..., None] * (x + 1))
        return cum[k] + 0.5 * (t - a) * (w * rate).sum(-1)

    def R(self, t):
        """gDDIM's factor R_t = L_t Rot(theta(t)): R_t R_t^T = Sigma_t and dR/dt = (F + G G^T Sigma^-1 / 2) R,
        R_0 = diag(sqrt(eps), sqrt(gamma M + eps)) (Zhang et al. 2023). Substituting R = L Rot(theta) leaves one
        scalar equation, d theta/dt = -(F_t)_xv L_vv / L_xx, because the x-row of G G^T vanishes
        (docs/cld_gddim.md)."""
        th = self.theta(t)
        rot = self.mat(th.cos(), -th.sin(), th.sin(), th.cos())
        return self.chol(t) @ rot

    def mean(self, x0, t):
        """E[u_t | x_0] = Psi(t, 0) (x_0, 0) for x0 [B, C, H, W] and t (number or [B])."""
        return self.apply(self.psi(t), self.stack(x0, torch.zeros_like(x0)))

    def perturb(self, x0, t, z):
        """u_t = Psi(t, 0) (x_0, 0) + R_t z, z [B, 2C, H, W] standard normal (gDDIM's forward sample)."""
        return self.mean(x0, t) + self.apply(self.R(t), z)

    def prior(self, latents, randn_like=None):
        """A sample of the equilibrium N(0, I) x N(0, M I): x = latents (standard normal, drawn by the caller), then
        v = sqrt(M) randn_like(latents)."""
        v = (torch.randn_like if randn_like is None else randn_like)(latents) * float(np.sqrt(self.M))
        return self.stack(latents, v.to(latents.dtype))

    def eps_to_score(self, eps, t):
        """Score of the noise prediction: s = -R_t^-T eps."""
        return -self.apply(self.inv(self.R(t)).transpose(-1, -2), eps)

    def score_to_eps(self, score, t):
        """eps = -R_t^T s."""
        return -self.apply(self.R(t).transpose(-1, -2), score)


_processes = {}


def _process(params):
    key = tuple(sorted(params.items()))
    if key not in _processes:
        _processes[key] = CLD(**params)
    return _processes[key]

# ----------------------------------------------------------------------------
# Preconditioner and loss.


def _autocast(device_type):
    try:
        return bool(torch.is_autocast_enabled(device_type))  # PyTorch >= 2.4
    except TypeError:  # Older PyTorch: one flag for CUDA, one for the CPU.
        return torch.is_autocast_enabled() if device_type == 'cuda' else \
            device_type == 'cpu' and torch.is_autocast_cpu_enabled()


def _unet(model_type):
    from training import networks  # at construction only: see the module docstring
    if model_type not in ('SongUNet', 'DhariwalUNet'):
        raise ValueError(f'model_type must be SongUNet or DhariwalUNet (got {model_type!r})')
    return getattr(networks, model_type)


@persistence.persistent_class
class CLDPrecond(torch.nn.Module):
    """Wraps a SongUNet/DhariwalUNet with 2 * img_channels inputs and outputs into the gDDIM noise model:
    `net(u, t, class_labels=None, force_fp32=False, **model_kwargs) -> eps(u, t)` for u = (x, v) [B, 2C, H, W] and
    t a number or one time per sample; the score is -R_t^-T eps. `img_channels` counts data channels (C).
    The U-Net F sees u unscaled and the time label 999 t (log(999 t) for Fourier embeddings), as in gDDIM, and
    predicts the noise in the frame of the Cholesky factor: eps = Rot(theta_t)^T F, since R_t = L_t Rot(theta_t).
    This is an exact reparameterisation (same loss, same optimum) that keeps the fast rotation of R_t (theta turns
    by about 11 radians over t in [1e-3, 1]) out of what F has to learn (docs/cld_gddim.md).
    The CLD parameters are constructor arguments; `net.cld` is the process.
    """

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_0=4.0, beta_1=0.0, m_inv=4.0,
                 gamma=0.04, eps=1e-6, model_type='SongUNet', **model_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.cld_params = CLD(beta_0, beta_1, m_inv, gamma, eps).params()
        self.log_time_label = model_kwargs.get('embedding_type') == 'fourier'
        self.model = _unet(model_type)(img_resolution=img_resolution, in_channels=2 * img_channels,
                                       out_channels=2 * img_channels, label_dim=label_dim, **model_kwargs)

    @property
    def cld(self):
        return _process(self.cld_params)

    def forward(self, u, t, class_labels=None, force_fp32=False, **model_kwargs):
        p = next(self.model.parameters(), None)
        io_dtype = torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32
        u = u.to(io_dtype)
        t = torch.as_tensor(t, device=u.device).to(io_dtype).reshape(-1).expand(u.shape[0])
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=u.device, dtype=io_dtype)
        else:
            class_labels = class_labels.to(io_dtype).reshape(-1, self.label_dim)
        autocast = _autocast(u.device.type)  # Autocast (torch_utils.precision) replaces the fp16 rule.
        use_fp16 = self.use_fp16 and not force_fp32 and not autocast and u.device.type == 'cuda' and \
            io_dtype == torch.float32
        dtype = torch.float16 if use_fp16 else io_dtype
        c_noise = (999 * t).log() if self.log_time_label else 999 * t
        f = self.model(u.to(dtype), c_noise, class_labels=class_labels, **model_kwargs)
        assert f.dtype == dtype or autocast
        theta = self.cld.theta(t.to(torch.float64))
        rot_t = CLD.mat(theta.cos(), theta.sin(), -theta.sin(), theta.cos())  # Rot(theta)^T
        return CLD.apply(rot_t, f.to(io_dtype))


@persistence.persistent_class
class CLDLoss:
    """gDDIM's CLD objective: t ~ U(epsilon_t, 1), z ~ N(0, I) on both channels, u_t = Psi(t, 0) (x_0, 0) + R_t z,
    loss (eps(u_t, t) - z)^2 unweighted. Called as `loss(net, images, labels=None, augment_pipe=None, rng=None)`;
    returns the per-element loss [N, 2C, H, W] (the training loop sums it; gDDIM averages, a constant factor).
    Random draws: t per sample, then the augmentation (of x_0), then z.
    It has the training loop's hooks of `training.loss.Loss` (`set_step`, `state_dict`, `load_state_dict`; no state)
    written out, because this file imports no other project module (see the module docstring).
    """
    step = 0

    def __init__(self, beta_0=4.0, beta_1=0.0, m_inv=4.0, gamma=0.04, eps=1e-6, epsilon_t=1e-5):
        self.cld_params = CLD(beta_0, beta_1, m_inv, gamma, eps).params()
        self.epsilon_t = epsilon_t

    def set_step(self, step):
        self.step = int(step)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f'CLDLoss has no state to load, got {sorted(state)}')

    @property
    def cld(self):
        return _process(self.cld_params)

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        r = (torch.rand if rng is None else rng.rand)([images.shape[0]], device=images.device)
        t = self.epsilon_t + (1 - self.epsilon_t) * r.to(torch.float64)
        if augment_pipe is None:
            x0, augment_labels = images, None
        else:
            x0, augment_labels = augment_pipe(images) if rng is None else augment_pipe(images, rng=rng)
        shape = [x0.shape[0], 2 * x0.shape[1], *x0.shape[2:]]
        z = (torch.randn if rng is None else rng.randn)(shape, device=x0.device).to(x0.dtype)
        u = self.cld.perturb(x0, t.to(x0.device), z)
        eps = net(u, t.to(x0.dtype), labels, augment_labels=augment_labels)
        return (eps - z) ** 2
