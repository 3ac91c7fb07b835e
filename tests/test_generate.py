"""generate.py: sampler rule, file layout, one-line errors, seeds independent of batch size and process count."""
import hashlib
import os
import re
import pickle
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner

import generate
from training import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net(label_dim):
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=label_dim, model_type='SongUNet',
                              model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                              dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp('nets')
    paths = {}
    for name, label_dim in (('cond', 4), ('uncond', 0)):
        paths[name] = str(folder / f'{name}.pkl')
        with open(paths[name], 'wb') as f:
            pickle.dump(dict(ema=_net(label_dim)), f)
    return paths


def run(args):
    result = CliRunner().invoke(generate.main, args, catch_exceptions=False)
    return result.exit_code, result.output


def digests(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith('.png'):
                with open(os.path.join(root, name), 'rb') as f:
                    out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.md5(f.read()).hexdigest()
    return out



@pytest.mark.parametrize('args,kind,expected', [
    ({}, 'edm', dict(num_steps=18)),
    (dict(solver='edm', steps=5, S_churn=10.0), 'edm', dict(num_steps=5, S_churn=10.0)),
    (dict(disc='vp', schedule='vp', scaling='vp', solver='euler', steps=30), 'ablation',
     dict(solver='euler', num_steps=30, discretization='vp', schedule='vp', scaling='vp')),
    (dict(scaling='none'), 'ablation', dict(solver='heun', num_steps=18, scaling='none')),
    (dict(solver='ipndm', num_steps=5, max_order=3), 'fast', dict(solver='ipndm', num_steps=5, max_order=3)),
    (dict(solver='euler'), 'fast', dict(solver='euler', num_steps=7, schedule_type='polynomial')),
    (dict(solver='dpmpp', t_steps=[80.0, 1.0, 0.002]), 'fast', dict(t_steps=[80.0, 1.0, 0.002])),
])
def test_sampler_rule(args, kind, expected):
    opts = dict(rho=None, afs=False, denoise_to_zero=False, dp=False)
    opts.update(args)
    got_kind, kwargs = generate.choose_sampler(opts)
    assert got_kind == kind
    assert {k: kwargs.get(k) for k in expected} == expected


@pytest.mark.parametrize('args,message', [
    (dict(solver='ipndm', steps=18), '--num_steps'),
    (dict(num_steps=10), 'fast solvers'),
    (dict(solver='edm', afs=True), '--afs'),
    (dict(disc='vp', solver='ipndm'), 'euler or heun'),
    (dict(solver='unipc', S_churn=5.0), 'deterministic'),
    (dict(solver='euler', t_steps=[1.0, 2.0]), 'decreasing'),
    (dict(solver='dpmpp', rho=3.0), '--schedule_rho'),
])
def test_sampler_rule_refusals(args, message):
    opts = dict(rho=None, afs=False, denoise_to_zero=False, dp=False)
    opts.update(args)
    with pytest.raises(click.UsageError, match=message):
        generate.choose_sampler(opts)


def test_layout_subdirs_grid_and_determinism(nets, tmp_path):
    code, out = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "a"}', '--seeds=998-1001', '--batch=3',
                     '--steps=3', '--subdirs=True', '--grid'])
    assert code == 0, out
    assert sorted(digests(tmp_path / 'a')) == ['000000/000998.png', '000000/000999.png', '001000/001000.png',
                                                '001000/001001.png']
    # Same seeds, other batch size and a forced class only for... nothing else: identical bytes.
    code, out = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "b"}', '--seeds=998-1001', '--batch=1',
                     '--steps=3', '--subdirs'])
    assert code == 0, out
    a, b = digests(tmp_path / 'a'), digests(tmp_path / 'b')
    assert a == b
    import PIL.Image
    with PIL.Image.open(tmp_path / 'a-grid.png') as img:
        assert img.size == (16, 16) and img.mode == 'RGB'
    assert not [f for f in os.listdir(tmp_path / 'a') if 'tmp' in f]


def test_class_option_changes_only_labels(nets, tmp_path):
    code, _ = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "c"}', '--seeds=0-1', '--steps=3',
                   '--class=2'])
    assert code == 0
    code, _ = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "d"}', '--seeds=0-1', '--steps=3',
                   '--class=3'])
    assert digests(tmp_path / 'c') != digests(tmp_path / 'd')


