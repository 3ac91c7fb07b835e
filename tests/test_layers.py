"""The layers of docs/design.md: dnnlib < torch_utils < training < samplers < scripts; no library imports a script."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ['dnnlib', 'torch_utils', 'training', 'samplers']
SCRIPTS = {name[:-3] for name in os.listdir(ROOT) if name.endswith('.py')}
# The safe loader imports the package `training` once so that its standard classes are declared (docs/design.md).
ALLOWED = {('torch_utils/persistence.py', 'training')}


def _imports(path):
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize('package', LAYERS)
def test_no_upward_imports(package):
    higher = set(LAYERS[LAYERS.index(package) + 1:]) | SCRIPTS
    offenders = []
    for name in sorted(os.listdir(os.path.join(ROOT, package))):
        if name.endswith('.py'):
            rel = f'{package}/{name}'
            for module in _imports(os.path.join(ROOT, rel)):
                top = module.split('.')[0]
                if top in higher and (rel, top) not in ALLOWED:
                    offenders.append(f'{rel}: {module}')
    assert offenders == []
