"""PFGM++ (Xu et al. 2023): the perturbation kernel and the prior against their analytic radial law, the stable
target field against a brute-force posterior mean, training, the D -> infinity limit, PFGM++ checkpoints read without
running their code, checkpoint and robustness sweeps, and FID tables of a run directory."""
import json
import os
import pickle
import shutil
import tempfile

import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import fid
import generate
import samplers
import train
from conftest import error_line, png_digests
from samplers import generation, pfgmpp, sweeps
from test_fdm import TINY, data, loss_before_after, only_run_dir, run_train, steps  # noqa: F401

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors (tests/conftest.py)
from torch_utils import persistence
from torch_utils.misc import StackedRandomGenerator
from training import networks
from training.loss import EDMLoss, VELoss

N = 3 * 8 * 8
SMALL = dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1, 2],
             num_blocks=1, attn_resolutions=[4], dropout=0)


def small_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = networks.EDMPrecond(**SMALL, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def run_generate(*args):
    return CliRunner().invoke(generate.main, [str(a) for a in args])

# ----------------------------------------------------------------------------
# Perturbation kernel and prior: ||x - y||^2 / r^2 ~ Beta'(N/2, D/2) with r = sigma sqrt(D) (Xu et al. 2023).


def radial_p_values(radii, scale, D):
    """KS p-values of the radii against the PFGM++ radial law at r = scale sqrt(D) and against the Gaussian's."""
    radii = np.asarray(radii, dtype=np.float64)
    kernel = scipy.stats.kstest((radii / scale) ** 2 / D, scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue
    gaussian = scipy.stats.kstest(radii / scale, scipy.stats.chi(N).cdf).pvalue
    return kernel, gaussian


@pytest.mark.parametrize('D', [8, 128, 10 ** 7])
def test_kernel_follows_the_radial_law(D):
    torch.manual_seed(0)
    y, sigma = torch.zeros(20000, 3, 8, 8), torch.full([20000, 1, 1, 1], 0.7)
    n = EDMLoss(pfgmpp=True, D=D).noise(y, sigma, torch)
    kernel, gaussian = radial_p_values(n.double().reshape(len(n), -1).norm(dim=1), 0.7, D)
    assert kernel > 0.01, kernel     # Measured: 0.75, 0.13, 0.95.
    if D < 10 ** 7:
        assert gaussian < 1e-6       # The test tells the kernel from the Gaussian (measured p = 0 and 7e-275).
    else:
        assert gaussian > 0.01       # D -> infinity: indistinguishable from the Gaussian (measured 0.95).
    # The direction is uniform: the mean unit vector vanishes (|mean| ~ 1 / sqrt(20000)).
    assert float((n.reshape(len(n), -1) / n.reshape(len(n), -1).norm(dim=1, keepdim=True)).mean(0).norm()) < 0.15


@pytest.mark.parametrize('D', [8, 128, 10 ** 7])
def test_prior_at_r_max_follows_the_radial_law(D):
    seeds = list(range(20000))
    rnd = StackedRandomGenerator('cpu', seeds)
    latents = rnd.randn([len(seeds), 3, 8, 8])
    x = pfgmpp.student_t_prior(D)(latents, 80.0, rnd)
    kernel, gaussian = radial_p_values(x.double().reshape(len(x), -1).norm(dim=1), 80.0, D)
    assert kernel > 0.01, kernel
    assert (gaussian < 1e-6) if D < 10 ** 7 else (gaussian > 0.01), gaussian
    # The same seed gives the same start state alone or in a batch, and the latents are EDM's.
    alone = StackedRandomGenerator('cpu', [7])
    x7 = pfgmpp.student_t_prior(D)(alone.randn([1, 3, 8, 8]), 80.0, alone)
    torch.testing.assert_close(x7[0], x[7], rtol=0, atol=0)
    cosine = float((x[7] * latents[7]).sum() / (x[7].norm() * latents[7].norm()))
    assert cosine == pytest.approx(1, abs=1e-6)


def test_kernel_draws_after_the_gaussian_and_only_per_sample():
    # Per-sample generators: a sample's noise depends on its own generator only (training with --per-sample-rng).
    loss = EDMLoss(pfgmpp=True, D=64)
    y, sigma = torch.zeros(3, 3, 8, 8), torch.full([3, 1, 1, 1], 2.0)
    batch = loss.noise(y, sigma, StackedRandomGenerator('cpu', [5, 6, 7]))
    single = loss.noise(y[:1], sigma[:1], StackedRandomGenerator('cpu', [6]))
    torch.testing.assert_close(batch[1:2], single, rtol=0, atol=0)
    gauss = EDMLoss().noise(y[:1], sigma[:1], StackedRandomGenerator('cpu', [6]))
    ratio = single / gauss     # One Student-t scale per sample times the same Gaussian draw.
    torch.testing.assert_close(ratio, ratio.flatten()[0].expand_as(ratio))

# ----------------------------------------------------------------------------
# Stable target field: the posterior mean over the reference set.


def brute_force_target(x, sigma, refs, D):
    x, refs = x.reshape(len(x), -1).double().numpy(), refs.reshape(len(refs), -1).double().numpy()
    out = []
    for xb, sb in zip(x, sigma.flatten().double().numpy()):
        d2 = np.array([np.sum((xb - yi) ** 2) for yi in refs])
        if D is None:
            logw = -d2 / (2 * sb ** 2)                                  # p(x | y_i) = N(y_i, sigma^2 I)
        else:
            logw = -(xb.size + D) / 2 * np.log(d2 + sb ** 2 * D)         # p_r(x | y_i) with r = sigma sqrt(D)
        w = np.exp(logw - logw.max())
        out.append((w / w.sum()) @ refs)
    return np.stack(out)


@pytest.mark.parametrize('D', [None, 16, 2048])
def test_stf_targets_are_the_posterior_mean(D):
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(12, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.2, 0.5, 1.0, 3.0], dtype=torch.float64).reshape(-1, 1, 1, 1)
    x = refs[:4] + sigma * torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    loss = EDMLoss(pfgmpp=D is not None, D=D or 128, stf=True, rbatch=12)
    target = loss.stf_target(x, sigma, refs)
    expected = brute_force_target(x, sigma, refs, D)
    np.testing.assert_allclose(target.reshape(4, -1).numpy(), expected, rtol=1e-9, atol=1e-12)
    # Not trivially one reference image: the larger noise levels mix several.
    assert float((target[3] - refs[0]).abs().max()) > 0.05


def test_stf_loss_uses_the_minibatch_and_the_extra_references(monkeypatch):
    seen = {}
    loss = EDMLoss(stf=True, rbatch=6)

    def record(x, sigma, references):
        seen['references'] = references
        return torch.zeros_like(x)
    monkeypatch.setattr(loss, 'stf_target', record)
    images, extra = torch.rand(2, 3, 8, 8), torch.rand(4, 3, 8, 8)
    value = loss(lambda x, sigma, labels, augment_labels=None: torch.ones_like(x), images, reference=extra)
    torch.testing.assert_close(seen['references'], torch.cat([images, extra]))
    assert value.shape == images.shape and loss.reference_size == 6 and EDMLoss().reference_size == 0

# ----------------------------------------------------------------------------
# Training.


@pytest.mark.parametrize('options', [['--pfgmpp=1', '--aug_dim=128'], ['--pfgmpp=1', '--aug_dim=2048'],
                                     ['--stf=1', '--rbatch=32'], ['--pfgmpp=1', '--aug_dim=128', '--stf=1',
                                                                  '--rbatch=32']])
def test_pfgmpp_training_lowers_the_loss(data, tmp_path, options):   # noqa: F811
    res = run_train(f'--outdir={tmp_path}', f'--data={data}', '--cond=1', *TINY, *options, steps(40), '--snap=1000',
                    '--dump=1000')
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    before, after = loss_before_after(run_dir, data)
    assert after < 0.7 * before, (before, after)   # Measured: 1.67 -> 0.84 (D 128), 0.83 (D 2048), 1.66 -> 0.87 (stf).
    snapshot = persistence.load_network(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    if '--pfgmpp=1' in options:
        assert snapshot['ema'].pfgmpp and snapshot['ema'].D == int(options[1].split('=')[1])
        assert snapshot['loss_fn'].D == snapshot['ema'].D


def test_stf_reference_images_reach_the_loss(data, tmp_path):   # noqa: F811
    # rbatch 8 = the minibatch alone; rbatch 32 adds 24 images of a second data stream, which changes the targets.
    common = [f'--data={data}', '--cond=1', *TINY, '--stf=1', steps(3)]
    assert run_train(f'--outdir={tmp_path / "a"}', *common, '--rbatch=8').exit_code == 0
    assert run_train(f'--outdir={tmp_path / "b"}', *common, '--rbatch=32').exit_code == 0
    a, b = (torch.load(os.path.join(only_run_dir(tmp_path / k), 'training-state-000000.pt'), weights_only=True)
            for k in 'ab')
    assert max(float((a['net'][k] - b['net'][k]).abs().max()) for k in a['net']) > 1e-5


def test_stf_run_resumes_exactly(data, tmp_path):   # noqa: F811
    # The reference stream continues from the optimizer step count; the kernel's draws from the saved RNG states.
    common = [f'--data={data}', '--cond=1', *TINY, '--pfgmpp=1', '--aug_dim=64', '--stf=1', '--rbatch=20',
              '--tick=1', '--snap=1', '--dump=1']
    assert run_train(f'--outdir={tmp_path / "full"}', *common, steps(4)).exit_code == 0
    assert run_train(f'--outdir={tmp_path / "part"}', *common, steps(2)).exit_code == 0
    state_file = os.path.join(only_run_dir(tmp_path / 'part'), 'training-state-000000.pt')
    assert run_train(f'--outdir={tmp_path / "part"}', *common, steps(4), f'--resume={state_file}').exit_code == 0
    full = torch.load(os.path.join(only_run_dir(tmp_path / 'full'), 'training-state-000000.pt'), weights_only=True)
    resumed_dir = os.path.join(tmp_path / 'part', sorted(os.listdir(tmp_path / 'part'))[-1])
    resumed = torch.load(os.path.join(resumed_dir, 'training-state-000000.pt'), weights_only=True)
    assert full['cur_step'] == resumed['cur_step'] == 4
    for name, tensor in full['net'].items():
        torch.testing.assert_close(resumed['net'][name], tensor, rtol=1e-6, atol=1e-6, msg=name)


def test_published_pfgmpp_train_command_and_refusals(data, tmp_path):   # noqa: F811
    res = run_train(f'--outdir={tmp_path}', '--name', 'exp_name', f'--data={data}', '--cond=0', '--arch=ncsnpp',
                    '--pfgmpp=1', '--batch', '512', '--aug_dim', '2048', '--dry-run')
    assert res.exit_code == 0, res.output
    assert '"pfgmpp": true' in res.output and '"D": 2048' in res.output
    res = run_train(f'--outdir={tmp_path}', f'--data={data}', '--pfgmpp=0', '--aug_dim=128', '--dry-run')
    assert res.exit_code == 0 and '"pfgmpp"' not in res.output
    assert '--aug_dim is used only with --pfgmpp=1' in res.output
    for precond in ('vp', 'fdm_edm'):
        res = CliRunner().invoke(train.main, [f'--outdir={tmp_path}', f'--data={data}', f'--precond={precond}',
                                              '--pfgmpp=1'])
        assert 'supports --precond=ve|edm' in error_line(res)
    assert VELoss(pfgmpp=True, D=32).D == 32

# ----------------------------------------------------------------------------
# Generation: D -> infinity, the snapshot's D.


def test_large_D_generation_equals_edm():
    net, seeds = small_net(), list(range(6))

    def generate_with(prior):
        latents, labels, rnd = generation.draw_inputs(net, seeds, 'cpu')
        with torch.no_grad():
            return samplers.sample(net, latents, labels, solver='edm', num_steps=10, generator=rnd, prior=prior)
    edm = generate_with(None)
    assert float((generate_with(pfgmpp.student_t_prior(10 ** 7)) - edm).abs().max()) < 1e-3   # Measured: 7e-4.
    assert float((generate_with(pfgmpp.student_t_prior(128)) - edm).abs().max()) > 1e-2


@pytest.fixture
def nets(tmp_path):
    paths = dict(pfgmpp=str(tmp_path / 'pfgmpp.pkl'), edm=str(tmp_path / 'edm.pkl'))
    for name, kwargs in (('pfgmpp', dict(pfgmpp=True, D=128)), ('edm', {})):
        with open(paths[name], 'wb') as f:
            pickle.dump(dict(ema=small_net(**kwargs)), f)
    return paths


def test_generate_takes_D_from_the_snapshot(nets, tmp_path):
    common = ['--seeds=0-1', '--steps=3']
    res = run_generate(f'--outdir={tmp_path / "a"}', f'--network={nets["pfgmpp"]}', *common)
    assert res.exit_code == 0 and 'PFGM++ prior with D = 128' in res.output, res.output
    res = run_generate(f'--outdir={tmp_path / "b"}', f'--network={nets["pfgmpp"]}', '--pfgmpp=1', '--aug_dim=128',
                       *common)
    assert res.exit_code == 0 and png_digests(tmp_path / 'a') == png_digests(tmp_path / 'b')
    res = run_generate(f'--outdir={tmp_path / "c"}', f'--network={nets["pfgmpp"]}', '--pfgmpp=0', *common)
    assert res.exit_code == 0 and 'PFGM++' not in res.output
    assert png_digests(tmp_path / 'c') != png_digests(tmp_path / 'a')
    line = error_line(run_generate(f'--outdir={tmp_path / "d"}', f'--network={nets["pfgmpp"]}', '--pfgmpp=1',
                                   '--aug_dim=2048', *common))
    assert 'does not match the network, which was trained with D=128' in line
    line = error_line(run_generate(f'--outdir={tmp_path / "e"}', f'--network={nets["edm"]}', '--pfgmpp=1', *common))
    assert 'records no augmented dimension' in line
    res = run_generate(f'--outdir={tmp_path / "f"}', f'--network={nets["edm"]}', '--pfgmpp=1', '--aug_dim=64',
                       *common)
    assert res.exit_code == 0 and 'D = 64' in res.output

# ----------------------------------------------------------------------------
# PFGM++ checkpoints and checkpoint sweeps.


def write_checkpoint(run_dir, kimg, fmt, seed=0):
    """A checkpoint as PFGM++ writes it ('pt': torch.save of net, ema, optimizer_state, step; 'pickle': the older
    training-state-*.pkl) or as this toolkit and EDM do ('snapshot')."""
    net = small_net(seed, pfgmpp=True, D=128)
    if fmt == 'snapshot':
        persistence.save_pickle(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}),
                                os.path.join(run_dir, f'network-snapshot-{kimg:06d}.pkl'))
    elif fmt == 'pickle':
        with open(os.path.join(run_dir, f'training-state-{kimg:06d}.pkl'), 'wb') as f:
            pickle.dump(dict(ema=net), f)
    else:
        optimizer = torch.optim.Adam(net.parameters())
        torch.save(dict(net=net, ema=net, optimizer_state=optimizer.state_dict(), step=kimg * 1000),
                   os.path.join(run_dir, f'training-state-{kimg:06d}.pt'))


