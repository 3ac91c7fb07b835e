"""Tests for training/networks.py: golden outputs, official state_dict layouts, float64, forward-mode AD, schedules."""

import ast
import functools
import io
import json
import pickle

import numpy as np
import pytest
import torch

from conftest import fixtures_dir
from torch_utils import misc, persistence
from training import networks

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors (tests/conftest.py)

NETWORK_FIXTURES = ['ddpmpp_edm', 'ddpmpp_vp', 'ncsnpp_ve', 'adm_edm', 'adm_iddpm']
PERSISTENT = ['Linear', 'Conv2d', 'GroupNorm', 'UNetBlock', 'PositionalEmbedding', 'FourierEmbedding', 'SongUNet',
              'DhariwalUNet', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond']

# Small configurations that exercise attention, every encoder/decoder type and both U-Nets.
SONG_SMALL = dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                  dropout=0)
NCSN_SMALL = dict(SONG_SMALL, embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
                  resample_filter=[1, 3, 3, 1])
ADM_SMALL = dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                 dropout=0)


@functools.lru_cache(maxsize=None)
def _load_fixture(name):  # Read-only use: callers copy what they change.
    return torch.load(fixtures_dir('edm', f'{name}.pt'), weights_only=True)


def _build_from_config(config):
    kwargs = dict(config)
    return getattr(networks, kwargs.pop('precond'))(**kwargs)


def _randomize(net, seed):
    """Random weights everywhere (zero-initialised output layers would make F trivially 0), drawn in float64."""
    return misc.randomize_parameters(net, torch.Generator().manual_seed(seed), draw_dtype=torch.float64)


def _small_precond(cls, seed=0, img_channels=2, label_dim=3, **kwargs):
    torch.manual_seed(seed)
    net = cls(img_resolution=8, img_channels=img_channels, label_dim=label_dim, **kwargs)
    return _randomize(net, seed + 1).eval()

# ----------------------------------------------------------------------------
# Golden outputs of the reference implementation.


@pytest.mark.parametrize('name', NETWORK_FIXTURES)
def test_fixture_output(name):
    d = _load_fixture(name)
    net = _build_from_config(d['config'])
    net.load_state_dict(d['state_dict'], strict=True)
    net.eval()
    with torch.no_grad():
        out = net(d['x'], d['sigma'], d['class_labels'], **d['model_kwargs'])
    expected = d['expected']
    assert out.dtype == torch.float32 and out.shape == expected.shape
    err = (out - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()), err


def test_fixture_state_dict_order():
    for name in NETWORK_FIXTURES:
        d = _load_fixture(name)
        with torch.device('meta'):
            net = _build_from_config(d['config'])
        ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
        assert ours == [(k, tuple(v.shape)) for k, v in d['state_dict'].items()], name


def test_iddpm_u_matches_fixture():
    d = _load_fixture('adm_iddpm')
    net = _build_from_config(d['config'])
    assert torch.equal(net.u, d['state_dict']['u'])  # Bit-identical float32 recursion.
    with torch.device('meta'):
        assert _build_from_config(d['config']).u.device.type == 'meta'  # The buffer follows the default device.

# ----------------------------------------------------------------------------
# Official layouts (built on the meta device: no memory, no init cost).


def test_official_state_dict_keys():
    with open(fixtures_dir('edm', 'official_state_dict_keys.json')) as f:
        configs = json.load(f)
    assert len(configs) == 4
    for label, cfg in configs.items():
        with torch.device('meta'):
            net = getattr(networks, cfg['precond'])(**cfg['init_kwargs'])
        ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
        assert ours == cfg['state_dict'], label


