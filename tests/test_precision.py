"""Reduced precision and fast paths (torch_utils/precision.py): accuracy of autocast against float32 for every
network family and preconditioner, the sampler's own precision, SDPA routing, channels_last, fused Adam, compile,
bf16 training, one-line refusals, and the memory of loading and sampling (measured in subprocesses)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import samplers
from conftest import ROOT, error_line
from samplers import selection
from samplers.analytic import GaussianMixture
from torch_utils import misc, persistence
from torch_utils import precision as fast
from training import cld, config, networks, training_loop
from training.demo_data import write_dataset

FAMILIES = dict(
    ddpmpp=dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                dropout=0),
    ncsnpp=dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                dropout=0, embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
                resample_filter=[1, 3, 3, 1]),
    adm=dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
             dropout=0),
)
# Every preconditioner (also those added later): the concrete classes named *Precond of the training package.
PRECONDS = sorted(name for module in (networks, cld) for name, cls in vars(module).items()
                  if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and name.endswith('Precond')
                  and not name.startswith('_'))
SIGMAS = [0.02, 0.5, 2.0, 20.0, 80.0]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_net(precond='EDMPrecond', family='ddpmpp', seed=0, device='cpu'):
    """A small network with random weights everywhere (zero-initialised output layers would make F trivially 0)."""
    torch.manual_seed(seed)
    cls = getattr(networks, precond, None) or getattr(cld, precond)
    net = cls(img_resolution=8, img_channels=2, label_dim=3, **FAMILIES[family])
    misc.randomize_parameters(net, torch.Generator().manual_seed(seed + 1))
    return net.eval().requires_grad_(False).to(device)


def noisy_inputs(device='cpu', seed=0, net=None):
    """Noisy images at noise levels 0.02 ... 80, or for CLD (Dockhorn et al. 2022) states (x, v) at times
    0.001 ... 1 from the process's own perturbation."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(len(SIGMAS), 2, 8, 8, generator=g)
    labels = torch.eye(3)[torch.arange(len(SIGMAS)) % 3]
    if isinstance(net, cld.CLDPrecond):
        t = torch.tensor([0.001, 0.01, 0.1, 0.5, 1.0])
        x = net.cld.perturb(y, t, torch.randn(len(SIGMAS), 4, 8, 8, generator=g))
        return x.to(device), t.to(device), labels.to(device)
    sigma = torch.tensor(SIGMAS)
    x = y + sigma.reshape(-1, 1, 1, 1) * torch.randn(y.shape, generator=g)
    return x.to(device), sigma.to(device), labels.to(device)


def per_call_error(net, precision, device='cpu'):
    """Largest relative L2 error of the network's output over calls at noise levels 0.02 ... 80 (times for CLD)."""
    x, sigma, labels = noisy_inputs(device, net=net)
    with torch.no_grad():
        exact = net(x, sigma, labels)
        reduced = fast.wrap(net, precision, device)(x, sigma, labels)
    assert reduced.dtype == torch.float32  # D keeps the preconditioner's precision.
    return max(float((r - e).norm() / e.norm()) for r, e in zip(reduced, exact))

# ----------------------------------------------------------------------------
# Accuracy of autocast.


@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('precond', PRECONDS)
def test_bf16_per_call_error(precond, family):
    err = per_call_error(small_net(precond, family), 'bf16')
    assert 1e-4 < err <= 2e-2, err  # Above 1e-4: the network really ran in bf16.


@pytest.mark.skipif(not torch.cuda.is_available(), reason='fp16 autocast needs CUDA')
@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('precond', PRECONDS)
def test_fp16_per_call_error_cuda(precond, family):
    err = per_call_error(small_net(precond, family, device='cuda'), 'fp16', device='cuda')
    assert 1e-5 < err <= 5e-3, err


def test_autocast_replaces_the_fp16_rule():
    net = small_net(family='adm')
    net.use_fp16 = True  # EDM's own fp16 path: off under autocast (and on the CPU anyway); D stays float32.
    x, sigma, labels = noisy_inputs()
    with torch.no_grad(), fast.autocast('bf16', 'cpu'):
        assert net(x, sigma, labels).dtype == torch.float32


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # torch's own jvp decompositions (itotaylor)
@pytest.mark.parametrize('solver', [s for s in samplers.solver_names() if selection.solver_family(s) == 'denoiser'])
def test_solver_arithmetic_keeps_its_precision(solver):
    # A float64 denoiser is untouched by autocast, so any change would come from the solver's own arithmetic
    # (UniPC's einsum, DEIS's tables) running under autocast.
    net = GaussianMixture(mu=torch.tensor([[0.5] * 8, [-1.0] * 8]).reshape(2, 2, 2, 2), s2=[0.1, 0.2], w=[0.3, 0.7])
    latents = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))

    def run(**kwargs):
        g = torch.Generator().manual_seed(1)  # The same noise for the stochastic solvers.
        return samplers.sample(net, latents, solver=solver, num_steps=6, **kwargs,
                               randn_like=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype))

    seen = []
    exact = run()
    reduced = run(precision='bf16', callback=lambda r: seen.append(torch.is_autocast_enabled('cpu')))
    assert torch.equal(exact, reduced)
    assert seen and not any(seen)

