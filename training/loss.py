"""Training losses of EDM's three formulations: VP, VE and EDM (Karras et al. 2022, Table 1 and eq. 2), with the
options of FDM (Wu et al. 2023: loss-weight warm-up) and PFGM++ (Xu et al. 2023: perturbation kernel in N + D
dimensions, stable target field).

Each loss is called as `loss_fn(net, images, labels=None, augment_pipe=None, rng=None)` and returns the unreduced
per-element loss lambda(sigma) * (D(y + n; sigma) - y)^2 of shape [N, C, H, W]; the training loop reduces it.
Random draws happen in this order: sigma per sample, then the augmentation, then the noise n. `rng` (optional)
supplies `rand`, `randn` and `randint` with torch's signatures, e.g. per-sample generators; None uses torch's
global generator.

The losses share the hooks of `Loss` (drawing the perturbation n, the optimizer step count, a state that survives
--resume); see docs/design.md, "Loss hooks". The FDM and PFGM++ equations are in docs/fdm_pfgmpp.md.

This file is embedded in training snapshots (torch_utils.persistence), so it imports nothing but numpy, torch and
torch_utils.persistence.
"""

import numpy as np
import torch
from torch_utils import persistence

# ----------------------------------------------------------------------------
# FDM's loss-weight warm-up and PFGM++'s perturbation kernel.


def fdm_warmup_cap(step, warmup_ite, start=5.0, end=500.0):
    """The cap on lambda(sigma) at optimizer step `step` of FDM's warm-up, or None when there is none.

    The cap grows geometrically, c_k = 5 * 100^(k / W) with W = `warmup_ite`, and is removed (not held at 500) once
    it reaches 500, after about W steps (Wu et al. 2023, FDM code). W None or 0: no cap.
    """
    if not warmup_ite or step > 2 * warmup_ite:    # (the cap is past 500 long before 2 W steps)
        return None
    cap = start * float(np.exp(np.log(end / start) / warmup_ite)) ** int(step)
    return cap if cap < end else None


def _generators(rng, n):
    """One generator per row (per-sample generators), or n times None (torch's global generator)."""
    gens = getattr(rng, 'generators', None)
    if gens is not None and len(gens) != n:
        raise ValueError(f'expected {n} per-sample generators, got {len(gens)}')
    return gens if gens is not None else [None] * n


def gamma_draws(alpha, rng, n, device):
    """n independent Gamma(alpha, 1) draws (float64 [n]), row i from row i's generator of `rng`.

    Marsaglia & Tsang 2000 (squeeze-free form): exact, a few uniform and normal draws per row; for alpha < 1 the
    draw for alpha + 1 is multiplied by U^(1/alpha). Each row rejects and redraws from its own generator only, so
    a row's value and the number of numbers it consumes depend on its own generator alone.
    """
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f'the Gamma shape must be positive (got {alpha})')
    boost, a = (alpha < 1), (alpha + 1 if alpha < 1 else alpha)
    d = a - 1 / 3
    c = 1 / np.sqrt(9 * d)
    out = []
    for gen in _generators(rng, n):
        kw = dict(dtype=torch.float64, device=device if gen is None else gen.device, generator=gen)
        while True:
            z = float(torch.randn([], **kw))
            v = (1 + c * z) ** 3
            if v <= 0:
                continue
            u = float(torch.rand([], **kw))
            if np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v):
                break
        value = float(d * v)
        if boost:
            value *= float(torch.rand([], **kw)) ** (1 / alpha)
        out.append(value)
    return torch.tensor(out, dtype=torch.float64, device=device)