@pytest.mark.parametrize('cls,kwargs,params,keys,buffers', [
    # Counts of NVlabs/edm's own networks built with these arguments (the official CIFAR-10, FFHQ, ImageNet configs).
    ('EDMPrecond', dict(img_resolution=32, label_dim=10, augment_dim=9, model_type='SongUNet', channel_mult=[2, 2, 2]),
     55735299, 427, 8),
    ('EDMPrecond', dict(img_resolution=32, label_dim=10, augment_dim=9, model_type='SongUNet', channel_mult=[2, 2, 2],
                        embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
                        resample_filter=[1, 3, 3, 1]), 56400643, 434, 11),
    ('EDMPrecond', dict(img_resolution=64, augment_dim=9, model_type='SongUNet', channel_mult=[1, 2, 2, 2],
                        embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
                        resample_filter=[1, 3, 3, 1]), 62761091, 563, 16),
    ('VPPrecond', dict(img_resolution=32, model_type='SongUNet'), 61804419, 552, 12),
    ('iDDPMPrecond', dict(img_resolution=64, label_dim=1000, model_type='DhariwalUNet'), 295904454, 554, 13),
])
def test_official_counts(cls, kwargs, params, keys, buffers):
    with torch.device('meta'):
        net = getattr(networks, cls)(img_channels=3, **kwargs)
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(net.state_dict()) == keys
    assert len(list(net.buffers())) == buffers

# ----------------------------------------------------------------------------
# Module hygiene: persistence and imports.


def test_classes_are_persistent():
    for name in PERSISTENT:
        cls = getattr(networks, name)
        assert persistence.is_persistent(cls), name
        assert cls.__name__ == name
    assert callable(networks.weight_init)
    with pytest.raises(ValueError):
        networks.weight_init([2, 2], 'bogus', 2, 2)


def test_module_imports_only_numpy_torch_persistence():
    with open(networks.__file__, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    allowed = {'numpy', 'torch', 'torch.nn.functional', 'torch_utils', 'torch_utils.persistence'}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= allowed
        elif isinstance(node, ast.ImportFrom):
            assert node.module in allowed and node.level == 0, node.module
            if node.module == 'torch_utils':
                assert [a.name for a in node.names] == ['persistence']


@pytest.mark.parametrize('trust', [False, True])
def test_pickle_roundtrip(trust):
    net = _small_precond(networks.EDMPrecond, **NCSN_SMALL)
    data = pickle.dumps(net)
    assert b'_reconstruct_persistent_obj' in data
    loaded = persistence.load_pickle(io.BytesIO(data), trust_pickle=trust)  # trust=True executes the embedded source
    assert type(loaded).__name__ == 'EDMPrecond'
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([0.5, 3.0])), net(x, torch.tensor([0.5, 3.0])))

# ----------------------------------------------------------------------------
# Precision.


def _raw_unet(kind):
    """A small randomised raw U-Net of `kind` (song, ncsn, adm) with labels and augmentation labels."""
    torch.manual_seed(0)
    if kind == 'adm':
        net = networks.DhariwalUNet(8, 2, 3, label_dim=3, augment_dim=2, model_channels=64, channel_mult=[1, 2],
                                    num_blocks=1, attn_resolutions=[4], dropout=0)
    else:
        kw = {k: v for k, v in (SONG_SMALL if kind == 'song' else NCSN_SMALL).items() if k != 'model_type'}
        net = networks.SongUNet(8, 2, 3, label_dim=3, augment_dim=2, **kw)
    return _randomize(net, 1).eval()


@pytest.mark.parametrize('kind', ['song', 'ncsn', 'adm'])
def test_raw_unet_float64(kind):
    net = _raw_unet(kind)
    x, noise, labels, aug = torch.randn(2, 2, 8, 8), torch.tensor([-1.2, 0.7]), torch.eye(3)[:2], torch.randn(2, 2)
    with torch.no_grad():
        y32 = net(x, noise, labels, augment_labels=aug)
        net.double()
        y64 = net(x.double(), noise.double(), labels.double(), augment_labels=aug.double())
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64 and y64.shape == (2, 3, 8, 8)
    assert y64.abs().max() > 0.1  # The randomised net is not trivially zero.
    assert (y64 - y32.double()).abs().max() <= 1e-4 * y64.abs().max()


