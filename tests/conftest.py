import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixtures_dir(*parts):
    """Path inside ../shared/fixtures (next to the repository root, as in CI)."""
    for base in (os.path.join(ROOT, '..', 'shared', 'fixtures'), os.environ.get('EDMKIT_FIXTURES', '')):
        if base and os.path.isdir(base):
            return os.path.join(os.path.abspath(base), *parts)
    pytest.fail('shared fixtures folder not found (expected ../shared/fixtures next to the repository)')


@pytest.fixture
def fixtures():
    return fixtures_dir


def error_line(result):
    """The single 'Error: ...' line of a failed click run (CliRunner result): no traceback, exactly one line."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), f'uncaught exception: {result.exception!r}'
    text = result.stderr if hasattr(result, 'stderr') else result.output
    lines = [line for line in text.replace('\r', '\n').splitlines() if line.startswith('Error')]
    assert len(lines) == 1, text
    assert 'Traceback' not in text
    return lines[0]
