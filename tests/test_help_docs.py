"""Every script's --help output is kept in docs/<name>-help.txt."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('script,doc', [
    ('generate.py', 'generate-help.txt'), ('train.py', 'train-help.txt'), ('example.py', 'example-help.txt'),
    ('dataset_tool.py', 'dataset-tool-help.txt'), ('recompileNN.py', 'recompile-help.txt'),
])
def test_help_matches_docs(script, doc):
    res = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS='80'))
    assert res.returncode == 0
    with open(os.path.join(ROOT, 'docs', doc), encoding='utf-8') as f:
        assert res.stdout == f.read(), f'docs/{doc} is stale: COLUMNS=80 python {script} --help > docs/{doc}'
# fid.py has a command group; tests/test_fid.py keeps docs/fid-help.txt current.
