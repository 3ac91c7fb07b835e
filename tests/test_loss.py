"""Losses (EDM Table 1): sigma distributions, weights, draw order, per-sample generators, self-contained source."""
import ast
import io
import math
import os
import pickle

import pytest
import torch

from torch_utils import persistence
from training.augment import AugmentPipe
from training.loss import EDMLoss, VELoss, VPLoss
from training.training_loop import SampleRNG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordingNet:
    """D(x; sigma) = 0; remembers its inputs."""

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        self.x, self.sigma, self.class_labels, self.augment_labels = x, sigma, class_labels, augment_labels
        return torch.zeros_like(x)


def test_vp_sigma_endpoints():
    vp = VPLoss()
    # EDM sec. 2 (verified values): sigma_VP(1) = 152.16698; sigma_VP(1e-5) ~ 0.0010000 in float64.
    assert float(vp.sigma(torch.tensor(1.0))) == pytest.approx(152.16698, rel=1e-5)
    assert float(vp.sigma(torch.tensor(1e-5, dtype=torch.float64))) == pytest.approx(0.0010000, rel=1e-3)


@pytest.mark.parametrize('kind', ['vp', 've', 'edm'])
def test_sigma_weight_and_noise_follow_the_draw_order(kind):
    images = torch.rand(6, 3, 4, 4) * 2 - 1
    labels = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    net = RecordingNet()
    loss_fn = dict(vp=VPLoss(), ve=VELoss(), edm=EDMLoss())[kind]
    torch.manual_seed(7)
    loss = loss_fn(net, images, labels)
    # Redraw in the documented order: sigma per sample, then the noise.
    torch.manual_seed(7)
    if kind == 'edm':
        sigma = (torch.randn([6, 1, 1, 1]) * 1.2 - 1.2).exp()
        weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    else:
        u = torch.rand([6, 1, 1, 1])
        sigma = VPLoss().sigma(1 + u * (1e-5 - 1)) if kind == 'vp' else 0.02 * (100 / 0.02) ** u
        weight = 1 / sigma ** 2
    noise = torch.randn(images.shape)
    torch.testing.assert_close(net.sigma, sigma)
    torch.testing.assert_close(net.x, images + noise * sigma)
    assert net.class_labels is labels and net.augment_labels is None
    torch.testing.assert_close(loss, weight * images ** 2)   # D = 0, so (D - y)^2 = y^2.


def test_edm_weight_at_sigma_data():
    # lambda(sigma_data) = 2 / sigma_data^2 = 8 for sigma_data = 0.5 (EDM eq. 8 / Table 1).
    loss_fn = EDMLoss(P_mean=math.log(0.5), P_std=0.0)
    images = torch.ones(2, 1, 2, 2)
    loss = loss_fn(RecordingNet(), images)
    torch.testing.assert_close(loss, torch.full_like(images, 8.0))


def test_sigma_distributions_have_the_documented_moments():
    torch.manual_seed(0)
    n = 20000
    images = torch.zeros(n, 1, 1, 1)
    net = RecordingNet()
    EDMLoss()(net, images)
    log_sigma = net.sigma.log().flatten()
    assert abs(float(log_sigma.mean()) + 1.2) < 0.03 and abs(float(log_sigma.std()) - 1.2) < 0.03
    VELoss()(net, images)
    u = (net.sigma.log() - math.log(0.02)) / math.log(100 / 0.02)
    assert float(u.min()) >= 0 and float(u.max()) <= 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_augment_pipe_runs_between_sigma_and_noise():
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    pipe = AugmentPipe(p=1, xflip=1)
    net = RecordingNet()
    torch.manual_seed(3)
    EDMLoss()(net, images, augment_pipe=pipe)
    torch.manual_seed(3)
    sigma = (torch.randn([4, 1, 1, 1]) * 1.2 - 1.2).exp()
    y, labels = pipe(images)
    noise = torch.randn(images.shape)
    torch.testing.assert_close(net.augment_labels, labels)
    torch.testing.assert_close(net.x, y + noise * sigma)


