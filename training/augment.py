"""EDM's non-leaking geometric augmentation (Karras et al. 2022, Appendix C.4), built on the ADA pipeline
(Karras et al. 2020, "Training generative adversarial networks with limited data", Appendix B).

`AugmentPipe(p, xflip, yflip, scale, rotate_frac, aniso, translate_frac)(images)` takes NCHW images in [-1, 1]
and returns `(augmented images, augment_labels [N, D])`. Every enabled augmentation is applied to a sample with
probability multiplier * p and contributes its labels (zeros when not applied), in this order:

    xflip (1), yflip (1), scale (1), rotate_frac (2), aniso (2), translate_frac (2)   -> D = 9 with all enabled.

The denoiser is conditioned on the labels, so it learns the augmentations without leaking them into samples
(sampling passes no labels, which equals zero labels). Flips act on pixels; the other transforms are composed
into one matrix and resampled once: reflect padding, 2x up-sampling with the symlet-6 wavelet, bilinear
sampling, 2x down-sampling with the adjoint filter, crop.

This file is embedded in training snapshots (torch_utils.persistence), so it imports nothing but numpy, torch and
torch_utils.persistence.
"""

import numpy as np
import torch
from torch_utils import persistence

# Symlet-6 low-pass decomposition filter (Daubechies 1992, "Ten lectures on wavelets", Sec. 8.1; PyWavelets 'sym6').
# An orthogonal filter: sum = sqrt(2), sum of squares = 1, so up-sampling with it and down-sampling with its
# reverse reconstructs the input exactly.
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# ----------------------------------------------------------------------------
# 3x3 homogeneous matrices for a batch of 2-D transforms. Entries are python numbers or tensors of shape [N].