# ----------------------------------------------------------------------------
# Fast paths that run on the CPU: agreement with the plain path.


def test_sdpa_routing_and_agreement(monkeypatch):
    net = small_net(family='adm')
    x, sigma, labels = noisy_inputs()
    with torch.no_grad():
        fused = net(x, sigma, labels)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    blocks = sum(1 for m in net.modules() if getattr(m, 'num_heads', 0))
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), fused) and len(calls) == blocks == 4
    monkeypatch.setattr(networks, '_has_tangent', lambda *t: True)
    with torch.no_grad():
        plain = net(x, sigma, labels)
    assert len(calls) == blocks  # The plain path did not call it.
    assert (plain - fused).abs().max() <= 1e-5 * fused.abs().max()


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # torch's own jvp decompositions, on first use
def test_forward_ad_takes_the_plain_path(monkeypatch):
    net = small_net(family='ddpmpp')
    x, sigma, labels = noisy_inputs()

    def refuse(*args, **kwargs):
        raise NotImplementedError('no forward-mode AD rule')  # What the fused CPU kernel does under jvp.

    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', refuse)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    _, jvp = torch.func.jvp(lambda x: net(x, sigma, labels), (x,), (v,))
    with torch.no_grad():
        monkeypatch.setattr(networks, '_has_tangent', lambda *t: True)
        fd = (net(x + 1e-2 * v, sigma, labels) - net(x - 1e-2 * v, sigma, labels)) / 2e-2
    assert (jvp - fd).abs().max() <= 1e-2 * fd.abs().max()


def test_channels_last_matches_contiguous():
    net = small_net(family='ncsnpp')
    x, sigma, labels = noisy_inputs()
    with torch.no_grad():
        plain = net(x, sigma, labels)
        wrapped = fast.wrap(net, 'fp32', 'cpu', channels_last=True)
        out = wrapped(x, sigma, labels)
    assert net.model.enc['8x8_conv'].weight.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() and (out - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert wrapped.sigma_max == net.sigma_max and fast.unwrap(wrapped) is net


def test_wrap_is_identity_for_the_default_path():
    net = small_net()
    assert fast.wrap(net, 'fp32', 'cpu') is net and fast.wrap(net, 'fp32') is net


def test_fused_adam_matches_the_loop():
    assert fast.adam_kwargs('cpu') == dict(fused=True)  # torch >= 2.4 has a fused CPU Adam.
    results = []
    for kwargs in (dict(foreach=False), fast.adam_kwargs('cpu')):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, **kwargs)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(8, 16, generator=g)).square().mean().backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (results[0] - results[1]).abs().max() <= 1e-6 * results[0].abs().max()
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
    assert (results[0] - torch.cat([p.detach().flatten() for p in start.parameters()])).abs().max() > 1e-3


def test_set_tf32_switches_both_backends():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        fast.set_tf32(True)
        assert (matmul.fp32_precision, conv.fp32_precision) == ('tf32', 'tf32')
        fast.set_tf32(False)
        assert (matmul.fp32_precision, conv.fp32_precision) == ('ieee', 'ieee')
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_no_numpy_scalars_on_modules():
    # torch.compile's guards cannot handle numpy scalars stored on modules (SongUNet's skip_scale was one).
    for family in FAMILIES:
        with torch.device('meta'):
            net = networks.EDMPrecond(img_resolution=8, img_channels=2, **FAMILIES[family])
        for name, module in net.named_modules():
            bad = [k for k, v in vars(module).items() if isinstance(v, np.generic)]
            assert not bad, (family, name, bad)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore')
def test_compile_matches_eager():
    net = small_net(family='ddpmpp')
    x, sigma, labels = noisy_inputs()
    with torch.no_grad():
        eager = net(x, sigma, labels)
        compiled = fast.wrap(net, 'fp32', 'cpu', compile=True)(x, sigma, labels)
    assert (compiled - eager).abs().max() <= 1e-5 * eager.abs().max()

# ----------------------------------------------------------------------------
# Refusals: one line.


def test_check_refuses_and_warns(monkeypatch):
    with pytest.raises(fast.PrecisionError, match='fp16 needs CUDA'):
        fast.check('fp16', 'cpu')
    with pytest.raises(fast.PrecisionError, match='unknown precision'):
        fast.check('fp8', 'cpu')
    assert fast.check('fp32', 'cpu') is None
    monkeypatch.setattr(fast, 'cpu_has_native_bf16', lambda: False)
    assert 'slower' in fast.check('bf16', 'cpu')
    monkeypatch.setattr(fast, 'cpu_has_native_bf16', lambda: True)
    assert fast.check('bf16', 'cpu') is None


