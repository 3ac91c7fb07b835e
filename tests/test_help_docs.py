"""Every script's --help output is kept in docs/<name>-help.txt."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('script,doc', [('recompileNN.py', 'recompile-help.txt')])
def test_help_matches_docs(script, doc):
    res = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS='80'))
    assert res.returncode == 0
    with open(os.path.join(ROOT, 'docs', doc)) as f:
        assert res.stdout == f.read()