def test_fast_solver_and_ablation_run(nets, tmp_path):
    code, out = run([f'--network={nets["uncond"]}', f'--outdir={tmp_path / "e"}', '--seeds=0', '--solver=heun',
                     '--disc=vp', '--schedule=vp', '--scaling=vp', '--steps=4'])
    assert code == 0, out
    assert 'NFE = 7' in out


@pytest.mark.slow
@pytest.mark.parametrize('args,message', [
    (['--network={missing}'], "Invalid value for '?--network.*no such file"),
    (['--network={cond}', '--seeds=0-x'], "Invalid value for '?--seeds"),
    (['--network={uncond}', '--class=1'], 'unconditional'),
    (['--network={cond}', '--class=4'], 'out of range'),
    (['--network={cond}', '--outdir={blocked}/sub'], "Invalid value for '?--outdir"),
    (['--network={notapickle}'], 'cannot load network'),
    (['--network={cond}', '--randn_like=ddb'], '--randn_like is not supported'),
])
def test_errors_are_one_line(nets, tmp_path, args, message):
    blocked = tmp_path / 'file'
    blocked.write_text('x')
    notapickle = tmp_path / 'x.pkl'
    notapickle.write_text('hello')
    fill = dict(missing=tmp_path / 'none.pkl', blocked=blocked, notapickle=notapickle, **nets)
    args = [a.format(**fill) for a in args]
    if not any(a.startswith('--outdir') for a in args):
        args.append(f'--outdir={tmp_path / "out"}')
    res = subprocess.run([sys.executable, 'generate.py', '--steps=2', *args], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode != 0
    assert re.search(message, res.stderr), res.stderr
    assert 'Traceback' not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith('Error')]) == 1


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(nets, tmp_path):
    common = [f'--network={nets["cond"]}', '--seeds=0-4', '--steps=3', '--device=cpu']
    single = subprocess.run([sys.executable, 'generate.py', f'--outdir={tmp_path / "one"}', '--batch=5', *common],
                            cwd=ROOT, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS='1')
    multi = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            'generate.py', f'--outdir={tmp_path / "two"}', '--batch=2', *common],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one, two = digests(tmp_path / 'one'), digests(tmp_path / 'two')
    assert len(one) == 5 and one == two


def test_gits_search_saved_cached_and_reusable(nets, tmp_path, monkeypatch):
    import json
    import samplers
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    args = [f'--network={nets["cond"]}', '--seeds=0-1', '--solver=ipndm', '--num_steps=4', '--dp=True',
            '--num_warmup=3', '--num_steps_tea=9']
    code, out = run(args + [f'--outdir={tmp_path / "dp1"}'])
    assert code == 0, out
    assert 'Searching a GITS schedule' in out
    with open(tmp_path / 'dp1' / 'gits_schedule.json') as f:
        t_steps = json.load(f)['t_steps']
    fine = samplers.get_schedule(9, 0.002, 80).tolist()
    assert len(t_steps) == 4 and t_steps[0] == fine[0] and t_steps[-1] == fine[-1]
    assert all(t in fine for t in t_steps)  # GITS picks a subset of the teacher's fine grid.
    code, out = run(args + [f'--outdir={tmp_path / "dp2"}'])
    assert code == 0 and 'Reusing the GITS schedule' in out
    code, out = run([f'--network={nets["cond"]}', '--seeds=0-1', '--solver=ipndm', f'--outdir={tmp_path / "ts"}',
                     '--t_steps=[' + ','.join(repr(t) for t in t_steps) + ']'])
    assert code == 0, out
    assert digests(tmp_path / 'dp1') == digests(tmp_path / 'dp2') == digests(tmp_path / 'ts')


def test_toolbox_options_ignored_where_meaningless(nets, tmp_path):
    code, out = run([f'--network={nets["uncond"]}', f'--outdir={tmp_path / "e"}', '--seeds=0', '--solver=euler',
                     '--num_steps=3', '--max_order=4'])
    assert code == 0 and '--max_order not used by --solver=euler' in out and 'NFE = 2' in out
