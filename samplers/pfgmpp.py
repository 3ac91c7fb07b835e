"""PFGM++ (Xu et al. 2023) at sampling time: the prior at r_max = sigma_max sqrt(D), as a prior hook.

A PFGM++ network is an EDM denoiser D(x; sigma) trained on the kernel p_r(x | y) ~ (|x - y|^2 + r^2)^(-(N+D)/2)
with r = sigma sqrt(D). Its probability-flow ODE dx/dr = (x - D(x; r / sqrt(D))) / r is EDM's ODE in sigma =
r / sqrt(D), so every solver of the registry samples it unchanged; only the start state differs. The prior is the
kernel at r_max around y = 0, drawn in its Student-t form

    x_T = sigma_max * g / sqrt(chi2_D / D),

where g is the seed's usual EDM latent and chi2_D comes from the same per-seed generator after the latents and the
class labels (`training.loss.student_t_scale`). This is exactly the distribution of the reference's Beta construction
(radius r_max sqrt(b / (1 - b)), b ~ Beta(N/2, D/2), uniform direction), and as D -> infinity the same seed gives
EDM's start state sigma_max * g, hence EDM's image.

    prior = samplers.pfgmpp.student_t_prior(D)
    images = samplers.sample(net, latents, labels, solver='edm', generator=rnd, prior=prior)
"""

import torch

from training.loss import student_t_scale


def student_t_prior(D):
    """The prior hook `prior(latents, sigma, generator) -> x_T` of PFGM++ with D augmented dimensions."""
    D = int(D)
    if D < 1:
        raise ValueError(f'PFGM++ needs an augmented dimension D >= 1 (got {D})')

    def prior(latents, sigma, generator=None):
        scale = student_t_scale(D, torch if generator is None else generator, latents.shape[0], latents.device)
        return latents * sigma * scale.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))

    prior.D = D
    return prior


def network_aug_dim(net):
    """The D a network was trained with (PFGM++), or None for a Gaussian-kernel (EDM, D = infinity) network."""
    return getattr(net, 'D', None) if getattr(net, 'pfgmpp', False) else None


def resolve_aug_dim(net, pfgmpp=None, aug_dim=None):
    """The D to sample `net` with, or None for EDM's Gaussian prior. ValueError (one line) on a mismatch.

    pfgmpp: True / False as given, or None to follow the network (a PFGM++ snapshot records its D).
    aug_dim: D as given; it must equal the network's recorded D, and may be omitted when the network has one.
    """
    recorded = network_aug_dim(net)
    if pfgmpp is None:
        pfgmpp = recorded is not None
    if not pfgmpp:
        return None
    if recorded is not None and aug_dim is not None and int(aug_dim) != recorded:
        raise ValueError(f'--aug_dim={aug_dim} does not match the network, which was trained with D={recorded} '
                         '(omit --aug_dim to use it)')
    D = recorded if aug_dim is None else int(aug_dim)
    if D is None:
        raise ValueError('the network records no augmented dimension (it was not trained with --pfgmpp=1); '
                         'give --aug_dim=D or use --pfgmpp=0')
    return D


__all__ = ['student_t_prior', 'network_aug_dim', 'resolve_aug_dim']
