"""Prior hook: how a sampler's start state x_T is drawn from the unit latents of a seed.

    prior(latents, sigma, generator) -> x at noise level sigma

`latents` are the seed's unit Gaussian draws (made first, then the class labels, by
`samplers.generation.draw_inputs`); `generator` is the same per-seed generator (`randn`, `rand`, `randint`,
`randn_like` with torch's signatures, or None for torch's global generator). A family whose prior is not
N(0, sigma^2 I) draws its extra numbers from `generator` after the latents and the labels, so the image and label
of a seed under EDM's prior do not change. A model family provides its prior as a `sample_prior` method of the
network (same signature), or a caller passes `prior=` to `samplers.sample`.
"""


def gaussian_prior(latents, sigma, generator=None):
    """EDM's prior N(0, sigma^2 I) (Karras et al. 2022, Algorithm 1 line 1): x = sigma * latents, no more draws."""
    return latents * sigma


def resolve_prior(net, prior=None):
    """The prior to use: `prior` if given, else the net's `sample_prior` method, else `gaussian_prior`."""
    if prior is not None:
        return prior
    return getattr(net, 'sample_prior', None) or gaussian_prior


__all__ = ['gaussian_prior', 'resolve_prior']