def test_pfgmpp_training_state_loads_without_running_its_code(tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    monkeypatch.setattr(networks.EDMPrecond, '_orig_module_src',
                        networks.EDMPrecond._orig_module_src + '\nprint("EMBEDDED SOURCE RAN")\n')
    write_checkpoint(str(run_dir), 100, 'pt')
    monkeypatch.undo()
    path = str(run_dir / 'training-state-000100.pt')
    data = persistence.load_network(path)
    assert sorted(data) == ['ema', 'net', 'optimizer_state', 'step'] and data['ema'].D == 128
    expected = small_net(0, pfgmpp=True, D=128).state_dict()
    for name, tensor in data['ema'].state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    res = run_generate(f'--outdir={run_dir}', '--seeds=0-2', '--steps=3', '--pfgmpp=1', '--aug_dim=128')
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(run_dir / 'ckpt_000100' / '000000')) == ['000000.png', '000001.png', '000002.png']
    assert 'EMBEDDED SOURCE RAN' not in capfd.readouterr().out + res.output
    torch.load(path, weights_only=False)   # The unsafe path would have run it.
    assert 'EMBEDDED SOURCE RAN' in capfd.readouterr().out


def test_own_training_state_is_told_apart(data, tmp_path):   # noqa: F811
    assert run_train(f'--outdir={tmp_path / "run"}', f'--data={data}', '--cond=1', *TINY, steps(1)).exit_code == 0
    state = os.path.join(only_run_dir(tmp_path / 'run'), 'training-state-000000.pt')
    line = error_line(run_generate(f'--outdir={tmp_path / "out"}', f'--network={state}'))
    assert 'weights only (a training state of this toolkit, for --resume)' in line and 'network-snapshot' in line


