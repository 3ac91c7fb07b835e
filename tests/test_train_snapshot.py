"""Training snapshots are portable: a process with only torch_utils.persistence unpickles them (EDM's way)."""
import ast
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
from torch_utils import persistence
from training.demo_data import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLAIN_LOAD = r'''
import importlib.util, pickle, sys, torch
assert importlib.util.find_spec('training') is None and importlib.util.find_spec('dnnlib') is None
snapshot, inputs, outputs = sys.argv[1:4]
with open(snapshot, 'rb') as f:
    data = pickle.load(f)                      # Full trust: runs the sources embedded in the file.
assert type(data['dataset_kwargs']) is dict
x = torch.load(inputs)
with torch.no_grad():
    denoised = data['ema'](x['x'], x['sigma'], x['labels'])
torch.manual_seed(0)
images, labels = data['augment_pipe'](x['images'])
torch.manual_seed(0)
loss = data['loss_fn'](data['ema'], x['images'], x['labels'], augment_pipe=data['augment_pipe'])
modules = sorted(m for m in sys.modules if m.startswith('training') or m == 'dnnlib')
torch.save(dict(denoised=denoised, augmented=images, augment_labels=labels, loss=loss.detach(), modules=modules),
           outputs)
'''


def embedded_sources(path):
    """class name -> module source text, for every persistent object in the pickle (read, not executed)."""
    sources = {}

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
                return lambda meta: sources.setdefault(meta['class_name'], meta['module_src'])
            return super().find_class(module, name)

    with open(path, 'rb') as f:
        Reader(f).load()
    return sources


@pytest.mark.slow
def test_snapshot_loads_without_this_project(tmp_path):
    rnd = np.random.RandomState(0)
    data = write_dataset(rnd.randint(0, 255, size=[8, 8, 8]).astype(np.uint8), str(tmp_path / 'd.zip'),
                         labels=np.arange(8) % 2)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "run"}', f'--data={data}', '--cond=1',
                                              '--cbase=8', '--cres=1', '--batch=4', '--workers=0', '--augment=0.5',
                                              '--duration=0.000008', '--seed=0', '--lr-rampup=0'])
    finally:
        torch.set_num_threads(saved)
    assert res.exit_code == 0, res.output
    (run,) = os.listdir(tmp_path / 'run')
    snapshot = str(tmp_path / 'run' / run / 'network-snapshot-000000.pkl')

    # The embedded sources (networks, loss, augmentation) import nothing but torch, numpy and persistence.
    sources = embedded_sources(snapshot)
    assert {'EDMPrecond', 'SongUNet', 'EDMLoss', 'AugmentPipe'} <= set(sources)
    for class_name, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split('.')[0] in ('torch', 'numpy') or name == 'torch_utils', (class_name, name)
                if name == 'torch_utils':
                    assert [a.name for a in node.names] == ['persistence'], (class_name, ast.dump(node))

    # A fresh interpreter that has only torch_utils/persistence.py (no training, no dnnlib).
    runtime = tmp_path / 'runtime'
    (runtime / 'torch_utils').mkdir(parents=True)
    (runtime / 'torch_utils' / '__init__.py').write_text('')
    shutil.copy(os.path.join(ROOT, 'torch_utils', 'persistence.py'), runtime / 'torch_utils' / 'persistence.py')
    (runtime / 'load.py').write_text(PLAIN_LOAD)
    torch.manual_seed(1)
    inputs = dict(x=torch.randn(3, 1, 8, 8), sigma=torch.tensor([0.1, 1.0, 10.0]), labels=torch.eye(2)[[0, 1, 1]],
                  images=torch.rand(3, 1, 8, 8) * 2 - 1)
    torch.save(inputs, tmp_path / 'inputs.pt')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(PYTHONPATH=str(runtime), OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, 'load.py', snapshot, str(tmp_path / 'inputs.pt'), str(tmp_path / 'out.pt')],
                         cwd=runtime, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = torch.load(tmp_path / 'out.pt', weights_only=True)
    assert theirs['modules'] == []

    # Identical outputs from this project's safe loader (with one thread, as the other process: a convolution's
    # summation order may depend on the number of threads).
    ours = persistence.load_network(snapshot)
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            torch.testing.assert_close(ours['ema'](inputs['x'], inputs['sigma'], inputs['labels']), theirs['denoised'],
                                       rtol=0, atol=0)
        torch.manual_seed(0)
        images, labels = ours['augment_pipe'](inputs['images'])
        torch.testing.assert_close(images, theirs['augmented'], rtol=0, atol=0)
        torch.testing.assert_close(labels, theirs['augment_labels'], rtol=0, atol=0)
        torch.manual_seed(0)
        loss = ours['loss_fn'](ours['ema'], inputs['images'], inputs['labels'], augment_pipe=ours['augment_pipe'])
        torch.testing.assert_close(loss.detach(), theirs['loss'], rtol=0, atol=0)
    finally:
        torch.set_num_threads(saved)
