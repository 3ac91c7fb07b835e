"""Rebuild a checkpoint (e.g. an official EDM pickle) from this toolkit's own network classes.

The result holds the same tensors, either in the official pickle layout with this project's (forward-mode-AD
friendly) `training/networks.py` embedded, so any EDM-based tool can load it, or as `.safetensors` (tensors plus
class names and constructor arguments as JSON metadata: a file that cannot carry code). The rebuilt network is
checked before the file is written (torch_utils/recompile.py).
"""

import os

import click

from dnnlib.cli import Command, bool_option

# ----------------------------------------------------------------------------


@click.command(cls=Command)
@click.option('--pkl_dir', '--network', 'source', help='Checkpoint to convert (path or URL)', metavar='PATH|URL',
              required=True)
@click.option('--dest', help='Output file  [default: ckpts/<same name>, .safetensors for that format]',
              metavar='PATH', default=None)
@click.option('--format', 'fmt', help='Output format: EDM pickle, or safetensors (no code)',
              type=click.Choice(['pickle', 'safetensors']), default='pickle', show_default=True)
@bool_option('--trust-pickle', 'trust_pickle', help='Read the source with legacy unpickling (runs embedded code)')
def main(source, dest, fmt, trust_pickle):
    """Convert a network checkpoint into one built from this toolkit's classes.

    The configuration comes from the checkpoint itself (the constructor arguments stored with every network).
    Before writing, the rebuilt network is checked on random inputs: finite and deterministic output, state round
    trip through the written file, a forward-mode JVP (torch.func.jvp) against a central difference, and, with
    --trust-pickle, equality with the network unpickled the legacy way (to 1e-6).

    \b
    Examples:
    python recompileNN.py --pkl_dir=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl
    python recompileNN.py --network=net.pkl --format=safetensors --dest=net.safetensors
    """
    import dnnlib
    from torch_utils.recompile import CheckError, recompile
    if dest is None:
        name = os.path.basename(source.split('?', 1)[0]) or 'network.pkl'
        if fmt == 'safetensors':
            name = os.path.splitext(name)[0] + '.safetensors'
        dest = os.path.join('ckpts', name)
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise click.BadParameter('must differ from the source file', param_hint='--dest')
    try:
        net, report = recompile(source, dest, trust_pickle=trust_pickle, format=fmt)
    except CheckError as e:
        raise click.ClickException(f'check failed, {dest} not written: {e}')
    except dnnlib.util.InputError as e:   # The message names the file.
        raise click.ClickException(f'cannot convert: {e}')
    except OSError as e:
        raise click.ClickException(f'cannot write {dnnlib.util.printable(dest)}: {e.strerror or e}')
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