def test_folder_names():
    assert sweeps.folder_name(100, 49999) == 'ckpt_000100'
    assert sweeps.folder_name(100, 50000) == 'ckpt_2_000100' and sweeps.folder_name(7, 99999) == 'ckpt_2_000007'
    assert sweeps.folder_name(100, 100000) == 'ckpt_3_000100'
    assert sweeps.folder_name(100, 10, ('alpha', 0.0)) == 'ckpt_000100_alpha_0'
    assert sweeps.folder_name(100, 10, ('alpha', 0.1)) == 'ckpt_000100_alpha_0.1'
    assert [info['variant'] for _, info in sweeps.image_folders(_make_dirs(
        ['ckpt_000100', 'ckpt_2_000200_steps_12', 'ckpt_000100_quant_8', 'other', 'ckpt_x']))] == \
        [None, 'quant', 'steps']


def _make_dirs(names):
    root = tempfile.mkdtemp()
    for name in names:
        os.makedirs(os.path.join(root, name))
    return root


@pytest.mark.parametrize('fmt', ['pt', 'pickle', 'snapshot'])
def test_checkpoint_sweep_resumes_where_it_stopped(tmp_path, fmt):
    full, part = tmp_path / 'full', tmp_path / 'part'
    for run_dir in (full, part):
        run_dir.mkdir()
        for i, kimg in enumerate((100, 200, 300)):
            write_checkpoint(str(run_dir), kimg, fmt, seed=i)
        if fmt == 'pt':   # PFGM++ rewrites training-state-000000.pt with the raw network only: skipped.
            torch.save(dict(net=small_net(), optimizer_state={}), run_dir / 'training-state-000000.pt')
    common = ['--seeds=0-5', '--steps=3', '--batch=4', '--pfgmpp=1', '--aug_dim=128'] + \
        (['--use_pickle=1'] if fmt == 'pickle' else [])
    res = run_generate(f'--outdir={full}', *common)
    assert res.exit_code == 0, res.output
    assert ('Skipping' in res.output) == (fmt == 'pt')
    # Killed after the first checkpoint, in the middle of the second one's folder; then restarted.
    assert run_generate(f'--outdir={part}', *common, '--end_ckpt=200').exit_code == 0
    removed = sorted((part / 'ckpt_000200' / '000000').iterdir())[3:]
    for path in removed:
        path.unlink()
    res = run_generate(f'--outdir={part}', *common)
    assert res.exit_code == 0, res.output
    assert 'ckpt_000100: all 6 images present; skipped.' in res.output
    assert 'Generating 3 images to' in res.output and '(3 already there)' in res.output
    folders = sorted(n for n in os.listdir(full) if n.startswith('ckpt_'))
    assert folders == ['ckpt_000100', 'ckpt_000200', 'ckpt_000300']
    assert sorted(n for n in os.listdir(part) if n.startswith('ckpt_')) == folders
    for name in folders:
        assert len(png_digests(full / name)) == 6 and png_digests(part / name) == png_digests(full / name), name
    assert png_digests(full / 'ckpt_000100') != png_digests(full / 'ckpt_000200')
    # --ckpt/--end_ckpt select by kimg.
    assert [k for k, _ in sweeps.checkpoints(str(full), 150, 300, fmt == 'pickle')] == [200, 300]


