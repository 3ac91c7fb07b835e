"""generate.py: sampler rule, file layout, one-line errors, seeds independent of batch size and process count."""
import os
import re
import pickle
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import generate
from samplers import selection
from training import networks
from conftest import png_digests

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


OPTS = dict(rho=None, afs=False, denoise_to_zero=False, dp=False)


@pytest.mark.parametrize('args,expected,nfe,cost', [
    # The published 2nd-SED command: --randn_like=ddb alone selects itotaylor with EDM's --steps and --rho.
    (dict(randn_like='ddb', steps=84, rho=3.0), dict(solver='itotaylor', num_steps=84, rho=3.0), 167,
     '1 forward pass + 83 JVPs + 83 nested JVPs'),
    (dict(solver='itotaylor', randn_like='ddb', langevin=0.0), dict(solver='itotaylor', num_steps=18, langevin=0.0),
     35, '18 forward passes + 17 JVPs'),
    (dict(solver='itotaylor', steps=5, laplacian='symmetric'), dict(solver='itotaylor', laplacian='symmetric'),
     17, '13 forward passes + 4 JVPs'),
    # A noise window: 5 of the 9 Taylor steps of EDM's 10 levels (80, 42.4, 21.1, 9.72, 4.07, 1.50, 0.470, 0.117,
    # 0.0204, 0.002) start in it; they take 3 forward passes + 1 JVP, the other steps 1 + 1, the last 1 forward pass.
    (dict(solver='itotaylor', steps=10, S_min=0.1, S_max=10.0, laplacian='symmetric', sigma_max=80.0),
     dict(solver='itotaylor', S_min=0.1, S_max=10.0, sigma_max=80.0), 29, '20 forward passes + 9 JVPs'),
    (dict(solver='edm_em', steps=6, langevin=0.5), dict(solver='edm_em', num_steps=6, langevin=0.5), 6, None),
    (dict(randn_like='db'), dict(solver='edm', num_steps=18, rho=7), 35, None),
    (dict(randn_like='db', solver='ipndm'), dict(solver='ipndm', num_steps=7), 6, None),
])
def test_sampler_rule_for_sde_solvers(args, expected, nfe, cost):
    kind, kwargs = generate.choose_sampler({**OPTS, **args})
    assert kind == 'edm' or expected['solver'] == 'ipndm'
    assert {k: kwargs.get(k) for k in expected} == expected
    assert 'randn_like' not in kwargs
    assert selection.describe_nfe(kind, kwargs) == nfe and selection.describe_cost(kind, kwargs) == cost
    selection.precheck({**OPTS, **args})


@pytest.mark.parametrize('args,message', [
    (dict(randn_like='ddb', solver='edm'), '--randn_like=ddb does not fit --solver=edm: it takes --randn_like=db'),
    (dict(randn_like='ddb', solver='edm_em'), 'does not fit --solver=edm_em'),
    (dict(randn_like='db', solver='itotaylor'), '--randn_like=db does not fit --solver=itotaylor: it takes '
     '--randn_like=ddb'),
    (dict(randn_like='ddb', disc='vp'), "does not fit EDM's ablation sampler"),
    (dict(randn_like='dbb'), "'dbb' is not one of db, ddb"),
    (dict(randn_like='ddb', S_churn=5.0), '--S_churn only applies to --solver=edm, not to --solver=itotaylor'),
    (dict(randn_like='ddb', num_steps=5), '--num_steps only applies to the fast solvers'),
    (dict(randn_like='ddb', schedule_rho=3.0), '--schedule_rho only applies to the fast solvers'),
    (dict(solver='edm_em', laplacian='none'), '--laplacian only applies to --solver=itotaylor, not to '
     '--solver=edm_em'),
    (dict(laplacian='none'), '--laplacian only applies to --solver=itotaylor, not to EDM\'s sampler'),
    (dict(solver='ipndm', steps=4, laplacian='none'), '--steps is EDM'),
])
def test_sampler_rule_refusals_for_sde_solvers(args, message):
    with pytest.raises(selection.OptionError, match=message):
        selection.choose_sampler({**OPTS, **args}, note=lambda m: None)
    with pytest.raises(click.UsageError, match=message):
        generate.choose_sampler({**OPTS, **args})


