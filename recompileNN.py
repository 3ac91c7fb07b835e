"""Rebuild a checkpoint (e.g. an official EDM pickle) from this toolkit's own network classes.

The result holds the same tensors in the official pickle layout, but its embedded module sources are this
project's (forward-mode-AD friendly) `training/networks.py`, so any EDM-based tool can load it. The rebuilt network
is checked before the file is written (torch_utils/recompile.py).
"""

import os

import click

from dnnlib.cli import Command, bool_option

# ----------------------------------------------------------------------------


@click.command(cls=Command)
@click.option('--pkl_dir', '--network', 'source', help='Checkpoint to convert (path or URL)', metavar='PATH|URL',
              required=True)
@click.option('--dest', help='Output pickle  [default: ckpts/<same file name>]', metavar='PATH', default=None)
@bool_option('--trust-pickle', 'trust_pickle', help='Read the source with legacy unpickling (runs embedded code)')
def main(source, dest, trust_pickle):
    """Convert a network pickle into one built from this toolkit's classes.

    The configuration comes from the checkpoint itself (the constructor arguments stored with every network).
    Before writing, the rebuilt network is checked on random inputs: finite and deterministic output, state round
    trip through the written file, a forward-mode JVP (torch.func.jvp) against a central difference, and, with
    --trust-pickle, equality with the network unpickled the legacy way (to 1e-6).

    \b
    Example:
    python recompileNN.py --pkl_dir=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl
    """
    import pickle
    import dnnlib
    from torch_utils.recompile import CheckError, recompile
    if dest is None:
        dest = os.path.join('ckpts', os.path.basename(source.split('?', 1)[0]) or 'network.pkl')
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise click.BadParameter('must differ from the source file', param_hint='--dest')
    try:
        net, report = recompile(source, dest, trust_pickle=trust_pickle)
    except FileNotFoundError as e:
        raise click.BadParameter(str(e), param_hint='--pkl_dir')
    except CheckError as e:
        raise click.ClickException(f'check failed, {dest} not written: {e}')
    except (pickle.UnpicklingError, dnnlib.util.DownloadError, EOFError, OSError) as e:
        raise click.ClickException(f'cannot convert {source}: {e}')
    model = getattr(net, 'model', None)
    inner = f'({type(model).__name__})' if model is not None else ''
    params = sum(p.numel() for p in net.parameters())
    click.echo(f'Rebuilt {type(net).__name__}{inner}, {params:,} parameters, from the constructor arguments '
               f'stored in {source}')
    for name, detail in report:
        click.echo(f'Check {name}: ok ({detail})')
    click.echo(f'Saved {dest}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