def student_t_scale(D, rng, n, device):
    """sqrt(D / chi2_D) per row (float64 [n]), chi2_D = 2 Gamma(D / 2) drawn from `rng` (see `gamma_draws`).

    With g ~ N(0, I_N), sigma g sqrt(D / chi2_D) is PFGM++'s perturbation kernel at r = sigma sqrt(D): its radius R
    has R^2 / r^2 = |g|^2 / chi2_D ~ Beta'(N/2, D/2) (the ratio of independent chi-squares; equivalently
    R = r sqrt(b / (1 - b)) with b ~ Beta(N/2, D/2)) and its direction g / |g| is uniform and independent of R
    (Xu et al. 2023, the kernel p_r(x|y) ~ 1 / (|x - y|^2 + r^2)^((N+D)/2)).
    """
    return (D / (2 * gamma_draws(D / 2, rng, n, device))).sqrt()

# ----------------------------------------------------------------------------


class Loss:
    """Base of the losses: the perturbation and the training loop's hooks. Not persistent itself, so pickled class
    names stay EDM's (a subclass is declared with @persistence.persistent_class).

    - `noise(y, sigma, rng)` draws the perturbation n added to the clean images y; override it for another kernel.
      The standard losses draw EDM's Gaussian, or PFGM++'s kernel when `pfgmpp` is set.
    - `set_step(step)` is called by the training loop once per optimizer step, before its accumulation rounds, with
      the number of optimizer steps since the start of training (continued by --resume); kept in `self.step`.
      FDM's warm-up cap (`warmup_ite`) is a function of it.
    - `state_dict()` / `load_state_dict(state)`: the loss's own mutable state (tensors and plain values), saved in
      the training state and restored by --resume. The losses below have none.
    - `reference_size`: how many images per call the loss wants as its reference set (PFGM++'s stable target
      field); the training loop then passes the extra ones as `reference=` (0: none).
    """
    step = 0
    warmup_ite = None       # FDM: length of the loss-weight warm-up in optimizer steps (None or 0: none).
    pfgmpp = False          # PFGM++: perturbation kernel in N + D dimensions instead of the Gaussian.
    D = None
    reference_size = 0

    def set_step(self, step):
        self.step = int(step)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f'{type(self).__name__} has no state to load, got {sorted(state)}')

    def _options(self, warmup_ite=None, pfgmpp=False, D=128):
        if pfgmpp and not (isinstance(D, int) and D >= 1):
            raise ValueError(f'PFGM++ needs an integer augmented dimension D >= 1 (got {D!r})')
        self.warmup_ite = warmup_ite
        self.pfgmpp = bool(pfgmpp)
        self.D = int(D) if pfgmpp else None

    def capped_weight(self, weight):
        """lambda(sigma), capped by FDM's warm-up at the current step (Wu et al. 2023)."""
        cap = fdm_warmup_cap(self.step, self.warmup_ite)
        return weight if cap is None else weight.clamp(max=cap)

    def noise(self, y, sigma, rng):
        """n ~ N(0, sigma^2 I) (EDM eq. 2), or PFGM++'s kernel at r = sigma sqrt(D) (`student_t_scale`), drawn from
        `rng` (torch's global generator or per-sample generators): the Gaussian g first, then chi2_D."""
        g = rng.randn(y.shape, device=y.device)
        if not self.pfgmpp:
            return g * sigma
        scale = student_t_scale(self.D, rng, y.shape[0], y.device).reshape(-1, *([1] * (y.ndim - 1)))
        return (g.to(torch.float64) * sigma * scale).to(y.dtype)

    def denoising_error(self, net, images, labels, augment_pipe, sigma, rng, reference=None):
        """(D(y + n; sigma) - target)^2 for y = augment(images), n = self.noise(y, sigma, rng) (EDM eq. 2); the target
        is y, or the stable target field over the reference set (`stf_target`) when the loss has one."""
        if augment_pipe is None:
            y, augment_labels = images, None
        else:
            y, augment_labels = augment_pipe(images) if rng is None else augment_pipe(images, rng=rng)
        n = self.noise(y, sigma, torch if rng is None else rng)
        denoised = net(y + n, sigma, labels, augment_labels=augment_labels)
        target = y
        if self.reference_size:
            extra = reference if reference is None or augment_pipe is None else augment_pipe(reference)[0]
            target = self.stf_target(y + n, sigma, y if extra is None else torch.cat([y, extra]))
        return (denoised - target) ** 2

    def stf_target(self, x, sigma, references):
        """Stable target field (Xu, Tong & Jaakkola 2023, STF; with PFGM++'s kernel as in Xu et al. 2023): the
        posterior mean sum_i w_i y_i over the reference set, w_i ~ p(x | y_i) with the loss's kernel, in float64:
        w_i ~ exp(-|x - y_i|^2 / (2 sigma^2)) (Gaussian), or (|x - y_i|^2 + r^2)^(-(N + D)/2), r = sigma sqrt(D)."""
        b, m = x.shape[0], references.shape[0]
        xf, yf = x.reshape(b, -1).to(torch.float64), references.reshape(m, -1).to(torch.float64)
        d2 = torch.cdist(xf[None], yf[None], compute_mode='donot_use_mm_for_euclid_dist')[0] ** 2  # [b, m]
        s2 = sigma.reshape(b, 1).to(torch.float64) ** 2
        if self.pfgmpp:
            logw = -0.5 * (xf.shape[1] + self.D) * torch.log(d2 + s2 * self.D)
        else:
            logw = -0.5 * d2 / s2
        return (torch.softmax(logw, dim=1) @ yf).reshape(x.shape).to(x.dtype)

