"""Rebuild a checkpoint from this project's network classes, and verify the result on random inputs.

`recompile(source, dest)` reads a checkpoint (an official EDM pickle or a snapshot), rebuilds every persistent object
from the constructor arguments stored in the checkpoint itself (`torch_utils.persistence`; no configuration is looked
up anywhere else), writes it in the official layout with this project's module sources (or as `.safetensors`), and
checks the written network before the file appears under its name:

- finite: D(x; sigma) is finite on random inputs at two noise levels in the network's range;
- deterministic: a second evaluation is bitwise equal;
- state round trip: the written file holds the same init kwargs and tensors, and gives bitwise equal outputs;
- forward-mode AD: `torch.func.jvp` in (x, sigma) runs, returns the plain output as primal (to float32 rounding:
  attention takes torch's fused kernel outside forward-mode AD), and its tangent agrees with a central difference;
- legacy match (only with `trust_pickle=True`): the output equals that of the original objects unpickled the legacy
  way, i.e. running the module source embedded in the source checkpoint.
"""

import io
import pickle

import torch

from dnnlib.util import atomic_path

from . import persistence

LEGACY_TOL = 1e-6  # max |rebuilt - legacy| / max(1, max |legacy|)
JVP_TOL = 1e-2     # max |JVP - central difference| / max |central difference|, float32 networks
PRIMAL_TOL = 1e-6  # max |JVP primal - plain output| / max(1, max |plain output|)


class CheckError(RuntimeError):
    """A rebuilt network failed one of the checks."""


def random_inputs(net, seed=0, batch=2):
    """x, sigma (one level per sample, inside the network's range, rounded by it) and one-hot labels or None."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([0.5, 5.0]).repeat(batch)[:batch].clamp(float(net.sigma_min), float(net.sigma_max))
    sigma = torch.as_tensor(net.round_sigma(sigma), dtype=torch.float32)
    res, ch = net.img_resolution, net.img_channels
    x = (0.5 * torch.rand([batch, ch, res, res], generator=g) - 0.25
         + sigma.reshape(-1, 1, 1, 1) * torch.randn([batch, ch, res, res], generator=g))
    labels = None
    if net.label_dim:
        labels = torch.eye(net.label_dim)[torch.randint(net.label_dim, [batch], generator=g)]
    return x, sigma, labels, g


def _max_rel(a, b, floor=0.0):
    return float((a - b).abs().max() / max(float(b.abs().max()), floor))


def check_network(net, original=None, legacy=None, seed=0):
    """Run the checks on `net`; returns [(name, detail)] or raises CheckError naming the failed check.

    `original`: the in-memory network that was written (for the state round trip); `legacy`: the network unpickled
    by running the embedded source. Both are compared on the same random inputs.
    """
    report = []
    x, sigma, labels, g = random_inputs(net, seed)
    with torch.no_grad():
        out = net(x, sigma, labels)
        if not bool(torch.isfinite(out).all()):
            raise CheckError('finite output: the network returns NaN or inf on random inputs')
        report.append(('finite output', f'sigma {", ".join(f"{float(s):g}" for s in sigma)}'))
        if not torch.equal(out, net(x, sigma, labels)):
            raise CheckError('deterministic: two evaluations on the same input differ')
        report.append(('deterministic', 'bitwise equal'))

        if original is not None:
            mine, theirs = net.state_dict(), original.state_dict()
            same = list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
            if not same or dict(net.init_kwargs) != dict(original.init_kwargs):
                raise CheckError('state round trip: the written file holds different settings or tensors')
            if not torch.equal(out, original(x, sigma, labels)):
                raise CheckError('state round trip: the written network computes a different output')
            report.append(('state round trip', f'{len(mine)} tensors and init kwargs equal, output bitwise equal'))

    # Forward-mode AD (Jacobian-vector product) in x and sigma, against a central difference along the same tangent.
    vx, vs = torch.randn(x.shape, generator=g), sigma * torch.randn(sigma.shape, generator=g)
    try:
        with torch.no_grad():
            primal, tangent = torch.func.jvp(lambda x, s: net(x, s, labels), (x, sigma), (vx, vs))
    except (RuntimeError, NotImplementedError) as e:
        raise CheckError(f'forward-mode AD: torch.func.jvp fails ({str(e).splitlines()[0]})') from None
    eps = 1e-3
    with torch.no_grad():
        fd = (net(x + eps * vx, sigma + eps * vs, labels) - net(x - eps * vx, sigma - eps * vs, labels)) / (2 * eps)
    if not (bool(torch.isfinite(tangent).all()) and _max_rel(primal, out, floor=1.0) <= PRIMAL_TOL):
        raise CheckError('forward-mode AD: the JVP is not finite or its primal differs from the plain output')
    err = _max_rel(tangent, fd)
    if not err <= JVP_TOL:
        raise CheckError(f'forward-mode AD: JVP and central difference differ by {err:.3g} (relative)')
    report.append(('forward-mode AD', f'torch.func.jvp runs; relative difference to a central difference {err:.2g}'))

    if legacy is not None:
        with torch.no_grad():
            ref = legacy(x, sigma, labels)
        err = _max_rel(out, ref, floor=1.0)
        if not err <= LEGACY_TOL:
            raise CheckError(f'legacy match: rebuilt and legacy networks differ by {err:.3g} (tolerance {LEGACY_TOL})')
        report.append(('legacy match', f'max |difference| {err:.2g} against the legacy-unpickled network'))
    return report


def recompile(source, dest, trust_pickle=False, format='pickle'):  # pylint: disable=redefined-builtin
    """Rebuild checkpoint `source` (path or URL) into `dest` as an EDM pickle or, with `format='safetensors'`, as a
    `.safetensors` checkpoint (persistence.save_safetensors); returns (rebuilt network, check report).

    The file is written atomically and only if every check passes. With `trust_pickle=True` the source is first
    read the legacy way (running its embedded code), then rebuilt through the safe path, and the two are compared.
    """
    data = persistence.load_network(source, trust_pickle=trust_pickle)
    legacy = None
    if trust_pickle:  # Legacy objects: rebuild them through the safe path from their pickled form.
        legacy = data['ema']
        data = persistence.load_pickle(io.BytesIO(pickle.dumps(data)), name=source)
    net = data['ema'].eval().requires_grad_(False)
    with atomic_path(dest) as tmp:
        if format == 'safetensors':
            persistence.save_safetensors(data, tmp)
            rebuilt = persistence.load_safetensors(tmp, name=dest)['ema']
        else:
            persistence.save_pickle(data, tmp)
            with open(tmp, 'rb') as f:
                rebuilt = persistence.load_pickle(f, name=dest)['ema']
        rebuilt = rebuilt.eval().requires_grad_(False)
        report = check_network(rebuilt, original=net, legacy=legacy)
    return rebuilt, report


__all__ = ['CheckError', 'random_inputs', 'check_network', 'recompile']
