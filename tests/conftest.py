import hashlib
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))


FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def fixtures_dir(*parts):
    """Path inside tests/fixtures, the golden reference outputs (described in tests/fixtures/README.md)."""
    return os.path.join(FIXTURES, *parts)


@pytest.fixture(scope='module')
def golden():
    """The GITS toolbox's reference cases on an analytic Gaussian mixture (tests/fixtures/README.md, samplers/)."""
    return torch.load(fixtures_dir('samplers', 'gits_reference_cases.pt'), weights_only=True)


def error_line(result):
    """The single 'Error: ...' line of a failed click run (CliRunner result): no traceback, exactly one line."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), f'uncaught exception: {result.exception!r}'
    text = result.stderr if hasattr(result, 'stderr') else result.output
    lines = [line for line in text.replace('\r', '\n').splitlines() if line.startswith('Error')]
    assert len(lines) == 1, text
    assert 'Traceback' not in text
    return lines[0]


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module of tiny tensors: on a busy machine a second thread mostly waits (measured up to
    60x slower for the tiny networks of the tests)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def png_digests(folder):
    """{relative path: md5} of the PNGs below `folder` (byte-identical images across runs)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith('.png'):
                with open(os.path.join(root, name), 'rb') as f:
                    out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.md5(f.read()).hexdigest()
    return out