def test_scripts_refuse_fp16_on_the_cpu(tmp_path):
    import example
    import generate
    import train
    runner = CliRunner()
    res = runner.invoke(generate.main, ['--network=unused.pkl', f'--outdir={tmp_path}', '--device=cpu',
                                        '--precision=fp16'])
    assert 'fp16 needs CUDA' in error_line(res)
    res = runner.invoke(example.main, ['--device=cpu', '--precision=fp16', f'--outdir={tmp_path}'])
    assert 'fp16 needs CUDA' in error_line(res)
    res = runner.invoke(train.main, [f'--outdir={tmp_path}', '--data=unused.zip', '--device=cpu', '--precision=fp16'])
    assert 'fp16 needs CUDA' in error_line(res)
    res = runner.invoke(train.main, [f'--outdir={tmp_path}', '--data=unused.zip', '--device=cpu', '--fp16=1',
                                     '--precision=bf16'])
    assert '--fp16=1' in error_line(res) and 'use one of them' in error_line(res)

# ----------------------------------------------------------------------------
# Training in bf16.


def training_losses(data, run_dir, precision, steps=40):
    c = config.build(data=data, cond=True, arch='ddpmpp', cbase=8, cres=[1], batch=8, workers=0, augment=0,
                     dropout=0, lr=2e-3, lr_rampup=0, ema=1e-4, tick=1e-9, seed=1, precision=precision)
    config.check_dataset(c)
    c.update(snapshot_ticks=None, state_dump_ticks=None, run_dir=str(run_dir), device='cpu', max_steps=steps)
    os.makedirs(run_dir)
    training_loop.training_loop(**c)
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return np.array([json.loads(line)['Loss/loss']['mean'] for line in f])


def test_bf16_training_follows_fp32(tmp_path):
    rnd = np.random.RandomState(0)
    labels = np.arange(32) % 4
    images = rnd.randint(0, 40, size=[32, 8, 8])
    for img, k in zip(images, labels):
        img[2 * k:2 * k + 2, 1:7] = 220
    data = write_dataset(images.astype(np.uint8), str(tmp_path / 'tiny.zip'), labels)
    fp32 = training_losses(data, tmp_path / 'fp32', 'fp32')
    bf16 = training_losses(data, tmp_path / 'bf16', 'bf16')
    assert len(fp32) == len(bf16) == 40
    assert fp32[-10:].mean() < 0.7 * fp32[:5].mean()  # It learns.
    assert not np.array_equal(fp32, bf16)  # bf16 really ran.
    assert abs(bf16[-10:].mean() - fp32[-10:].mean()) <= 0.1 * fp32[-10:].mean()

# ----------------------------------------------------------------------------
# Memory, measured in fresh processes (resident set size, Linux).

# The peak is the kernel's high-water mark of the process's own memory (VmHWM). Not ru_maxrss: on Linux a spawned
# process starts that one from the RSS of the process that started it.
PEAK = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024"
MEMORY_PROBE = textwrap.dedent('''
    import json, sys
    import psutil
    sys.path.insert(0, {root!r})
    import generate, torch  # Everything a generate.py run imports.
    from torch_utils import persistence
    before = psutil.Process().memory_info().rss
    net = persistence.load_network({path!r})['ema']
    peak = {peak}
    weights = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    print(json.dumps(dict(rise=peak - before, weights=weights, compiler='torch._dynamo' in sys.modules)))
''')


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/status')
def test_loading_raises_peak_memory_by_one_copy(tmp_path):
    with torch.device('meta'):
        net = networks.EDMPrecond(img_resolution=32, img_channels=3, model_type='SongUNet', model_channels=96,
                                  channel_mult=[2, 2], num_blocks=2)
    net = net.to_empty(device='cpu')  # About 16M parameters, 64 MB: well above the noise of a process's RSS.
    for p in net.parameters():
        p.data.normal_(0, 0.01)
    path = str(tmp_path / 'net.pkl')
    persistence.save_pickle(dict(ema=net), path)
    del net
    code = MEMORY_PROBE.format(root=ROOT, path=path, peak=PEAK)
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m['weights'] > 50e6
    assert m['rise'] <= 1.25 * m['weights'] + 16 * 2 ** 20, m
    assert not m['compiler']  # Shape rules on the meta device would import it: about 70 MiB resident.


def _generate_peak(tmp_path, seeds):
    code = ('import runpy, sys; sys.argv = sys.argv[1:]\n'
            'try:\n    runpy.run_path("generate.py", run_name="__main__")\n'
            f'finally:\n    print("PEAK", {PEAK})\n')
    args = ['generate.py', f'--network={os.path.join(ROOT, "checkpoints", "edm-digits-16x16-cond-ddpmpp.pkl")}',
            f'--outdir={tmp_path / seeds}', f'--seeds={seeds}', '--batch=8', '--steps=2', '--device=cpu']
    res = subprocess.run([sys.executable, '-c', code] + args, capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split('PEAK')[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/status')
def test_generate_peak_memory_is_flat_in_the_number_of_images(tmp_path):
    few, many = _generate_peak(tmp_path, '0-7'), _generate_peak(tmp_path, '0-95')
    assert len(os.listdir(tmp_path / '0-95')) == 96
    # 12 batches instead of 1: a kept graph or activations would add several MiB per batch; allocator noise between
    # two processes was measured up to 10 MiB on a loaded machine.
    assert many <= few + 24 * 2 ** 20, (few / 2 ** 20, many / 2 ** 20)
