"""What every script shares: boolean options take values, usage errors are shown once under torchrun, library
InputErrors become one line (dnnlib/cli.py)."""

import click
import pytest
from click.testing import CliRunner

import dataset_tool
import example
import fid
import generate
import recompileNN
import train
from dnnlib import cli
from dnnlib.util import InputError

# Each script (fid.py: each subcommand) with the options it requires.
COMMANDS = {
    'generate': (generate.main, [], ['--network=x.pkl', '--outdir=out']),
    'train': (train.main, [], ['--outdir=out', '--data=d.zip']),
    'fid calc': (fid.main, ['calc'], ['--images=x', '--ref=r.npz']),
    'fid ref': (fid.main, ['ref'], ['--data=x', '--dest=r.npz']),
    'dataset_tool': (dataset_tool.main, [], ['--source=x', '--dest=y.zip']),
    'example': (example.main, [], []),
    'recompileNN': (recompileNN.main, [], ['--pkl_dir=x.pkl']),
}


def _command(name):
    main, sub, required = COMMANDS[name]
    return (main.commands[sub[0]] if sub else main), required


def _boolean_options(name):
    command, _ = _command(name)
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden and
            (p.is_flag or isinstance(p.type, (cli.BoolType, click.types.BoolParamType)))]


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_boolean_option_takes_flag_and_values(name):
    command, required = _command(name)
    options = _boolean_options(name)
    assert options or name in ('dataset_tool',), name
    for option in options:
        flag = max(option.opts, key=len)
        for args, expected in (([flag], True), ([f'{flag}=True'], True), ([f'{flag}=False'], False),
                               ([f'{flag}=1'], True), ([f'{flag}=0'], False), ([flag, 'False'], False)):
            with command.make_context(name, required + args) as ctx:
                assert ctx.params[option.name] is expected, (name, args)


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_usage_errors_shown_once_under_torchrun(name):
    main, sub, _ = COMMANDS[name]
    for rank, count in (('0', 1), ('1', 0), ('3', 0)):
        result = CliRunner().invoke(main, sub + ['--no-such-option'], env=dict(RANK=rank, WORLD_SIZE='4'))
        errors = [line for line in result.output.splitlines() if line.startswith('Error')]
        assert result.exit_code == 2 and len(errors) == count, (rank, result.output)


def test_input_error_is_one_line_on_every_rank():
    @click.command(cls=cli.Command)
    def main():
        raise InputError('data.zip:evil\\x1b[2K.png: broken')
    for rank in ('0', '1'):  # A file error may concern one rank's share only: every rank that meets it says so.
        result = CliRunner().invoke(main, [], env=dict(RANK=rank, WORLD_SIZE='2'))
        assert result.exit_code == 1 and result.output == 'Error: data.zip:evil\\x1b[2K.png: broken\n'


def test_int_lists():
    assert cli.parse_int_list('0-2,5') == [0, 1, 2, 5]
    assert cli.parse_int_list('1,2,2', ranges=False, min_value=1) == [1, 2, 2]
    for text, message in (('0,1', '0 is too small: every entry must be at least 1'),
                          ('1-3', 'is not a non-negative integer (expected a comma-separated list like 1,2,2)'),
                          ('1,\x1b', '"\\x1b" is not a non-negative integer')):
        with pytest.raises(ValueError) as info:
            cli.parse_int_list(text, ranges=False, min_value=1)
        assert message in str(info.value)


def test_worker_error_is_one_line():
    import torch

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise InputError(f'data.zip:img{i}.png: cannot read (truncated)')

    @click.command(cls=cli.Command)
    def main():
        for _ in torch.utils.data.DataLoader(Broken(), num_workers=1):
            pass
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 1 and result.output == 'Error: data.zip:img0.png: cannot read (truncated)\n'