# ----------------------------------------------------------------------------


@persistence.persistent_class
class VPLoss(Loss):
    """Variance preserving loss (Song et al. 2021, DDPM++): t ~ U(eps_t, 1), sigma = sigma_VP(t), lambda = 1/sigma^2."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, warmup_ite=None):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t
        self._options(warmup_ite)

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        u = (torch.rand if rng is None else rng.rand)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma(1 + u * (self.epsilon_t - 1))    # EDM Table 1 (VP): t ~ U(eps_t, 1).
        weight = self.capped_weight(1 / sigma ** 2)         # EDM Table 1 (VP): lambda(sigma) = 1/sigma^2.
        return weight * self.denoising_error(net, images, labels, augment_pipe, sigma, rng)

    def sigma(self, t):
        # EDM eq. 27: sigma_VP(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()


@persistence.persistent_class
class VELoss(Loss):
    """Variance exploding loss (Song et al. 2021, NCSN++): sigma log-uniform in [sigma_min, sigma_max], 1/sigma^2.

    warmup_ite: FDM's loss-weight warm-up. pfgmpp, D: PFGM++'s kernel in D augmented dimensions.
    """

    def __init__(self, sigma_min=0.02, sigma_max=100, warmup_ite=None, pfgmpp=False, D=128):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._options(warmup_ite, pfgmpp, D)

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        u = (torch.rand if rng is None else rng.rand)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)   # EDM Table 1 (VE): log-uniform sigma.
        weight = self.capped_weight(1 / sigma ** 2)                          # EDM Table 1 (VE): lambda = 1/sigma^2.
        return weight * self.denoising_error(net, images, labels, augment_pipe, sigma, rng)


@persistence.persistent_class
class EDMLoss(Loss):
    """EDM's loss: ln(sigma) ~ N(P_mean, P_std^2), lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    warmup_ite: FDM's loss-weight warm-up. pfgmpp, D: PFGM++'s kernel in D augmented dimensions. stf, rbatch:
    PFGM++'s stable target field over `rbatch` reference images per call (the minibatch and `reference=`).
    """

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, warmup_ite=None, pfgmpp=False, D=128, stf=False,
                 rbatch=4096):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self._options(warmup_ite, pfgmpp, D)
        self.reference_size = int(rbatch) if stf else 0

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None, reference=None):
        rnd_normal = (torch.randn if rng is None else rng.randn)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()       # EDM Table 1: ln sigma ~ N(P_mean, P_std^2).
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2   # EDM Table 1: lambda(sigma).
        error = self.denoising_error(net, images, labels, augment_pipe, sigma, rng, reference)
        return self.capped_weight(weight) * error