def _matrix(rows, n, device):
    entries = [torch.as_tensor(e, dtype=torch.float32, device=device).expand(n) for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(n, 3, 3)


def translate2d(tx, ty, n, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def scale2d(sx, sy, n, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def rotate2d(theta, n, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)

# ----------------------------------------------------------------------------
# Resampling.


def _filter_axis(x, taps, axis, stride=1):
    """Correlate every channel of NCHW `x` with 1-D `taps` along `axis` (2 = H, 3 = W), no padding."""
    n, c, h, w = x.shape
    k = taps.numel()
    weight = taps.to(x.dtype).reshape([1, 1, k, 1] if axis == 2 else [1, 1, 1, k])
    step = (stride, 1) if axis == 2 else (1, stride)
    y = torch.nn.functional.conv2d(x.reshape(n * c, 1, h, w), weight, stride=step)
    return y.reshape(n, c, y.shape[2], y.shape[3])


def upsample2x(x, taps):
    """2x up-sampling: zero insertion, then convolution with the filter (gain 2 per axis)."""
    k = taps.numel()
    n, c, h, w = x.shape
    z = x.new_zeros([n, c, 2 * h, 2 * w])
    z[:, :, ::2, ::2] = x
    z = torch.nn.functional.pad(z, [k // 2, k // 2 - 1, k // 2, k // 2 - 1])
    return _filter_axis(_filter_axis(z, taps.flip(0) * 2, 3), taps.flip(0) * 2, 2)


def downsample2x(x, taps):
    """2x down-sampling by correlation with the filter (the adjoint of upsample2x, so down(up(x)) = x)."""
    k = taps.numel()
    x = torch.nn.functional.pad(x, [k // 2 - 1, k // 2 - 1, k // 2 - 1, k // 2 - 1])
    return _filter_axis(_filter_axis(x, taps, 3, stride=2), taps, 2, stride=2)


def warp(images, G_inv, taps):
    """Resample NCHW `images` so that output pixel p shows input position G_inv @ p.

    Coordinates are in pixels with the origin at the image center and y pointing down; G_inv is [N, 3, 3].
    """
    n, c, h, w = images.shape
    device = images.device
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # The symlet filter is not linear-phase: up-sampling displaces the content by `delay` pixels (its group delay
    # at DC, from the filter's centroid) and down-sampling by -delay. Conjugating the transform by that shift
    # makes the round trip equal G_inv about the true image center (identity stays exact).
    k = taps.numel()
    delay = float(((k - 1) / 2 - (torch.arange(k, dtype=taps.dtype) * taps.cpu()).sum() / taps.sum()) / 2)
    G_inv = translate2d(-delay, -delay, n, device) @ G_inv @ translate2d(delay, delay, n, device)
    crop = taps.numel() // 4               # Output margin (in output pixels) that the down-sampling filter needs.
    reach = taps.numel() // 4 + 1          # Input margin needed by the up-sampling filter and bilinear taps.

    # Reflect-pad the input just enough to cover the pre-image of the (margin-extended) output.
    ex, ey = cx + crop, cy + crop
    corners = torch.tensor([[-ex, -ey, 1], [ex, -ey, 1], [ex, ey, 1], [-ex, ey, 1]], dtype=torch.float32, device=device)
    src = (G_inv @ corners.t())[:, :2, :]                                   # [N, xy, corner]
    lo = src.amin(dim=(0, 2)) - reach
    hi = src.amax(dim=(0, 2)) + reach
    pad_lo = (-torch.tensor([cx, cy], device=device) - lo).clamp(min=0).ceil()
    pad_hi = (hi - torch.tensor([cx, cy], device=device)).clamp(min=0).ceil()
    limit = torch.tensor([w - 1, h - 1], device=device)
    (px0, py0), (px1, py1) = pad_lo.minimum(limit).int().tolist(), pad_hi.minimum(limit).int().tolist()
    images = torch.nn.functional.pad(images, [px0, px1, py0, py1], mode='reflect')
    G_inv = translate2d((px0 - px1) / 2, (py0 - py1) / 2, n, device) @ G_inv   # Origin moves to the padded center.

    # Up-sample, then sample a 2x-resolution output (with margin) bilinearly.
    images = upsample2x(images, taps)
    hu, wu = images.shape[2:]
    ho, wo = 2 * (h + 2 * crop), 2 * (w + 2 * crop)
    M = scale2d(2, 2, n, device) @ G_inv @ scale2d(0.5, 0.5, n, device)      # The same map in 2x pixel units.
    theta = scale2d(2 / wu, 2 / hu, n, device) @ M @ scale2d(wo / 2, ho / 2, n, device)   # Normalized coordinates.
    grid = torch.nn.functional.affine_grid(theta[:, :2, :], [n, c, ho, wo], align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Down-sample and drop the margin.
    images = downsample2x(images, taps)
    return images[:, :, crop:crop + h, crop:crop + w]

# ----------------------------------------------------------------------------


@persistence.persistent_class
class AugmentPipe:
    """Geometric augmentations with per-sample probability `p` times each multiplier (EDM Appendix C.4)."""

    def __init__(self, p=1, xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0,
                 scale_std=0.2, rotate_frac_max=1, aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125):
        self.p = float(p)
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)

    @property
    def label_dim(self):
        """Number of augment labels (the network's augment_dim): 9 with every augmentation enabled."""
        return sum(d for d, m in [(1, self.xflip), (1, self.yflip), (1, self.scale), (2, self.rotate_frac),
                                  (2, self.aniso), (2, self.translate_frac)] if m > 0)

    def __call__(self, images, rng=None):
        n, c, h, w = images.shape
        device = images.device
        rand = torch.rand if rng is None else rng.rand
        randn = torch.randn if rng is None else rng.randn
        randint = torch.randint if rng is None else rng.randint

        def gate(value, multiplier):
            # Keep `value` for the samples that get this augmentation (probability multiplier * p), else zero.
            keep = rand([n] + [1] * (value.ndim - 1), device=device) < multiplier * self.p
            return torch.where(keep, value, torch.zeros_like(value))

        labels = []

        # Pixel flips (ADA Appendix B.1, "xflip"): w in {0, 1}.
        for multiplier, dim in [(self.xflip, 3), (self.yflip, 2)]:
            if multiplier > 0:
                flip = gate(randint(2, size=[n, 1, 1, 1], device=device).float(), multiplier)
                images = torch.where(flip == 1, images.flip(dim), images)
                labels.append(flip.reshape(n, 1))

        # General geometric transforms, composed as inverse matrices (ADA Appendix B.2).
        G_inv = torch.eye(3, device=device).expand(n, 3, 3)
        geometric = False
        if self.scale > 0:
            # Isotropic scaling by s = 2^(scale_std * w), w ~ N(0, 1).
            w_ = gate(randn([n], device=device), self.scale)
            s = torch.exp2(w_ * self.scale_std)
            G_inv = G_inv @ scale2d(1 / s, 1 / s, n, device)
            labels.append(w_.reshape(n, 1))
            geometric = True
        if self.rotate_frac > 0:
            # Rotation by theta ~ U(-pi, pi) * rotate_frac_max; labels (cos theta - 1, sin theta).
            theta = gate((rand([n], device=device) * 2 - 1) * np.pi * self.rotate_frac_max, self.rotate_frac)
            G_inv = G_inv @ rotate2d(theta, n, device)
            labels += [(torch.cos(theta) - 1).reshape(n, 1), torch.sin(theta).reshape(n, 1)]
            geometric = True
        if self.aniso > 0:
            # Anisotropic scaling (2^(std w), 2^(-std w)) along axes rotated by r (r ~ U(-pi, pi) with prob. 1/2).
            w_ = randn([n], device=device)
            r = (rand([n], device=device) * 2 - 1) * np.pi
            r = torch.where(rand([n], device=device) < self.aniso_rotate_prob, r, torch.zeros_like(r))
            w_ = gate(w_, self.aniso)
            s = torch.exp2(w_ * self.aniso_std)
            G_inv = G_inv @ rotate2d(r, n, device) @ scale2d(1 / s, s, n, device) @ rotate2d(-r, n, device)
            labels += [(w_ * torch.cos(r)).reshape(n, 1), (w_ * torch.sin(r)).reshape(n, 1)]
            geometric = True
        if self.translate_frac > 0:
            # Translation by (W, H) * translate_frac_std * w, w ~ N(0, I_2).
            t = gate(randn([n, 2], device=device), self.translate_frac)
            G_inv = G_inv @ translate2d(-t[:, 0] * w * self.translate_frac_std,
                                        -t[:, 1] * h * self.translate_frac_std, n, device)
            labels += [t[:, :1], t[:, 1:]]
            geometric = True
        if geometric:
            images = warp(images, G_inv, torch.tensor(SYM6, dtype=torch.float32, device=device) / np.sqrt(2))

        labels = torch.cat(labels, dim=1).float() if labels else images.new_zeros([n, 0])
        return images, labels
