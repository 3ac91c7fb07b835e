"""Prior hook: how a sampler's start state x_T is drawn from the unit latents of a seed.

    prior(latents, sigma, generator) -> x at noise level sigma

`latents` are the seed's unit Gaussian draws (made first, then the class labels, by
`samplers.generation.draw_inputs`); `generator` is the same per-seed generator (`randn`, `rand`, `randint`,
`randn_like` with torch's signatures, or None for torch's global generator). A family whose prior is not
N(0, sigma^2 I) draws its extra numbers from `generator` after the latents and the labels, so the image and label
of a seed under EDM's prior do not change. A model family provides its prior as a `sample_prior` method of the
network (same signature), or a caller passes `prior=` to `samplers.sample`; otherwise the solver kind's default
applies (`default_prior`).
"""


def gaussian_prior(latents, sigma, generator=None):
    """EDM's prior N(0, sigma^2 I) (Karras et al. 2022, Algorithm 1 line 1): x = sigma * latents, no more draws."""
    return latents * sigma


def cld_prior(net):
    """The prior of a CLD net (`samplers.cld`): the equilibrium state u = (x, v) of its process `net.cld`, with
    x = latents and the velocity v drawn from the per-seed generator after them (`CLD.prior`)."""
    def prior(latents, t, generator=None):
        return net.cld.prior(latents, None if generator is None else generator.randn_like)
    return prior


def default_prior(net, kind):
    """The prior of a solver kind when neither `prior=` nor the net's `sample_prior` is given."""
    return cld_prior(net) if kind == 'cld' else gaussian_prior


def resolve_prior(net, prior=None, kind='ode'):
    """The prior to use: `prior` if given, else the net's `sample_prior` method, else the kind's `default_prior`."""
    if prior is not None:
        return prior
    return getattr(net, 'sample_prior', None) or default_prior(net, kind)


__all__ = ['gaussian_prior', 'cld_prior', 'default_prior', 'resolve_prior']