@pytest.mark.parametrize('kind', ['song', 'ncsn', 'adm'])
@pytest.mark.parametrize('autocast', [False, True])
def test_inference_reuses_temporaries_with_identical_numbers(kind, autocast):
    # Without a graph the blocks write into their own temporaries (training.networks._overwritable); with one
    # (input requiring grad) they allocate. Same operations, so bit-identical outputs, also under bf16 autocast
    # (mixed dtypes: a float32 residual added to a bfloat16 block output must not be written into it).
    net = _raw_unet(kind).requires_grad_(False)
    x, noise, labels, aug = torch.randn(2, 2, 8, 8), torch.tensor([-1.2, 0.7]), torch.eye(3)[:2], torch.randn(2, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            fast = net(x, noise, labels, augment_labels=aug)
        slow = net(x.clone().requires_grad_(True), noise, labels, augment_labels=aug)
    assert slow.requires_grad and not fast.requires_grad
    assert fast.abs().max() > 0.1 and torch.equal(fast, slow.detach())


def test_precond_dtypes_cpu():
    net = _small_precond(networks.EDMPrecond, **SONG_SMALL)
    net.use_fp16 = True  # fp16 needs CUDA: on the CPU the network stays in float32.
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert net(x, 1.0).dtype == torch.float32  # Float64 inputs to a float32 net: float32 result (EDM contract).
        assert net(x.half(), torch.tensor([1.0, 2.0]), force_fp32=True).dtype == torch.float32
        assert net.double()(x, 1.0).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason='fp16 path needs CUDA')
def test_precond_fp16_cuda():
    net = _small_precond(networks.EDMPrecond, use_fp16=True, **ADM_SMALL).cuda()
    x, sigma = torch.randn(2, 2, 8, 8, device='cuda'), torch.tensor([0.5, 3.0], device='cuda')
    with torch.no_grad():
        y16, y32 = net(x, sigma), net(x, sigma, force_fp32=True)
    assert y16.dtype == torch.float32
    assert (y16 - y32).abs().max() < 0.05 * y32.abs().max()

# ----------------------------------------------------------------------------
# Forward-mode AD (torch.func.jvp) against central finite differences in float64.


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # torch's own jvp decompositions, on first use
@pytest.mark.parametrize('model', ['song', 'adm'])
def test_jvp_matches_finite_difference(model):
    kw = dict(SONG_SMALL, augment_dim=2) if model == 'song' else ADM_SMALL
    net = _small_precond(networks.EDMPrecond, **kw).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    vx = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    sigma, vs = torch.tensor([0.3, 2.0], dtype=torch.float64), torch.tensor([0.1, -0.5], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[:2]
    mk = dict(augment_labels=torch.randn(2, 2, generator=g, dtype=torch.float64)) if model == 'song' else {}

    def f(x, sigma):
        return net(x, sigma, labels, **mk)

    y, jvp = torch.func.jvp(f, (x, sigma), (vx, vs))
    eps = 1e-5
    with torch.no_grad():
        fd = (f(x + eps * vx, sigma + eps * vs) - f(x - eps * vx, sigma - eps * vs)) / (2 * eps)
        assert torch.equal(y, f(x, sigma))
    assert jvp.dtype == torch.float64
    rel = ((jvp - fd).abs().max() / fd.abs().max()).item()
    assert rel < 1e-6, rel
    # The network term must matter: compare with the derivative of the skip term alone.
    c_skip = 0.25 / (sigma ** 2 + 0.25)
    dc_skip = -0.5 * sigma * vs / (sigma ** 2 + 0.25) ** 2
    skip_only = c_skip.reshape(-1, 1, 1, 1) * vx + dc_skip.reshape(-1, 1, 1, 1) * x
    assert (jvp - skip_only).abs().max() > 0.1 * jvp.abs().max()

@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('kind', ['ddpmpp', 'ncsnpp', 'adm'])
def test_raw_unet_jvp_matches_finite_difference(kind):
    # Every input of the raw U-Net carries a tangent: image, noise label, class label, augmentation label.
    net = _raw_unet(dict(ddpmpp='song', ncsnpp='ncsn').get(kind, kind)).double()
    assert any(isinstance(m, networks.UNetBlock) and m.num_heads for m in net.modules())  # attention is exercised
    g = torch.Generator().manual_seed(4)
    primals = (torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64),
               torch.tensor([-1.2, 0.7], dtype=torch.float64), torch.eye(3, dtype=torch.float64)[:2],
               torch.randn(2, 2, generator=g, dtype=torch.float64))
    tangents = tuple(torch.randn(p.shape, generator=g, dtype=torch.float64) for p in primals)

    def f(x, noise, labels, aug):
        return net(x, noise, labels, augment_labels=aug)

    y, jvp = torch.func.jvp(f, primals, tangents)
    eps = 1e-6
    with torch.no_grad():
        fd = (f(*[p + eps * t for p, t in zip(primals, tangents)])
              - f(*[p - eps * t for p, t in zip(primals, tangents)])) / (2 * eps)
        assert torch.equal(y, f(*primals))
    rel = ((jvp - fd).abs().max() / fd.abs().max()).item()
    assert rel <= 1e-5, rel


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('cls,kw', [('VPPrecond', SONG_SMALL), ('VEPrecond', NCSN_SMALL), ('iDDPMPrecond', ADM_SMALL),
                                    ('EDMPrecond', dict(NCSN_SMALL, augment_dim=2)),
                                    ('EDMPrecond', dict(SONG_SMALL, pfgmpp=True, D=128)),
                                    ('FDM_EDMPrecond', dict(SONG_SMALL, fdm_multiplier=2.0)),
                                    ('FDM_VPPrecond', dict(SONG_SMALL, fdm_multiplier=1.0)),
                                    ('FDM_VEPrecond', NCSN_SMALL)])
