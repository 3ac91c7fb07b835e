"""Augmentation pipe (EDM Appendix C.4): label layout, probabilities, and the geometry implied by each label."""
import numpy as np
import pytest
import torch

from training import augment
from training.augment import AugmentPipe
from training.config import AUGMENT_KWARGS
from training.training_loop import SampleRNG

TAPS = torch.tensor(augment.SYM6) / np.sqrt(2)


def blob(size=32, cx=10.0, cy=8.0, width=6.0, channels=1):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing='ij')
    img = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width))
    return img.expand(1, channels, size, size).clone()


def center_of_mass(img):
    img = img[0, 0].clamp(min=0)
    yy, xx = torch.meshgrid(torch.arange(img.shape[0], dtype=torch.float32),
                            torch.arange(img.shape[1], dtype=torch.float32), indexing='ij')
    return float((img * xx).sum() / img.sum()), float((img * yy).sum() / img.sum())


def test_sym6_is_orthogonal():
    f = np.array(augment.SYM6)
    assert f.sum() == pytest.approx(np.sqrt(2), abs=1e-12)
    for lag in range(0, 12, 2):
        assert np.dot(f[:12 - lag], f[lag:]) == pytest.approx(1.0 if lag == 0 else 0.0, abs=1e-10)


def test_warp_identity_and_integer_shift_are_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    eye = torch.eye(3).expand(2, 3, 3)
    torch.testing.assert_close(augment.warp(x, eye, TAPS), x, atol=1e-4, rtol=0)
    # Output pixel p shows input p - (2, 1): content moves right by 2 and down by 1.
    shifted = augment.warp(x, augment.translate2d(-2.0, -1.0, 2, 'cpu'), TAPS)
    torch.testing.assert_close(shifted[:, :, 1:, 2:], x[:, :, :-1, :-2], atol=1e-4, rtol=0)


@pytest.mark.parametrize('k', [1, -1])
def test_warp_rotates_by_quarter_turns(k):
    img = blob()
    rotated = augment.warp(img, augment.rotate2d(torch.tensor(k * np.pi / 2), 1, 'cpu'), TAPS)
    # Exact up to the wavelet's small aliasing (the filter's delay is compensated; without that it is ~0.1).
    expected = torch.rot90(img, k, (2, 3))
    assert (rotated - expected).abs().max() < 0.02
    assert (rotated - torch.rot90(img, -k, (2, 3))).abs().max() > 0.9


def test_train_py_configuration_gives_nine_labels_and_p0_is_identity():
    pipe = AugmentPipe(**{k: v for k, v in AUGMENT_KWARGS.items() if k != 'class_name'}, p=0.12)
    assert pipe.label_dim == 9
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    out, labels = pipe(images)
    assert out.shape == images.shape and labels.shape == (64, 9) and labels.dtype == torch.float32
    # xflip has multiplier 1e8: every sample is eligible, half of them flip (EDM: min(1, 1e8 p)).
    assert set(labels[:, 0].tolist()) == {0.0, 1.0}
    # The other augmentations hit about p = 12% of the samples each; with 64 samples not all of them.
    assert (labels[:, 1:] != 0).any(dim=1).float().mean() < 0.9
    off = AugmentPipe(**{k: v for k, v in AUGMENT_KWARGS.items() if k != 'class_name'}, p=0)
    out, labels = off(images)
    assert torch.equal(out, images) or (out - images).abs().max() < 1e-4
    assert torch.count_nonzero(labels) == 0


def test_flip_labels_say_which_samples_were_flipped():
    torch.manual_seed(1)
    images = torch.rand(32, 1, 8, 8)
    out, labels = AugmentPipe(p=1, xflip=1, yflip=1)(images)
    assert labels.shape == (32, 2)
    for img, res, (fx, fy) in zip(images, out, labels.tolist()):
        expected = img
        if fx:
            expected = expected.flip(2)
        if fy:
            expected = expected.flip(1)
        assert torch.equal(res, expected)


def test_translate_labels_give_the_shift():
    torch.manual_seed(2)
    pipe = AugmentPipe(p=1, translate_frac=1, translate_frac_std=0.05)
    img = blob(cx=15.5, cy=15.5)
    out, labels = pipe(img.repeat(4, 1, 1, 1))
    for res, (wx, wy) in zip(out, labels.tolist()):
        x, y = center_of_mass(res[None])
        assert x == pytest.approx(15.5 + wx * 32 * 0.05, abs=0.1)
        assert y == pytest.approx(15.5 + wy * 32 * 0.05, abs=0.1)


def test_scale_and_rotation_labels_give_the_transform():
    torch.manual_seed(3)
    img = blob(cx=20.0, cy=15.5, width=3.0)      # Off-center, so both scaling and rotation move it.
    out, labels = AugmentPipe(p=1, scale=1)(img.repeat(4, 1, 1, 1))
    for res, (w,) in zip(out, labels.tolist()):
        s = 2 ** (0.2 * w)
        x, y = center_of_mass(res[None])
        assert x == pytest.approx(15.5 + 4.5 * s, abs=0.1) and y == pytest.approx(15.5, abs=0.1)
    out, labels = AugmentPipe(p=1, rotate_frac=1)(img.repeat(4, 1, 1, 1))
    for res, (c1, s) in zip(out, labels.tolist()):
        theta = np.arctan2(s, c1 + 1)
        x, y = center_of_mass(res[None])
        # The content turns by -theta in image coordinates (y down), i.e. the sampling grid turns by theta.
        assert x == pytest.approx(15.5 + 4.5 * np.cos(theta), abs=0.1)
        assert y == pytest.approx(15.5 - 4.5 * np.sin(theta), abs=0.1)


def test_aniso_labels_are_zero_when_not_applied_and_images_keep_their_range():
    torch.manual_seed(4)
    images = torch.rand(16, 3, 16, 16) * 2 - 1
    out, labels = AugmentPipe(p=0.5, aniso=1)(images)
    unchanged = (labels == 0).all(dim=1)
    assert 0 < int(unchanged.sum()) < 16
    assert (out[unchanged] - images[unchanged]).abs().max() < 1e-4
    assert out.abs().max() < 1.5


def test_per_sample_generator_and_persistence():
    pipe = AugmentPipe(p=0.7, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    a, la = pipe(images, rng=SampleRNG('cpu', 0, [5, 6, 7]))
    b, lb = pipe(images[1:], rng=SampleRNG('cpu', 0, [6, 7]))
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=0)
    torch.testing.assert_close(la[1:], lb)
    from torch_utils import persistence
    assert persistence.is_persistent(pipe)