def test_run_directory_without_checkpoints_fails_with_one_line(tmp_path):
    line = error_line(run_generate(f'--outdir={tmp_path}', '--seeds=0-1'))
    assert 'holds no checkpoint' in line

# ----------------------------------------------------------------------------
# Robustness sweeps.


def test_robustness_sweeps(tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    write_checkpoint(str(run_dir), 100, 'pt')
    common = ['--seeds=0-2', '--steps=4', '--pfgmpp=1']
    assert run_generate(f'--outdir={run_dir}', *common).exit_code == 0
    res = run_generate(f'--outdir={run_dir}', *common, '--alpha=0,0.1', '--steps_sweep=3', '--quant_bits=4,8')
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(run_dir)) == ['ckpt_000100', 'ckpt_000100_alpha_0', 'ckpt_000100_alpha_0.1',
                                           'ckpt_000100_quant_4', 'ckpt_000100_quant_8', 'ckpt_000100_steps_3',
                                           'training-state-000100.pt']
    plain = png_digests(run_dir / 'ckpt_000100')
    assert png_digests(run_dir / 'ckpt_000100_alpha_0') == plain     # alpha = 0 is EDM's Heun sampler.
    for name in ('alpha_0.1', 'steps_3', 'quant_4'):
        assert png_digests(run_dir / f'ckpt_000100_{name}') != plain, name
    # The injected noise is seeded per image: one image per batch gives the same files.
    other = tmp_path / 'other'
    other.mkdir()
    shutil.copy(run_dir / 'training-state-000100.pt', other)
    assert run_generate(f'--outdir={other}', *common, '--alpha=0.1', '--batch=1').exit_code == 0
    assert png_digests(other / 'ckpt_000100_alpha_0.1') == png_digests(run_dir / 'ckpt_000100_alpha_0.1')
    # The step sweep is the sampler with that step count.
    single = tmp_path / 'single'
    single.mkdir()
    shutil.copy(run_dir / 'training-state-000100.pt', single)
    assert run_generate(f'--outdir={single}', '--seeds=0-2', '--steps=3', '--pfgmpp=1').exit_code == 0
    assert png_digests(single / 'ckpt_000100') == png_digests(run_dir / 'ckpt_000100_steps_3')
    line = error_line(run_generate(f'--outdir={run_dir}', '--solver=dpmpp', '--alpha=0.1'))
    assert '--alpha injects noise into EDM\'s deterministic Heun sampler' in line