def test_precond_jvp_matches_reverse_mode(cls, kw):
    # float32, as sampled: <u, J v> from forward mode equals <J^T u, v> from reverse mode, tangents in x and sigma.
    net = _small_precond(getattr(networks, cls), **kw)
    g = torch.Generator().manual_seed(3)
    x, vx = torch.randn(2, 2, 2, 8, 8, generator=g)
    sigma, vs = torch.tensor([0.3, 2.0]), torch.randn(2, generator=g)
    u = torch.randn(2, 2, 8, 8, generator=g)
    labels = torch.eye(3)[:2]

    def f(x, sigma):
        return net(x, sigma, labels)

    y, jvp = torch.func.jvp(f, (x, sigma), (vx, vs))
    _, vjp_fn = torch.func.vjp(f, x, sigma)
    gx, gs = vjp_fn(u)
    lhs = (u.double() * jvp.double()).sum()
    rhs = (gx.double() * vx.double()).sum() + (gs.double() * vs.double()).sum()
    assert y.dtype == jvp.dtype == torch.float32
    assert (lhs - rhs).abs() <= 1e-4 * lhs.abs(), (lhs, rhs)
    assert lhs.abs() > 0.05 * u.norm() * jvp.norm() / np.sqrt(u.numel())  # not a cancelling inner product

# ----------------------------------------------------------------------------
# Schedules and round_sigma.


def test_vp_constants():
    with torch.device('meta'):
        net = networks.VPPrecond(img_resolution=8, img_channels=2, **SONG_SMALL)
    assert net.sigma_min == 0.0009765625  # float32 artefact of the reference
    assert abs(net.sigma_max - 152.16698) < 1e-4
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(net.sigma_inv(net.sigma(t)), t, rtol=1e-10, atol=0)
    assert float(net.round_sigma(0.7)) == pytest.approx(0.7)


def test_ve_edm_constants():
    with torch.device('meta'):
        ve = networks.VEPrecond(img_resolution=8, img_channels=2, **SONG_SMALL)
        edm = networks.EDMPrecond(img_resolution=8, img_channels=2, **ADM_SMALL)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0, float('inf'), 0.5)