def test_randn_like_needs_a_scalar_sigma_denoiser():
    with pytest.raises(selection.OptionError, match=r'--randn_like=ddb \(--solver=itotaylor\) needs a scalar-sigma '
                       'denoiser, but the network is a CLD network'):
        selection.choose_sampler({**OPTS, 'randn_like': 'ddb'}, family='cld')
    assert selection.choose_sampler({**OPTS, 'randn_like': 'db'}, family='cld')[1]['solver'] == 'gddim'


@pytest.mark.usefixtures('one_thread')
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # torch's own jvp decompositions
def test_itotaylor_command_is_seed_deterministic(nets, tmp_path):
    # The published command scaled down on a tiny net: the same bytes for every batch size.
    common = [f'--network={nets["cond"]}', '--seeds=0-2', '--steps=3', '--randn_like=ddb', '--rho=3', '--subdirs']
    code, out = run([f'--outdir={tmp_path / "a"}', '--batch=3', *common])
    assert code == 0, out
    assert 'NFE = 5 (1 forward pass + 2 JVPs + 2 nested JVPs)' in out and '"solver": "itotaylor"' in out
    assert run([f'--outdir={tmp_path / "b"}', '--batch=1', *common])[0] == 0
    a = png_digests(tmp_path / 'a')
    assert sorted(a) == [f'000000/{s:06d}.png' for s in range(3)] and a == png_digests(tmp_path / 'b')
    assert len(set(a.values())) == 3
    # EDM Algorithm 2 (--randn_like=db, the default) and the probability-flow ODE give other images.
    assert run([f'--outdir={tmp_path / "c"}', '--batch=3', *common[:3], '--randn_like=db', '--rho=3'])[0] == 0
    assert run([f'--outdir={tmp_path / "d"}', '--batch=3', *common, '--langevin=0'])[0] == 0
    c, d = png_digests(tmp_path / 'c'), png_digests(tmp_path / 'd')
    assert len({a['000000/000000.png'], c['000000.png'], d['000000/000000.png']}) == 3