def test_quantize_weights():
    net = small_net()
    q = sweeps.quantize_weights(net, 4)
    params, quantized = dict(net.named_parameters()), dict(q.named_parameters())
    changed = 0
    for name, p in quantized.items():
        skip = 'weight' not in name or any(k in name for k in ('norm', 'affine', 'map', '32'))
        if skip:
            assert torch.equal(p, params[name]), name
            continue
        assert len(torch.unique(p)) <= 16, name
        step = (params[name].max() - params[name].min()) / 15
        assert float((p - params[name]).detach().abs().max()) <= 0.5 * float(step) * (1 + 1e-5), name
        changed += 1
    assert changed >= 10 and all(torch.equal(a, b) for a, b in zip(net.parameters(), small_net().parameters()))


def test_save_images_writes_the_trajectory_as_a_gif(tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    write_checkpoint(str(run_dir), 100, 'pt')
    res = run_generate(f'--outdir={run_dir}', '--seeds=0-3', '--steps=5', '--pfgmpp=1', '--save_images=1')
    assert res.exit_code == 0, res.output
    import PIL.Image
    with PIL.Image.open(run_dir / 'ckpt_000100-movie.gif') as gif:
        assert gif.n_frames == 6 and gif.size == (16, 16)     # The start state and 5 steps; a 2x2 grid of 8x8.
    assert not (run_dir / 'ckpt_000100').exists()

# ----------------------------------------------------------------------------
# FID of a run directory.


def test_fid_scores_every_checkpoint_folder(tmp_path):
    from test_fid import StandInDetector
    detector = tmp_path / 'detector.pt'
    torch.jit.save(torch.jit.script(StandInDetector()), str(detector))
    ref = tmp_path / 'ref.npz'
    fid.save_reference_stats(str(ref), np.zeros(32), np.eye(32))
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    for kimg in (100, 200):
        write_checkpoint(str(run_dir), kimg, 'pt', seed=kimg)
    common = [f'--ref={ref}', f'--detector={detector}', '--trust-detector', '--device=cpu', '--workers=0', '--num=6']
    res = CliRunner().invoke(fid.main, ['calc', f'--images={run_dir}', *common])
    assert 'no ckpt_* image folders' in error_line(res)
    assert run_generate(f'--outdir={run_dir}', '--seeds=0-5', '--steps=3', '--pfgmpp=1').exit_code == 0
    assert run_generate(f'--outdir={run_dir}', '--seeds=0-5', '--steps=3', '--pfgmpp=1', '--quant_bits=6',
                        '--end_ckpt=100').exit_code == 0
    res = CliRunner().invoke(fid.main, ['calc', f'--images={run_dir}', *common])
    assert res.exit_code == 0, res.output
    with open(run_dir / 'fid.json', encoding='utf-8') as f:
        table = json.load(f)
    assert [r['folder'] for r in table['rows']] == ['ckpt_000100', 'ckpt_000100_quant_6', 'ckpt_000200']
    for row in table['rows']:
        single = CliRunner().invoke(fid.main, ['calc', f'--images={run_dir / row["folder"]}', *common])
        assert single.exit_code == 0 and row['fid'] == pytest.approx(float(single.output.split()[-1]), rel=1e-5)
        assert row['folder'] in res.output
    # A folder with too few images is reported in its row.
    res = CliRunner().invoke(fid.main, ['calc', f'--images={run_dir}', *common[:-1], '--num=7'])
    assert res.exit_code == 0 and 'found 6 images' in res.output
