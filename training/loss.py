"""Training losses of EDM's three formulations: VP, VE and EDM (Karras et al. 2022, Table 1 and eq. 2).

Each loss is called as `loss_fn(net, images, labels=None, augment_pipe=None, rng=None)` and returns the unreduced
per-element loss lambda(sigma) * (D(y + n; sigma) - y)^2 of shape [N, C, H, W]; the training loop reduces it.
Random draws happen in this order: sigma per sample, then the augmentation, then the noise n. `rng` (optional)
supplies `rand`, `randn` and `randint` with torch's signatures, e.g. per-sample generators; None uses torch's
global generator.

The losses share the hooks of `Loss` (drawing the perturbation n, the optimizer step count, a state that survives
--resume); see docs/design.md, "Loss hooks".

This file is embedded in training snapshots (torch_utils.persistence), so it imports nothing but torch and
torch_utils.persistence.
"""

import torch
from torch_utils import persistence

# ----------------------------------------------------------------------------


class Loss:
    """Base of the losses: the perturbation and the training loop's hooks. Not persistent itself, so pickled class
    names stay EDM's (a subclass is declared with @persistence.persistent_class).

    - `noise(y, sigma, rng)` draws the perturbation n added to the clean images y; override it for another kernel.
    - `set_step(step)` is called by the training loop once per optimizer step, before its accumulation rounds, with
      the number of optimizer steps since the start of training (continued by --resume); kept in `self.step`.
    - `state_dict()` / `load_state_dict(state)`: the loss's own mutable state (tensors and plain values), saved in
      the training state and restored by --resume. The losses below have none.
    """
    step = 0

    def set_step(self, step):
        self.step = int(step)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f'{type(self).__name__} has no state to load, got {sorted(state)}')

    def noise(self, y, sigma, rng):
        """n ~ N(0, sigma^2 I) (EDM eq. 2), drawn from `rng` (torch's global generator or per-sample generators)."""
        return rng.randn(y.shape, device=y.device) * sigma

    def denoising_error(self, net, images, labels, augment_pipe, sigma, rng):
        """(D(y + n; sigma) - y)^2 for y = augment(images) and n = self.noise(y, sigma, rng) (EDM eq. 2)."""
        if augment_pipe is None:
            y, augment_labels = images, None
        else:
            y, augment_labels = augment_pipe(images) if rng is None else augment_pipe(images, rng=rng)
        n = self.noise(y, sigma, torch if rng is None else rng)
        denoised = net(y + n, sigma, labels, augment_labels=augment_labels)
        return (denoised - y) ** 2

# ----------------------------------------------------------------------------


@persistence.persistent_class
class VPLoss(Loss):
    """Variance preserving loss (Song et al. 2021, DDPM++): t ~ U(eps_t, 1), sigma = sigma_VP(t), lambda = 1/sigma^2."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        u = (torch.rand if rng is None else rng.rand)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma(1 + u * (self.epsilon_t - 1))    # EDM Table 1 (VP): t ~ U(eps_t, 1).
        weight = 1 / sigma ** 2                             # EDM Table 1 (VP): lambda(sigma) = 1/sigma^2.
        return weight * self.denoising_error(net, images, labels, augment_pipe, sigma, rng)

    def sigma(self, t):
        # EDM eq. 27: sigma_VP(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()


@persistence.persistent_class
class VELoss(Loss):
    """Variance exploding loss (Song et al. 2021, NCSN++): sigma log-uniform in [sigma_min, sigma_max], 1/sigma^2."""

    def __init__(self, sigma_min=0.02, sigma_max=100):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        u = (torch.rand if rng is None else rng.rand)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)   # EDM Table 1 (VE): log-uniform sigma.
        weight = 1 / sigma ** 2                                              # EDM Table 1 (VE): lambda = 1/sigma^2.
        return weight * self.denoising_error(net, images, labels, augment_pipe, sigma, rng)


@persistence.persistent_class
class EDMLoss(Loss):
    """EDM's loss: ln(sigma) ~ N(P_mean, P_std^2), lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        rnd_normal = (torch.randn if rng is None else rng.randn)([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()       # EDM Table 1: ln sigma ~ N(P_mean, P_std^2).
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2   # EDM Table 1: lambda(sigma).
        return weight * self.denoising_error(net, images, labels, augment_pipe, sigma, rng)
