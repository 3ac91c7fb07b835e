"""Rebuild a checkpoint (e.g. an official EDM pickle) from this toolkit's own network classes.

The result holds the same tensors, either in the official pickle layout with this project's (forward-mode-AD
friendly) `training/networks.py` embedded, so any EDM-based tool can load it, or as `.safetensors` (tensors plus
class names and constructor arguments as JSON metadata: a file that cannot carry code).
"""

import io
import os
import pickle

import click
import torch

import dnnlib
from dnnlib.cli import bool_option
from torch_utils import persistence

# ----------------------------------------------------------------------------


def recompile(source, dest, trust_pickle=False, verify=True, format='pickle'):  # pylint: disable=redefined-builtin
    """Load `source` (path or URL), save it rebuilt from this project's classes to `dest` as a pickle or
    safetensors (`format`). Returns the max |difference| of the two networks on a test input (None without
    `verify`). Raises dnnlib.util.InputError for an unusable source."""
    data = persistence.load_network(source, trust_pickle=trust_pickle)
    if trust_pickle:  # Legacy objects: rebuild them through the safe path from their pickled form.
        data = persistence.load_pickle(io.BytesIO(pickle.dumps(data)), name=source)
    if format == 'safetensors':
        persistence.save_safetensors(data, dest)
    else:
        persistence.save_pickle(data, dest)
    if not verify:
        return None
    rebuilt = persistence.load_network(dest)['ema']
    net = data['ema']
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([1, net.img_channels, net.img_resolution, net.img_resolution], generator=gen)
    sigma = torch.tensor([1.0])
    labels = torch.eye(net.label_dim)[[0]] if net.label_dim else None
    with torch.no_grad():
        return (net(x, sigma, labels) - rebuilt(x, sigma, labels)).abs().max().item()


@click.command()
@click.option('--pkl_dir', '--network', 'source', help='Checkpoint to convert (path or URL)', metavar='PATH|URL',
              required=True)
@click.option('--dest', help='Output file  [default: ckpts/<same name>, .safetensors for that format]',
              metavar='PATH', default=None)
@click.option('--format', 'fmt', help='Output format: EDM pickle, or safetensors (no code)',
              type=click.Choice(['pickle', 'safetensors']), default='pickle', show_default=True)
@bool_option('--trust-pickle', 'trust_pickle', help='Read the source with legacy unpickling (runs embedded code)')
def main(source, dest, fmt, trust_pickle):
    """Convert a network checkpoint into one built from this toolkit's classes.

    \b
    Examples:
    python recompileNN.py --pkl_dir=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl
    python recompileNN.py --network=net.pkl --format=safetensors --dest=net.safetensors
    """
    if dest is None:
        name = os.path.basename(source.split('?', 1)[0]) or 'network.pkl'
        if fmt == 'safetensors':
            name = os.path.splitext(name)[0] + '.safetensors'
        dest = os.path.join('ckpts', name)
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise click.BadParameter('must differ from the source file', param_hint='--dest')
    try:
        err = recompile(source, dest, trust_pickle=trust_pickle, format=fmt)
    except dnnlib.util.InputError as e:
        raise click.ClickException(f'cannot convert: {e}')
    except OSError as e:
        raise click.ClickException(f'cannot write {dnnlib.util.printable(dest)}: {e.strerror or e}')
    click.echo(f'Saved {dest} (max |difference| of the rebuilt network on a test input: {err:.3g})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
