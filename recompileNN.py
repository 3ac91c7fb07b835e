"""Rebuild a checkpoint (e.g. an official EDM pickle) from this toolkit's own network classes.

The result holds the same tensors in the official pickle layout, but its embedded module sources are this
project's (forward-mode-AD friendly) `training/networks.py`, so any EDM-based tool can load it.
"""

import os

import click
import torch

from dnnlib.cli import Command, bool_option

# ----------------------------------------------------------------------------


def recompile(source, dest, trust_pickle=False, verify=True):
    """Load `source` (path or URL), save it rebuilt from this project's classes to `dest`. Returns max |diff|."""
    from torch_utils import persistence
    data = persistence.load_network(source, trust_pickle=trust_pickle)
    if trust_pickle:  # Legacy objects: rebuild them through the safe path from their pickled form.
        import io
        import pickle
        buf = io.BytesIO()
        pickle.dump(data, buf)
        buf.seek(0)
        data = persistence.load_pickle(buf)
    persistence.save_pickle(data, dest)
    if not verify:
        return None
    with open(dest, 'rb') as f:
        rebuilt = persistence.load_pickle(f)['ema']
    net = data['ema']
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([1, net.img_channels, net.img_resolution, net.img_resolution], generator=gen)
    sigma = torch.tensor([1.0])
    labels = torch.eye(net.label_dim)[[0]] if net.label_dim else None
    with torch.no_grad():
        return (net(x, sigma, labels) - rebuilt(x, sigma, labels)).abs().max().item()


@click.command(cls=Command)
@click.option('--pkl_dir', '--network', 'source', help='Checkpoint to convert (path or URL)', metavar='PATH|URL',
              required=True)
@click.option('--dest', help='Output pickle  [default: ckpts/<same file name>]', metavar='PATH', default=None)
@bool_option('--trust-pickle', 'trust_pickle', help='Read the source with legacy unpickling (runs embedded code)')
def main(source, dest, trust_pickle):
    """Convert a network pickle into one built from this toolkit's classes.

    \b
    Example:
    python recompileNN.py --pkl_dir=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl
    """
    import pickle
    import dnnlib
    if dest is None:
        dest = os.path.join('ckpts', os.path.basename(source.split('?', 1)[0]) or 'network.pkl')
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise click.BadParameter('must differ from the source file', param_hint='--dest')
    os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
    try:
        err = recompile(source, dest, trust_pickle=trust_pickle)
    except FileNotFoundError as e:
        raise click.BadParameter(str(e), param_hint='--pkl_dir')
    except (pickle.UnpicklingError, dnnlib.util.DownloadError, EOFError, OSError) as e:
        raise click.ClickException(f'cannot convert {source}: {e}')
    click.echo(f'Saved {dest} (max |difference| of the rebuilt network on a test input: {err:.3g})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
