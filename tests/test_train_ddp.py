"""DDP: two torchrun processes give the same update as one process with gradient accumulation."""
import os
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib
from training.demo_data import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_state(outdir):
    (name,) = os.listdir(outdir)
    return torch.load(os.path.join(outdir, name, 'training-state-000000.pt'), map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    rnd = np.random.RandomState(0)
    images = rnd.randint(0, 255, size=[16, 8, 8, 3]).astype(np.uint8)
    data = write_dataset(images, str(tmp_path / 'rgb.zip'), labels=np.arange(16) % 2)
    # Per-sample generators make sigma, noise and augmentation depend on the sample's stream position only;
    # dropout (drawn per process) is off.
    args = [f'--data={data}', '--cond=1', '--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=8', '--batch-gpu=4',
            '--workers=0', '--augment=0.5', '--dropout=0', '--lr=2e-3', '--lr-rampup=0', '--ema=0.0001', '--seed=3',
            '--per-sample-rng=1', '--duration=0.000032', '--tick=1', '--device=cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    single = subprocess.run([sys.executable, 'train.py', f'--outdir={tmp_path / "one"}', *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            'train.py', f'--outdir={tmp_path / "two"}', *args], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert os.listdir(tmp_path / 'two')[0].endswith('-gpus2-batch8-fp32')

    one, two = final_state(tmp_path / 'one'), final_state(tmp_path / 'two')
    assert one['cur_nimg'] == two['cur_nimg'] == 32 and two['world_size'] == 2 and len(two['rng']) == 2
    # Only the order of floating-point sums differs. Over all parameters that is ~1e-7 relative; a single
    # tensor whose gradient is near zero (zero-initialised output convolutions) can show ~1e-5, as Adam divides
    # by the gradient's magnitude.
    for key in ('net', 'ema'):
        a = torch.cat([t.flatten() for t in one[key].values()])
        b = torch.cat([two[key][name].flatten() for name in one[key]])
        assert float((a - b).norm() / a.norm()) < 1e-5, key
        for name, a in one[key].items():
            rel = float((a - two[key][name]).norm() / a.norm().clamp(min=1e-12))
            assert rel < 1e-4, f'{key}.{name}: relative difference {rel:.2e}'

    # The comparison is meaningful: four steps moved the weights far more than the tolerance.
    (name,) = os.listdir(tmp_path / 'one')
    with open(tmp_path / 'one' / name / 'training_options.json') as f:
        opts = json.load(f)
    torch.manual_seed(opts['seed'])
    initial = dnnlib.construct_class_by_name(**opts['network_kwargs'], img_resolution=8, img_channels=3, label_dim=2)
    start = torch.cat([p.flatten() for p in initial.state_dict().values()])
    end = torch.cat([p.flatten() for p in one['net'].values()])
    assert float((end - start).norm() / start.norm()) > 1e-3