@pytest.mark.slow
def test_published_itotaylor_command_on_the_demo_checkpoint(tmp_path):
    demo = os.path.join(ROOT, 'checkpoints', 'edm-digits-16x16-cond-ddpmpp.pkl')
    outs = {}
    for batch in (4, 1):
        outs[batch] = tmp_path / f'b{batch}'
        res = subprocess.run([sys.executable, 'generate.py', f'--outdir={outs[batch]}', f'--network={demo}',
                              f'--batch={batch}', '--seeds=0-3', '--steps=4', '--randn_like=ddb', '--rho=3',
                              '--subdirs'], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
        assert 'NFE = 7 (1 forward pass + 3 JVPs + 3 nested JVPs)' in res.stdout
    a, b = png_digests(outs[4]), png_digests(outs[1])
    assert sorted(a) == [f'000000/{s:06d}.png' for s in range(4)] and a == b


def test_layout_subdirs_grid_and_determinism(nets, tmp_path):
    code, out = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "a"}', '--seeds=998-1001', '--batch=3',
                     '--steps=3', '--subdirs=True', '--grid'])
    assert code == 0, out
    assert sorted(png_digests(tmp_path / 'a')) == ['000000/000998.png', '000000/000999.png', '001000/001000.png',
                                                '001000/001001.png']
    # Same seeds, other batch size and a forced class only for... nothing else: identical bytes.
    code, out = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "b"}', '--seeds=998-1001', '--batch=1',
                     '--steps=3', '--subdirs'])
    assert code == 0, out
    a, b = png_digests(tmp_path / 'a'), png_digests(tmp_path / 'b')
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
    assert png_digests(tmp_path / 'c') != png_digests(tmp_path / 'd')


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
    (['--network={cond}', '--randn_like=dbb'], "Invalid value for '?--randn_like'?: 'dbb' is not one of 'db', 'ddb'"),
    (['--network={cond}', '--randn_like=ddb', '--solver=ipndm'], "Invalid value for '?--randn_like'?: "
     '--randn_like=ddb does not fit --solver=ipndm: it takes --randn_like=db'),
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
    single = subprocess.run([sys.executable, 'generate.py', f'--outdir={tmp_path / "one"}', '--batch=5', '--grid',
                             *common], cwd=ROOT, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS='1')
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'generate.py']
    multi = subprocess.run(torchrun + [f'--outdir={tmp_path / "two"}', '--batch=2', '--grid=True', *common],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one, two = png_digests(tmp_path / 'one'), png_digests(tmp_path / 'two')
    assert len(one) == 5 and one == two
    # The grid is gathered from both ranks in memory: the same pixels.
    import PIL.Image
    with PIL.Image.open(tmp_path / 'one-grid.png') as a, PIL.Image.open(tmp_path / 'two-grid.png') as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A usage error is printed once, not once per process.
    bad = subprocess.run(torchrun + [f'--outdir={tmp_path / "bad"}', '--solver=dpmpp', '--max_order=4', *common],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert len([line for line in bad.stderr.splitlines() if line.startswith('Error')]) == 1, bad.stderr[-2000:]


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
    assert png_digests(tmp_path / 'dp1') == png_digests(tmp_path / 'dp2') == png_digests(tmp_path / 'ts')


def test_toolbox_options_ignored_where_meaningless(nets, tmp_path):
    code, out = run([f'--network={nets["uncond"]}', f'--outdir={tmp_path / "e"}', '--seeds=0', '--solver=euler',
                     '--num_steps=3', '--max_order=4'])
    assert code == 0 and '--max_order not used by --solver=euler' in out and 'NFE = 2' in out


# ----------------------------------------------------------------------------
# Checks before the work, the GITS toolbox's --dataset_name, --grid without a shared file system.


def run_lines(args, env=None):
    """(exit code, output, the 'Error' lines) of an in-process run."""
    result = CliRunner().invoke(generate.main, args, catch_exceptions=False, env=env)
    return result.exit_code, result.output, [line for line in result.output.splitlines() if line.startswith('Error')]


@pytest.mark.parametrize('args,message', [
    (['--solver=dpmpp', '--max_order=4'], 'max_order'),
    (['--solver=ipndm', '--schedule_type=discrete'], "schedule_type='discrete' needs a net with sigma(t)"),
])
def test_solver_options_fail_before_generation(nets, tmp_path, args, message):
    out = tmp_path / 'o'
    code, output, errors = run_lines([f'--network={nets["uncond"]}', f'--outdir={out}', '--seeds=0-1', *args])
    assert code != 0 and len(errors) == 1 and message in errors[0], output
    assert 'Generating' not in output and not list(out.glob('*.png'))


def test_max_order_checked_before_the_network_is_loaded(tmp_path):
    code, _, errors = run_lines([f'--network={tmp_path / "missing.pkl"}', f'--outdir={tmp_path / "o"}',
                                 '--solver=dpmpp', '--max_order=4'])
    assert code != 0 and len(errors) == 1 and 'max_order' in errors[0] and 'missing.pkl' not in errors[0]


def test_grid_is_gathered_in_memory(nets, tmp_path, monkeypatch):
    import PIL.Image
    expected = tmp_path / 'ref'
    assert run([f'--network={nets["cond"]}', f'--outdir={expected}', '--seeds=0-4', '--steps=2'])[0] == 0
    opened = []
    original = PIL.Image.open
    monkeypatch.setattr(PIL.Image, 'open', lambda *a, **k: opened.append(a) or original(*a, **k))
    code, out = run([f'--network={nets["cond"]}', f'--outdir={tmp_path / "g"}', '--seeds=0-4', '--steps=2',
                     '--batch=2', '--grid=True'])
    assert code == 0, out
    assert opened == []  # No PNG is read back to make the grid.
    monkeypatch.undo()
    with PIL.Image.open(tmp_path / 'g-grid.png') as img:
        grid = np.asarray(img)
    tiles = [grid[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] for r in range(3) for c in range(3)]
    for seed in range(5):
        with PIL.Image.open(expected / f'{seed:06d}.png') as img:
            np.testing.assert_array_equal(tiles[seed], np.asarray(img))
    assert not tiles[5].any()


def test_wording_of_refused_options():
    opts = dict(rho=None, afs=False, denoise_to_zero=False, dp=False, solver='unipc', S_churn=5.0)
    with pytest.raises(click.UsageError, match='--S_churn only applies to EDM'):
        generate.choose_sampler(opts)
    opts.update(S_min=0.1)
    with pytest.raises(click.UsageError, match='--S_churn, --S_min only apply to EDM'):
        generate.choose_sampler(opts)
    with pytest.raises(click.UsageError, match='--afs only applies to the fast solvers'):
        generate.choose_sampler(dict(rho=None, afs=True, denoise_to_zero=False, dp=False))


def test_outdir_that_cannot_be_created(nets, tmp_path):
    (tmp_path / 'file').write_text('x')
    for outdir, message in ((tmp_path / 'file', 'is a file, not a folder'),
                            (tmp_path / 'file' / 'sub', 'is a file, not a folder'),
                            ('/proc/edmkit-test', '/proc does not accept new entries')):
        code, output, errors = run_lines([f'--network={nets["uncond"]}', f'--outdir={outdir}', '--steps=2'])
        assert code != 0 and len(errors) == 1 and message in errors[0] and '--outdir' in errors[0], output


def test_usage_error_shown_by_rank_zero_only(nets, tmp_path):
    for rank, count in (('0', 1), ('1', 0)):
        code, output, errors = run_lines([f'--network={nets["uncond"]}', f'--outdir={tmp_path}', '--seeds=x'],
                                         env=dict(RANK=rank, WORLD_SIZE='2'))
        assert code == 2 and len(errors) == count, output


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """Stand-ins named like the official checkpoints of the GITS toolbox's --dataset_name models."""
    folder = tmp_path_factory.mktemp('official')
    for name, file in selection.TOOLBOX_MODELS.items():
        torch.manual_seed(1)
        net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=5 if name == 'imagenet64' else 0,
                                  model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1,
                                  attn_resolutions=[], dropout=0.0)
        with open(folder / file, 'wb') as f:
            pickle.dump(dict(ema=net.eval()), f)
    return folder


def test_dataset_name_urls():
    assert {name: selection.toolbox_network(name).rsplit('/', 1)[1] for name in selection.TOOLBOX_MODELS} == {
        'cifar10': 'edm-cifar10-32x32-uncond-vp.pkl', 'ffhq': 'edm-ffhq-64x64-uncond-vp.pkl',
        'afhqv2': 'edm-afhqv2-64x64-uncond-vp.pkl', 'imagenet64': 'edm-imagenet-64x64-cond-adm.pkl'}
    assert selection.toolbox_network('cifar10').startswith('https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/')


def test_dataset_name_gits_command_line(official, tmp_path, monkeypatch):
    monkeypatch.setenv('EDM_PRETRAINED_BASE', 'file://' + str(official))
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.chdir(tmp_path)
    # A GITS toolbox command line with sample.py replaced by generate.py (smaller sizes).
    code, out = run(['--dataset_name=cifar10', '--batch=2', '--seeds=0-3', '--grid=True', '--solver=ipndm',
                     '--num_steps=4', '--afs=False', '--schedule_type=polynomial', '--schedule_rho=7',
                     '--max_order=4', '--dp=True', '--metric=dev', '--coeff=1.15', '--num_steps_tea=7',
                     '--num_warmup=2'])
    assert code == 0, out
    folder = tmp_path / 'samples' / 'grids' / 'cifar10' / 'ipndm_nfe3'
    assert sorted(os.listdir(folder)) == ['000000.png', '000001.png', '000002.png', '000003.png',
                                          'gits_schedule.json']
    assert (tmp_path / 'samples' / 'grids' / 'cifar10' / 'ipndm_nfe3-grid.png').is_file()
    # The same images as the stand-in file given with --network; without --grid: samples/<name>/.
    code, out = run(['--dataset_name=cifar10', '--seeds=0-3', '--solver=euler', '--num_steps=3'])
    assert code == 0, out
    code, out = run([f'--network={official / "edm-cifar10-32x32-uncond-vp.pkl"}', '--outdir=direct', '--seeds=0-3',
                     '--solver=euler', '--num_steps=3'])
    assert code == 0, out
    assert png_digests(tmp_path / 'samples' / 'cifar10' / 'euler_nfe2') == png_digests(tmp_path / 'direct')
    code, out = run(['--dataset_name=imagenet64', '--seeds=0', '--steps=2', '--class=3'])
    assert code == 0 and (tmp_path / 'samples' / 'imagenet64' / 'edm_nfe3' / '000000.png').is_file(), out


@pytest.mark.parametrize('args,message', [
    (['--dataset_name=lsun_bedroom'], "'lsun_bedroom' is not supported; supported: cifar10, ffhq, afhqv2, "
                                      "imagenet64"),
    (['--dataset_name=cifar10', '--network=x.pkl'], 'give one of them'),
    ([], "Missing option '--network' (or name a model with --dataset_name, or a training run directory"),
    (['--network=x.pkl'], "Missing option '--outdir'"),
])
def test_dataset_name_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, output, errors = run_lines(args)
    assert code == 2 and len(errors) == 1 and message in errors[0], output
    assert os.listdir(tmp_path) == []


def test_cached_search_ignores_corrupt_and_planted_files(tmp_path, monkeypatch, capsys):
    import json
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    search, calls = dict(kind='test', num_steps=3), []

    def compute():
        calls.append(1)
        return [3.0, 2.0, 1.0]

    def check(t_steps):
        if not set(t_steps) <= {3.0, 2.5, 2.0, 1.5, 1.0}:
            raise ValueError('its t_steps are off the grid')
    assert selection.cached_search('sched', search, compute, check) == [3.0, 2.0, 1.0] and len(calls) == 1
    (cache,) = (tmp_path / 'sched').iterdir()
    good = json.loads(cache.read_text())
    for content, reason in [
            (b'\x00{"t_steps": [', 'not a readable JSON file'),
            (b'[' * 100000, 'not a readable JSON file'),
            (json.dumps(dict(good, t_steps=[3.0, 1.7, 1.0])).encode(), 'its t_steps are off the grid'),
            (json.dumps(dict(good, t_steps=[3.0, 'x'])).encode(),
             'its t_steps are not a decreasing list of positive noise levels'),
            (json.dumps(dict(good, t_steps=[3.0, 1.0, 2.0])).encode(), 'its t_steps are not a decreasing list'),
            (json.dumps(dict(good, t_steps=[3.0, float('nan')])).encode(), 'its t_steps are not a decreasing list'),
            (json.dumps(dict(good, search=dict(search, num_steps=4))).encode(), 'not a record of this search'),
            (json.dumps([good]).encode(), 'not a record of this search'),
            (b' ' * (2 << 20), 'larger than 1048576 bytes')]:
        cache.write_bytes(content)
        calls.clear()
        assert selection.cached_search('sched', search, compute, check) == [3.0, 2.0, 1.0] and len(calls) == 1
        assert f'Ignoring the cache file {cache}: {reason}' in capsys.readouterr().out
        assert json.loads(cache.read_text()) == good  # The search ran again and replaced the file.
    calls.clear()
    assert selection.cached_search('sched', search, compute, check) == [3.0, 2.0, 1.0] and not calls
    assert 'Reusing the SCHED schedule' in capsys.readouterr().out


def test_gits_cache_planted_schedule_is_ignored(nets, tmp_path, monkeypatch):
    import json
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    args = [f'--network={nets["uncond"]}', '--seeds=0', '--solver=ipndm', '--num_steps=4', '--dp=True',
            '--num_warmup=2', '--num_steps_tea=9']
    code, out = run(args + [f'--outdir={tmp_path / "first"}'])
    assert code == 0 and 'Searching a GITS schedule' in out, out
    (cache,) = (tmp_path / 'cache' / 'gits').iterdir()
    good = json.loads(cache.read_text())
    cache.write_text(json.dumps(dict(good, t_steps=[80.0, 20.0, 1.0, 0.002])))  # Decreasing, but no GITS result.
    code, out = run(args + [f'--outdir={tmp_path / "second"}'])
    assert code == 0, out
    assert f"Ignoring the cache file {cache}: its t_steps are not 4 points of the teacher's 9-point grid" in out
    assert json.loads((tmp_path / 'second' / 'gits_schedule.json').read_text())['t_steps'] == good['t_steps']
