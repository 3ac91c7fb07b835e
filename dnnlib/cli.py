"""Shared pieces of the command-line scripts: option types, integer lists and one-line error messages."""

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


def one_line(error):
    """The message of an exception (or any text) as one line for a CLI error: the first non-empty line with runs of
    whitespace collapsed; an exception without a message gives its type name."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ''
    return ' '.join(lines[0].split())


def parse_int_list(s):
    """'1,2,5-10' -> [1, 2, 5, 6, 7, 8, 9, 10]. Raises ValueError with a readable message."""
    if isinstance(s, (list, tuple)):
        return [int(v) for v in s]
    result = []
    text = str(s).strip().strip('"\'')
    if not text:
        raise ValueError('empty list')
    for part in text.split(','):
        part = part.strip()
        match = re.fullmatch(r'(\d+)\s*-\s*(\d+)', part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise ValueError(f'range "{part}" is empty (end before start)')
            result.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            result.append(int(part))
        else:
            raise ValueError(f'"{part}" is not a non-negative integer or a range like 0-63')
    return result


class IntListType(click.ParamType):
    """Comma-separated integers and ranges: '0-63', '1,2,5-10'."""
    name = 'LIST'

    def convert(self, value, param, ctx):
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
