"""Shared pieces of the command-line scripts: option types, integer lists, one-line error messages and click
command classes that show an error once under torchrun."""

import ast
import contextlib
import os
import re
import tempfile

import click

from .util import InputError, printable

# ----------------------------------------------------------------------------


class BoolType(click.ParamType):
    """Booleans written as 1/0, true/false, yes/no, on/off (any case)."""
    name = 'BOOL'
    _values = {'1': True, 'true': True, 'yes': True, 'y': True, 'on': True,
               '0': False, 'false': False, 'no': False, 'n': False, 'off': False}

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        key = str(value).strip().lower()
        if key not in self._values:
            self.fail(f'{value!r} is not a boolean (use True/False or 1/0)', param, ctx)
        return self._values[key]


def bool_option(*names, default=False, help=None, **kwargs):
    """A boolean option that accepts `--flag`, `--flag=True|False` and `--flag=1|0`."""
    return click.option(*names, type=BoolType(), default=default, is_flag=False, flag_value=True,
                        show_default=True, help=help, **kwargs)


def one_line(error):
    """The message of an exception (or any text) as one line for a CLI error: the first non-empty line with runs of
    whitespace collapsed; an exception without a message gives its type name."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ''
    return ' '.join(lines[0].split())


def error_message(error):
    """`one_line` of an exception, also when a DataLoader worker re-raised it with its traceback in the message
    (the original message is then the last line)."""
    text = str(error)
    if 'Original Traceback' in text:
        last = text.strip().splitlines()[-1]
        text = last.split(': ', 1)[1] if ': ' in last else last
    return one_line(text)


def parse_int_list(s, ranges=True, min_value=0):
    """'1,2,5-10' -> [1, 2, 5, 6, 7, 8, 9, 10]; with `ranges=False` only single integers ('2,2,2'). Every value
    must be at least `min_value`. Raises ValueError with a readable message."""
    if isinstance(s, (list, tuple)):
        result = [int(v) for v in s]
    else:
        result = []
        text = str(s).strip().strip('"\'')
        if not text:
            raise ValueError('empty list')
        for part in text.split(','):
            part = part.strip()
            match = re.fullmatch(r'(\d+)\s*-\s*(\d+)', part) if ranges else None
            if match:
                lo, hi = int(match.group(1)), int(match.group(2))
                if hi < lo:
                    raise ValueError(f'range "{part}" is empty (end before start)')
                result.extend(range(lo, hi + 1))
            elif re.fullmatch(r'\d+', part):
                result.append(int(part))
            elif ranges:
                raise ValueError(f'"{printable(part)}" is not a non-negative integer or a range like 0-63')
            else:
                raise ValueError(f'"{printable(part)}" is not a non-negative integer (expected a comma-separated '
                                 'list like 1,2,2)')
    low = [v for v in result if v < min_value]
    if low:
        raise ValueError(f'{low[0]} is too small: every entry must be at least {min_value}')
    return result


class IntListType(click.ParamType):
    """Comma-separated integers and ranges ('0-63', '1,2,5-10'), or with `ranges=False` integers only ('1,2,2');
    every entry at least `min_value`."""
    name = 'LIST'

    def __init__(self, ranges=True, min_value=0):
        self.ranges, self.min_value = ranges, min_value

    def convert(self, value, param, ctx):
        try:
            return parse_int_list(value, ranges=self.ranges, min_value=self.min_value)
        except ValueError as e:
            self.fail(f'{printable(value)!r}: {e}' if isinstance(value, str) else str(e), param, ctx)


class FloatListType(click.ParamType):
    """A list of numbers written like `[80,10.98,3.88]` or `80,10.98,3.88`."""
    name = 'LIST'

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        text = str(value).strip()
        if not re.fullmatch(r'\[?[\s0-9eE+\-.,]*\]?', text):
            self.fail(f'{value!r} is not a list of numbers like [80,10.98,0.002]', param, ctx)
        try:
            parsed = ast.literal_eval(text if text.startswith('[') else f'[{text}]')
            return [float(v) for v in parsed]
        except (ValueError, SyntaxError, TypeError):
            self.fail(f'{value!r} is not a list of numbers like [80,10.98,0.002]', param, ctx)


def unsupported_option(name, message):
    """A hidden option that is accepted by the parser only to fail with a clear message (published research
    command lines whose option this toolkit does not implement yet)."""
    def callback(ctx, param, value):
        if value is not None:
            raise click.UsageError(f'{name} is not supported: {message}', ctx=ctx)
        return value
    return click.option(name, hidden=True, default=None, expose_value=False, callback=callback, is_eager=True)


# ----------------------------------------------------------------------------
# Errors under torchrun: shown once.


def launch_rank():
    """This process's rank as torchrun announces it (the RANK variable), 0 otherwise. Known before any process
    group exists, so usable while the command line is still being parsed."""
    try:
        return int(os.environ.get('RANK', '0'))
    except ValueError:
        return 0


@contextlib.contextmanager
def _errors_once():
    """Turn an `InputError` into a one-line click error, and let only rank 0 show an error that every process
    raises alike: a click.UsageError (bad option) or an exception marked `collective=True`."""
    try:
        yield
    except InputError as e:
        raise click.ClickException(error_message(e)) from None
    except click.ClickException as e:
        if launch_rank() != 0 and (isinstance(e, click.UsageError) or getattr(e, 'collective', False)):
            e.show = lambda file=None: None
        raise


class _ErrorsOnce:
    def make_context(self, *args, **kwargs):
        with _errors_once():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _errors_once():
            return super().invoke(ctx)


class CollectiveError(click.ClickException):
    """An error that every process raises alike (e.g. a bad combination of options): under torchrun it is shown
    by rank 0 only."""
    collective = True


class Command(_ErrorsOnce, click.Command):
    """The scripts' click command (`@click.command(cls=Command)`): `InputError`s become their one error line, and
    under torchrun usage errors are printed by rank 0 only (every process exits with the same status)."""


class Group(_ErrorsOnce, click.Group):
    """A command group with the same error handling as `Command`, also for its subcommands."""
    command_class = Command


def refuse_torchrun(script):
    """Fail with one line (printed once) when a single-process script is started by torchrun with several
    processes, which would all do the same work and race on the same files."""
    if os.environ.get('WORLD_SIZE', '1').strip() not in ('', '0', '1'):
        raise click.UsageError(f'{script} runs as one process; start it with python, not torchrun')


def check_output_path(path, option, folder=True):
    """Fail with a usage error (one line, naming `option`) unless `path` can be written: an existing folder (a
    file with `folder=False`) or a new path whose nearest existing parent is a folder that accepts new entries.
    The check creates and removes a temporary folder, so special file systems (/proc) are caught; nothing is
    left behind."""
    path = os.path.abspath(path)
    if os.path.exists(path) and folder != os.path.isdir(path):
        kind = 'a file, not a folder' if folder else 'a folder; give the name of the file to write'
        raise click.BadParameter(f'{printable(path)} is {kind}', param_hint=option)
    parent = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise click.BadParameter(f'cannot create {printable(path)}: {printable(parent)} is a file, not a folder',
                                 param_hint=option)
    try:
        os.rmdir(tempfile.mkdtemp(prefix='.write-test-', dir=parent))
    except OSError as e:
        raise click.BadParameter(f'cannot create {printable(path)}: {printable(parent)} does not accept new '
                                 f'entries ({e.strerror or one_line(e)})', param_hint=option) from None
