"""FDM (Wu et al. 2023): input factors and warm-up caps against the FDM code's numbers, training with every FDM
preconditioner, exact resume inside the warm-up, official-layout checkpoints, and the singlestep DPM-Solver++."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import generate
import samplers
import train
from conftest import error_line, fixtures_dir
from samplers import analytic
from samplers.singlestep import singlestep_orders, singlestep_schedule
from torch_utils import persistence
from training import networks
from training.dataset import ImageFolderDataset
from training.demo_data import write_dataset
from training.loss import EDMLoss, VELoss, VPLoss, fdm_warmup_cap

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors (tests/conftest.py)

TINY = ['--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=8', '--workers=0', '--augment=0', '--dropout=0',
        '--lr=5e-3', '--lr-rampup=0', '--ema=0.0001', '--seed=1']
SMALL_NET = dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[4], dropout=0)


@pytest.fixture(scope='module')
def fdm_values():
    with open(fixtures_dir('fdm', 'fdm_values.json'), encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """32 8x8 grayscale images in 4 classes: class k is a bright bar on rows 2k, 2k+1."""
    rnd = np.random.RandomState(0)
    labels = np.arange(32) % 4
    images = rnd.randint(0, 40, size=[32, 8, 8])
    for img, k in zip(images, labels):
        img[2 * k:2 * k + 2, 1:7] = 220
    return write_dataset(images.astype(np.uint8), str(tmp_path_factory.mktemp('data') / 'tiny.zip'), labels)


def run_train(*args):
    return CliRunner().invoke(train.main, [str(a) for a in args], catch_exceptions=False)


def steps(n, batch=8):
    return f'--duration={n * batch / 1e6}'


def only_run_dir(outdir):
    (name,) = os.listdir(outdir)
    return os.path.join(outdir, name)


def final_state(run_dir):
    names = sorted(n for n in os.listdir(run_dir) if n.startswith('training-state-'))
    return torch.load(os.path.join(run_dir, names[-1]), map_location='cpu', weights_only=True)


def _random_net(cls, **kwargs):
    torch.manual_seed(0)
    net = cls(**SMALL_NET, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()

# ----------------------------------------------------------------------------
# The FDM code's numbers.


@pytest.mark.parametrize('name,cls,multiplier', [
    ('fdm_edm_m2', networks.FDM_EDMPrecond, 2.0), ('fdm_edm_m1', networks.FDM_EDMPrecond, 1.0),
    ('fdm_vp_m2', networks.FDM_VPPrecond, 2.0), ('fdm_vp_m1', networks.FDM_VPPrecond, 1.0),
    ('fdm_ve', networks.FDM_VEPrecond, 2.0),   # VE-FDM ignores the multiplier, as the FDM code does.
])
def test_input_factor_matches_the_fdm_code(fdm_values, name, cls, multiplier):
    with torch.device('meta'):
        net = cls(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1], fdm_multiplier=multiplier)
    sigma = torch.tensor(fdm_values['sigmas'], dtype=torch.float32).reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = net.scalings(sigma)
    expected = torch.tensor(fdm_values['c_in'][name], dtype=torch.float64)
    torch.testing.assert_close(c_in.flatten().double(), expected, rtol=1e-6, atol=0)
    # The other scalings are the baseline's.
    kind = name.split('_m')[0]
    base = dict(fdm_edm=networks.EDMPrecond, fdm_vp=networks.VPPrecond, fdm_ve=networks.VEPrecond)[kind]
    with torch.device('meta'):
        baseline = base(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=8, channel_mult=[1])
    for ours, theirs in zip((c_skip, c_out, c_noise), [v for i, v in enumerate(baseline.scalings(sigma)) if i != 2]):
        torch.testing.assert_close(torch.as_tensor(ours, dtype=torch.float32).expand(14, 1, 1, 1),
                                   torch.as_tensor(theirs, dtype=torch.float32).expand(14, 1, 1, 1))
    ranges = dict(fdm_edm=(0.002, 80.0), fdm_vp=(0.0009765625, pytest.approx(152.167, rel=1e-6)), fdm_ve=(0.02, 100))
    assert (net.sigma_min, net.sigma_max) == ranges[kind]


@pytest.mark.parametrize('warmup_ite', ['200', '400'])
def test_warmup_caps_match_the_fdm_code(fdm_values, warmup_ite):
    expected = fdm_values['warmup_cap'][warmup_ite]
    caps = []
    while fdm_warmup_cap(len(caps), float(warmup_ite)) is not None:
        caps.append(fdm_warmup_cap(len(caps), float(warmup_ite)))
    assert len(caps) == len(expected)        # The cap is removed (not held at 500) once it reaches 500.
    np.testing.assert_allclose(caps, expected, rtol=1e-6)
    assert fdm_warmup_cap(10 ** 6, float(warmup_ite)) is None and fdm_warmup_cap(0, None) is None


@pytest.mark.parametrize('loss_cls', [EDMLoss, VPLoss, VELoss])
def test_warmup_clamps_the_weight_at_the_current_optimizer_step(loss_cls):
    loss = loss_cls(warmup_ite=200)
    weight = torch.tensor([0.5, 6.0, 60.0, 6000.0])
    for step, cap in ((0, 5.0), (100, 50.0), (199, 5 * 100 ** (199 / 200))):
        loss.set_step(step)
        torch.testing.assert_close(loss.capped_weight(weight), weight.clamp(max=cap))
    loss.set_step(201)
    assert torch.equal(loss.capped_weight(weight), weight)
    assert torch.equal(loss_cls().capped_weight(weight), weight)

# ----------------------------------------------------------------------------
# Training.


def _loss_of(net, loss_kwargs, data_path):
    ds = ImageFolderDataset(data_path, use_labels=True)
    images = torch.tensor(np.stack([ds[i][0] for i in range(len(ds))])).float() / 127.5 - 1
    labels = torch.tensor(np.stack([ds[i][1] for i in range(len(ds))]))
    loss = dnnlib.construct_class_by_name(**{k: v for k, v in loss_kwargs.items() if k != 'warmup_ite'})
    torch.manual_seed(123)
    with torch.no_grad():
        return float(sum(loss(net, images, labels).mean() for _ in range(8)) / 8)


def loss_before_after(run_dir, data_path):
    """The run's loss (without warm-up) at fixed noise for its initial network and its final EMA."""
    with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
        opts = json.load(f)
    nets = []
    for state in (None, final_state(run_dir)['ema']):
        torch.manual_seed(opts['seed'])
        net = dnnlib.construct_class_by_name(**opts['network_kwargs'], img_resolution=8, img_channels=1, label_dim=4)
        if state is not None:
            net.load_state_dict(state)
        nets.append(net.eval())
    return [_loss_of(net, opts['loss_kwargs'], data_path) for net in nets]


