"""Shared pieces of the command-line scripts: option types and one-line error reporting."""

import ast
import re

import click

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


class IntListType(click.ParamType):
    """Comma-separated integers and ranges: '0-63', '1,2,5-10'."""
    name = 'LIST'

    def convert(self, value, param, ctx):
        from torch_utils.misc import parse_int_list
        if isinstance(value, list):
            return value
        try:
            return parse_int_list(value)
        except ValueError as e:
            self.fail(f'{value!r}: {e}', param, ctx)


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