def test_per_sample_generators_make_each_sample_independent_of_the_batch():
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    loss_fn, pipe = EDMLoss(), AugmentPipe(p=0.5, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    full = loss_fn(RecordingNet(), images, augment_pipe=pipe, rng=SampleRNG('cpu', 5, [10, 11, 12, 13]))
    part = loss_fn(RecordingNet(), images[2:], augment_pipe=pipe, rng=SampleRNG('cpu', 5, [12, 13]))
    torch.testing.assert_close(full[2:], part, rtol=1e-5, atol=1e-6)
    other = loss_fn(RecordingNet(), images[2:], augment_pipe=pipe, rng=SampleRNG('cpu', 6, [12, 13]))
    assert not torch.allclose(other, part)


def test_losses_are_persistent_and_round_trip():
    for obj in (VPLoss(beta_d=10.0), VELoss(sigma_max=50), EDMLoss(P_mean=-1.0)):
        assert persistence.is_persistent(obj)
        data = pickle.dumps(obj)
        for copy in (persistence.load_pickle(io.BytesIO(data)), pickle.loads(data)):
            assert type(copy).__name__ == type(obj).__name__
            assert {k: v for k, v in vars(copy).items() if not k.startswith('_')} == \
                {k: v for k, v in vars(obj).items() if not k.startswith('_')}


class UniformLoss(EDMLoss):
    """EDM's loss with uniform noise of variance sigma^2 (a kernel other than the Gaussian)."""

    def noise(self, y, sigma, rng):
        return (rng.rand(y.shape, device=y.device) * 2 - 1) * (3 ** 0.5) * sigma


@pytest.mark.parametrize('per_sample', [False, True])
def test_overridden_noise_is_what_the_network_sees(per_sample):
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    pipe = AugmentPipe(p=1, xflip=1)
    make_rng = (lambda: SampleRNG('cpu', 5, [0, 1, 2, 3])) if per_sample else (lambda: None)
    net = RecordingNet()
    torch.manual_seed(3)
    loss = UniformLoss()(net, images, augment_pipe=pipe, rng=make_rng())
    # Same draws, in the same order: sigma, augmentation, then the overridden perturbation.
    torch.manual_seed(3)
    rng = make_rng()
    gen = torch if rng is None else rng
    sigma = (gen.randn([4, 1, 1, 1]) * 1.2 - 1.2).exp()
    y, _ = pipe(images, rng=rng)
    n = (gen.rand(images.shape) * 2 - 1) * (3 ** 0.5) * sigma
    assert torch.equal(net.sigma, sigma) and torch.equal(net.x, y + n)
    torch.testing.assert_close(loss, (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2 * y ** 2)


def test_step_and_state_hooks():
    for loss_fn in (VPLoss(), VELoss(), EDMLoss()):
        assert loss_fn.step == 0 and loss_fn.state_dict() == {}
        loss_fn.set_step(7)
        assert loss_fn.step == 7
        loss_fn.load_state_dict({})
        with pytest.raises(ValueError, match='has no state to load'):
            loss_fn.load_state_dict(dict(clamp=5.0))
        # The step count travels with a snapshot's loss object; the pickled class name stays EDM's.
        copy = persistence.load_pickle(io.BytesIO(pickle.dumps(loss_fn)))
        assert type(copy) is type(loss_fn) and copy.step == 7


def imported_modules(path):
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


@pytest.mark.parametrize('module', ['training/loss.py', 'training/augment.py'])
def test_embedded_sources_import_only_torch_numpy_and_persistence(module):
    allowed = {'torch', 'numpy', 'torch_utils.persistence'}
    for name in imported_modules(os.path.join(ROOT, module)):
        assert name in allowed or name.split('.')[0] == 'torch', f'{module} imports {name}'