@pytest.mark.parametrize('precond', ['fdm_edm', 'fdm_vp', 'fdm_ve'])
def test_fdm_training_lowers_the_loss(data, tmp_path, precond):
    res = run_train(f'--outdir={tmp_path}', f'--data={data}', '--cond=1', *TINY, f'--precond={precond}',
                    '--warmup_ite=20', steps(40), '--snap=1000', '--dump=1000')
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
        opts = json.load(f)
    assert opts['network_kwargs']['fdm_multiplier'] == 2.0 and opts['loss_kwargs']['warmup_ite'] == 20
    snapshot = persistence.load_network(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    assert type(snapshot['ema']).__name__ == f'FDM_{precond[4:].upper()}Precond'
    before, after = loss_before_after(run_dir, data)
    assert after < 0.7 * before, (before, after)    # Measured: edm 1.66 -> 0.92, vp 1.01 -> 0.20, ve 1.01 -> 0.31.


def test_resume_inside_the_warmup_equals_an_uninterrupted_run(data, tmp_path):
    common = [f'--data={data}', '--cond=1', *TINY, '--precond=fdm_edm', '--warmup_ite=6', '--lr=2e-3', '--tick=1',
              '--snap=1', '--dump=1']
    assert run_train(f'--outdir={tmp_path / "full"}', *common, steps(6)).exit_code == 0
    assert run_train(f'--outdir={tmp_path / "part"}', *common, steps(3)).exit_code == 0
    state_file = os.path.join(only_run_dir(tmp_path / 'part'), 'training-state-000000.pt')
    res = run_train(f'--outdir={tmp_path / "part"}', *common, steps(6), f'--resume={state_file}')
    assert res.exit_code == 0, res.output
    full = final_state(only_run_dir(tmp_path / 'full'))
    resumed = final_state(os.path.join(tmp_path / 'part', sorted(os.listdir(tmp_path / 'part'))[-1]))
    assert full['cur_step'] == resumed['cur_step'] == 6
    for name, tensor in full['net'].items():
        torch.testing.assert_close(resumed['net'][name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    # The warm-up was active: without it the same run ends elsewhere.
    plain_args = [a for a in common if 'warmup' not in a]
    assert run_train(f'--outdir={tmp_path / "plain"}', *plain_args, steps(6)).exit_code == 0
    plain = final_state(only_run_dir(tmp_path / 'plain'))
    assert max(float((plain['net'][k] - full['net'][k]).abs().max()) for k in full['net']) > 1e-4


def test_warmup_does_not_depend_on_accumulation_rounds(data, tmp_path):
    # The FDM code counts loss calls (one per accumulation round); the count here is of optimizer steps.
    common = [f'--data={data}', '--cond=1', *TINY, '--precond=fdm_edm', '--warmup_ite=4', '--per-sample-rng=1',
              steps(3)]
    assert run_train(f'--outdir={tmp_path / "one"}', *common).exit_code == 0
    assert run_train(f'--outdir={tmp_path / "two"}', *common, '--batch-gpu=4').exit_code == 0
    one, two = final_state(only_run_dir(tmp_path / 'one')), final_state(only_run_dir(tmp_path / 'two'))
    for name, tensor in one['net'].items():   # Adam's steps are about lr = 5e-3; round-off differences ~4e-6.
        torch.testing.assert_close(two['net'][name], tensor, rtol=1e-5, atol=2e-5, msg=name)


PUBLISHED = [   # commands.md (FDM), with the dataset replaced by the tiny one.
    ('--cond=1 --arch=ddpmpp --precond=fdm_edm --warmup_ite=200', 2.0),
    ('--cond=1 --arch=ddpmpp --cres=1,2,2,2 --precond=fdm_vp --warmup_ite=400', 2.0),
    ('--cond=1 --arch=ncsnpp --cres=1,2,2,2 --precond=fdm_ve --warmup_ite=400', 2.0),
    ('--cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 --dropout=0.05 --augment=0.15 --precond=fdm_edm '
     '--warmup_ite=800 --fdm_multipler=1', 1.0),
]


@pytest.mark.parametrize('options,multiplier', PUBLISHED)
def test_published_fdm_commands_validate(data, tmp_path, options, multiplier):
    res = run_train(f'--outdir={tmp_path}', f'--data={data}', *options.split(), '--dry-run')
    assert res.exit_code == 0, res.output
    assert f'"fdm_multiplier": {multiplier}' in res.output and os.listdir(tmp_path) == []


def test_fdm_multiplier_needs_an_fdm_preconditioner(data, tmp_path):
    res = CliRunner().invoke(train.main, [f'--outdir={tmp_path}', f'--data={data}', '--precond=vp',
                                          '--fdm_multiplier=1'])
    assert 'applies to the FDM preconditioners' in error_line(res)

# ----------------------------------------------------------------------------
# Checkpoints in the FDM code's layout, sampled by every solver.


def fdm_checkpoint(path, cls=networks.FDM_EDMPrecond, monkeypatch=None):
    """A snapshot as the FDM code writes it: EDM's layout, the FDM class names and arguments, the loss with its
    call counter; the embedded source would print if it were executed."""
    net = _random_net(cls, fdm_multiplier=2.0)
    loss = EDMLoss(warmup_ite=200.0)
    loss.clamp_cur, loss.clamp_max, loss.warmup_step = 5.0, 500.0, np.float64(np.exp(np.log(100) / 200))
    if monkeypatch is not None:
        monkeypatch.setattr(cls, '_orig_module_src', cls._orig_module_src + '\nprint("EMBEDDED SOURCE RAN")\n')
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=loss, augment_pipe=None, dataset_kwargs=dict(resolution=8)), f)
    return net


def test_official_fdm_checkpoint_loads_by_name_without_running_code(tmp_path, monkeypatch, capfd):
    path = str(tmp_path / 'network-snapshot-000100.pkl')
    net = fdm_checkpoint(path, monkeypatch=monkeypatch)
    data = persistence.load_network(path)
    assert 'EMBEDDED SOURCE RAN' not in capfd.readouterr().out
    ema = data['ema']
    assert type(ema) is networks.FDM_EDMPrecond and ema.fdm_multiplier == 2.0
    assert data['loss_fn'].warmup_ite == 200.0 and data['loss_fn'].clamp_cur == 5.0
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(ema(x, sigma), net(x, sigma), rtol=0, atol=0)


def test_fdm_checkpoint_samples_with_every_solver():
    net = analytic.CountingNet(_random_net(networks.FDM_VEPrecond, fdm_multiplier=2.0))
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for solver in samplers.solver_names(needs='denoiser'):
            net.calls = 0
            num_steps = 5 if solver == 'edm' else 6
            x = samplers.sample(net, latents, solver=solver, num_steps=num_steps)
            assert x.shape == latents.shape and bool(torch.isfinite(x).all()), solver
            assert net.calls == samplers.solver_nfe(solver, num_steps), solver


def test_published_fdm_generate_command(tmp_path, monkeypatch):
    path = str(tmp_path / 'network-snapshot-000100.pkl')
    fdm_checkpoint(path)
    for solver in ([], ['--solver=dpmpp_singlestep', '--num_steps=6']):
        out = tmp_path / ('edm' if not solver else 'dpm')
        res = CliRunner().invoke(generate.main, [f'--outdir={out}', '--seeds=0-3', '--subdirs', f'--network={path}',
                                                 '--steps=4' if not solver else '--batch=2', *solver])
        assert res.exit_code == 0, res.output
        assert 'NFE = 7' in res.output if not solver else 'NFE = 6' in res.output
        assert sorted(os.listdir(out / '000000')) == [f'{s:06d}.png' for s in range(4)]

# ----------------------------------------------------------------------------
# Singlestep DPM-Solver++ (Lu et al. 2022b) with FDM's settings.


def test_singlestep_orders_and_grid():
    # NFE 17 = 16 evaluations in orders 3,3,3,3,3,1 (Lu et al. 2022a, DPM-Solver-fast), then the denoising call.
    assert singlestep_orders(16) == [3, 3, 3, 3, 3, 1]
    assert singlestep_orders(15) == [3, 3, 3, 3, 2, 1] and singlestep_orders(17) == [3, 3, 3, 3, 3, 2]
    assert singlestep_orders(5, max_order=2) == [2, 2, 1]
    t = singlestep_schedule(17, 0.002, 80).double()
    lam = -t.log()
    assert len(t) == 17 and float(t[0]) == pytest.approx(80) and float(t[-1]) == pytest.approx(0.002)
    outer = lam[[0, 3, 6, 9, 12, 15, 16]]   # Outer steps uniform in lambda, each split evenly by its order.
    torch.testing.assert_close(outer.diff(), torch.full([6], float(lam[-1] - lam[0]) / 6, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(lam[:16].diff()[:15], torch.full([15], float(outer.diff()[0]) / 3,
                                                                  dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize('num_steps,options', [(2, {}), (5, {}), (17, {}), (18, {}), (9, dict(max_order=2)),
                                               (9, dict(denoise=False)), (7, dict(max_order=1))])
def test_singlestep_nfe_equals_num_steps(num_steps, options):
    net = analytic.CountingNet(analytic.order_study_problem()[0])
    samplers.sample(net, analytic.order_study_problem()[1], solver='dpmpp_singlestep', num_steps=num_steps, **options)
    expected = num_steps - (0 if options.get('denoise', True) else 1)
    assert net.calls == expected == samplers.solver_nfe('dpmpp_singlestep', num_steps, **options)


def test_singlestep_converges_at_third_order():
    net, z = analytic.order_study_problem()
    exact = net(net.exact_solution(z * 80, 80.0, 0.002), 0.002)   # The ODE solution, then the final denoising.
    ns = [96, 192, 384, 768]   # n - 1 = 2 mod 3: third-order steps and one second-order step.
    errs = []
    for n in ns:
        x = samplers.sample(net, z, solver='dpmpp_singlestep', num_steps=n)
        errs.append(float(((x - exact).reshape(4, -1).norm(dim=1) / exact.reshape(4, -1).norm(dim=1)).max()))
    order = np.polyfit(np.log(1 / np.asarray(ns, dtype=np.float64)), np.log(errs), 1)[0]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert 2.6 < order < 3.3, (order, errs)      # Measured: 2.85 (slopes 2.69, 2.87, 2.94).
    # With max_order=2 the same grid converges at second order.
    errs2 = [float((samplers.sample(net, z, solver='dpmpp_singlestep', num_steps=n + 1, max_order=2) - exact)
                   .norm() / exact.norm()) for n in (96, 192, 384)]
    order2 = np.polyfit(np.log(1 / np.asarray([96, 192, 384], dtype=np.float64)), np.log(errs2), 1)[0]
    assert 1.7 < order2 < 2.3, (order2, errs2)


def test_singlestep_does_not_clip_sigma_to_the_network():
    # VE-FDM's range is [0.02, 100]; FDM's DPM-Solver++ still evaluates down to sigma_min = 0.002.
    seen = []

    class Probe(analytic.Gaussian):
        def __call__(self, x, sigma, class_labels=None, **kwargs):
            seen.append(float(torch.as_tensor(sigma).min()))
            return super().__call__(x, sigma, class_labels, **kwargs)
    net = Probe(torch.zeros(1, 2, 2), 0.25, sigma_min=0.02, sigma_max=100)
    samplers.sample(net, torch.randn(1, 1, 2, 2), solver='dpmpp_singlestep', num_steps=6)
    assert min(seen) == pytest.approx(0.002) and max(seen) == pytest.approx(80)
    seen.clear()
    samplers.sample(net, torch.randn(1, 1, 2, 2), solver='dpmpp', num_steps=6, denoise_to_zero=True)
    assert min(seen) == pytest.approx(0.02)       # The other solvers clip, as EDM does.