def test_iddpm_schedule_and_round_sigma():
    net = networks.iDDPMPrecond(img_resolution=8, img_channels=2, **ADM_SMALL)
    u, M = net.u, net.M
    assert u.dtype == torch.float32 and u.shape == (M + 1,) and u[M] == 0
    assert net.sigma_min == pytest.approx(0.0064223, rel=1e-4) and net.sigma_min == float(u[M - 1])
    assert net.sigma_max == pytest.approx(20291.17, rel=1e-6) and net.sigma_max == float(u[0])
    assert float(u[1]) == pytest.approx(641.66, rel=1e-5) and float(u[2]) == pytest.approx(320.83, rel=1e-5)
    assert bool((u[:-1] > u[1:]).all())

    # round_sigma: exact levels map onto themselves; others to the nearest level; dtype and shape are kept.
    j = torch.tensor([0, 1, 2, 500, 998, 999])
    assert torch.equal(net.round_sigma(u[j]), u[j])
    assert torch.equal(net.round_sigma(u[j], return_index=True), j)
    s = torch.tensor([[0.01, 0.5], [3.0, 40.0]], dtype=torch.float64)
    r = net.round_sigma(s)
    assert r.dtype == torch.float64 and r.shape == s.shape
    idx = net.round_sigma(s, return_index=True)
    assert torch.equal(idx.flatten(), (s.reshape(-1, 1) - u.double().reshape(1, -1)).abs().argmin(1))
    assert torch.equal(r, u[idx].double())
    assert float(net.round_sigma(1e6)) == float(u[0]) and float(net.round_sigma(0.0)) == float(u[M])

    # Index time: t = 1 - j/M on the grid, log-linear in between.
    t_grid = 1 - j.double() / M
    assert torch.allclose(net.sigma(t_grid), u[j].double(), rtol=1e-12)
    assert torch.allclose(net.sigma_inv(u[j].double()), t_grid, rtol=1e-9, atol=0)
    assert float(net.sigma(1)) == pytest.approx(net.sigma_max)
    assert float(net.sigma(1 / M)) == pytest.approx(net.sigma_min)
    assert net.sigma(1).dtype == torch.float32 and net.sigma_inv(80).dtype == torch.float32
    s = torch.exp(torch.linspace(np.log(net.sigma_min), np.log(net.sigma_max), 37, dtype=torch.float64))
    assert torch.allclose(net.sigma(net.sigma_inv(s)), s, rtol=1e-9)
    t = torch.linspace(1 / M, 1, 41, dtype=torch.float64)
    assert torch.allclose(net.sigma_inv(net.sigma(t)), t, rtol=1e-9)
    assert bool((net.sigma(t)[1:] > net.sigma(t)[:-1]).all())

# ----------------------------------------------------------------------------
# Layers and variants that the fixtures do not reach.


def test_conv_resampling_shapes():
    x = torch.randn(1, 4, 8, 8)
    for f in ([1, 1], [1, 3, 3, 1]):
        for fused in (False, True):
            up = networks.Conv2d(4, 5, 3, up=True, resample_filter=f, fused_resample=fused)
            down = networks.Conv2d(4, 5, 3, down=True, resample_filter=f, fused_resample=fused)
            assert up(x).shape == (1, 5, 16, 16) and down(x).shape == (1, 5, 4, 4)
    # [1,1] filters: nearest-neighbour up-sampling and 2x2 average pooling.
    up0 = networks.Conv2d(4, 4, 0, up=True)
    down0 = networks.Conv2d(4, 4, 0, down=True)
    assert torch.allclose(up0(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.allclose(down0(x), torch.nn.functional.avg_pool2d(x, 2))
    assert 'resample_filter' not in networks.Conv2d(4, 4, 3).state_dict()


def test_attention_layout_and_heads():
    blk = networks.UNetBlock(128, 128, 16, attention=True, channels_per_head=64)
    assert blk.num_heads == 2 and blk.skip is None
    assert networks.UNetBlock(8, 8, 16).num_heads == 0
    with pytest.raises(ValueError, match='12 channels do not split into 5 attention heads'):
        networks.UNetBlock(12, 12, 16, attention=True, num_heads=5)
    assert networks.GroupNorm(16).num_groups == 4 and networks.GroupNorm(256).num_groups == 32


@pytest.mark.parametrize('enc,dec', [('skip', 'skip'), ('standard', 'skip'), ('skip', 'standard')])
def test_song_unet_skip_variants(enc, dec):
    kw = {k: v for k, v in SONG_SMALL.items() if k != 'model_type'}
    net = networks.SongUNet(8, 2, 2, encoder_type=enc, decoder_type=dec, **kw).eval()
    names = list(net.enc.keys()) + list(net.dec.keys())
    assert any('aux_down' in n for n in names) == (enc == 'skip')
    assert any('aux_up' in n for n in names) == (dec == 'skip')
    with torch.no_grad():
        assert net(torch.randn(2, 2, 8, 8), torch.randn(2), None).shape == (2, 2, 8, 8)


def test_labels_default_and_dropout():
    net = _small_precond(networks.EDMPrecond, **ADM_SMALL)
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x, 1.0), net(x, 1.0, torch.zeros(2, 3)), atol=1e-6)  # No labels = zero labels.
        assert not torch.allclose(net(x, 1.0), net(x, 1.0, torch.eye(3)[:2]), atol=1e-3)
        net.model.label_dropout = 1.0
        net.train()
        assert torch.allclose(net(x, 1.0, torch.eye(3)[:2]), net(x, 1.0), atol=1e-6)  # Every label dropped.
