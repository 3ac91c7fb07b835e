"""Denoiser networks of the EDM family: the raw U-Nets and the preconditioners that wrap them.

Raw networks F: DDPM++/NCSN++ (`SongUNet`, Song et al., ICLR 2021) and ADM (`DhariwalUNet`, Dhariwal & Nichol, NeurIPS
2021), built from hand-written layers so that state_dict names and shapes equal those of the official EDM checkpoints.
Preconditioners (Karras et al., NeurIPS 2022, "EDM", Table 1) turn F into a denoiser
D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)).

This file's text is embedded in every checkpoint (torch_utils.persistence), so it imports only numpy, torch and
torch_utils.persistence, and keeps to Python 3.8 / PyTorch 1.12 features.
"""

import numpy as np
import torch
from torch.nn.functional import silu
from torch_utils import persistence

# ----------------------------------------------------------------------------
# Initialisation.


def weight_init(shape, mode, fan_in, fan_out):
    """Random tensor of `shape` for the given init `mode` (Glorot & Bengio 2010; He et al. 2015). In-place
    arithmetic only: out-of-place scalar arithmetic on the meta device (the safe loader's construction) runs
    Python reference kernels that import torch._dynamo and sympy, about 70 MiB of resident memory."""
    if mode == 'xavier_uniform':
        return torch.rand(*shape).mul_(2).sub_(1).mul_(float(np.sqrt(6 / (fan_in + fan_out))))  # Glorot uniform
    if mode == 'xavier_normal':
        return torch.randn(*shape).mul_(float(np.sqrt(2 / (fan_in + fan_out))))  # Glorot normal
    if mode == 'kaiming_uniform':
        return torch.rand(*shape).mul_(2).sub_(1).mul_(float(np.sqrt(3 / fan_in)))  # He uniform (gain 1)
    if mode == 'kaiming_normal':
        return torch.randn(*shape).mul_(float(np.sqrt(1 / fan_in)))  # He normal (gain 1)
    raise ValueError(f'Invalid init mode "{mode}"')


def _float_dtype(t):
    return t.dtype if t.is_floating_point() else torch.float32


def _compute_dtype(dtype):
    # Precision for softmax/embedding constants: float32 at least, float64 kept (for forward-mode AD checks).
    return torch.promote_types(dtype, torch.float32)

# ----------------------------------------------------------------------------
# Layers. Parameters are cast to the activation dtype, so a float32 network runs fp16 activations and a float64
# network runs in float64.


@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans).mul_(init_weight))
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans).mul_(init_bias)) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()  # y = x W^T + b
        return x if self.bias is None else _add(x, self.bias.to(x.dtype))


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """3x3/1x1 convolution with optional 2x up/down-sampling by the FIR `resample_filter`; kernel=0: resampling only."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=[1, 1],
                 fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        w_shape = [out_channels, in_channels, kernel, kernel]
        self.weight = torch.nn.Parameter(weight_init(w_shape, **fans).mul_(init_weight)) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans).mul_(init_bias)) if kernel and bias else None
        # Separable 2-D filter f f^T / (sum f)^2, computed on the CPU and moved to the default device: the meta
        # device's Python shape rules (the safe loader builds there) would import torch._dynamo and sympy.
        f = torch.as_tensor(resample_filter, dtype=torch.float32, device='cpu')
        f = (f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()).to(torch.empty([]).device)
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        conv, convt = torch.nn.functional.conv2d, torch.nn.functional.conv_transpose2d
        if self.fused_resample and self.up and w is not None:  # upsample, then convolve
            x = convt(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                      padding=max(f_pad - w_pad, 0))
            x = conv(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:  # convolve with wide padding, then subsample
            x = conv(x, w, padding=w_pad + f_pad)
            x = conv(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:  # zero-insertion x2, filtered (gain 4 keeps the mean)
                x = convt(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                          padding=f_pad)
            if self.down:  # filter, then keep every second pixel
                x = conv(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = conv(x, w, padding=w_pad)
        return x if b is None else _add(x, b.reshape(1, -1, 1, 1))  # x is the convolution's output here


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):  # Wu & He 2018
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                                              bias=self.bias.to(x.dtype), eps=self.eps)


def _attention_weights(q, k):
    """softmax_j(q_i . k_j / sqrt(c)) for q, k of shape [N, c, L] (Vaswani et al. 2017, eq. 1), in >= float32
    (autocast, when active, chooses the dtype of the products).

    Plain differentiable ops (no custom autograd.Function), so forward-mode AD (torch.func.jvp) works through it.
    """
    dtype = _compute_dtype(q.dtype)
    logits = torch.einsum('nci,ncj->nij', q.to(dtype), k.to(dtype)) / float(np.sqrt(q.shape[1]))
    return logits.softmax(dim=2).to(q.dtype)


def _overwritable(a, b=None):
    # `a`, a temporary of the caller, may take the result of a o b: no autograd graph or forward-mode tangent
    # needs it, and the result has a's dtype and shape. In-place arithmetic saves an allocation per operation
    # when sampling (fewer, steadier allocations: a lower peak of resident memory) and gives the same numbers.
    if a.requires_grad or _has_tangent(a):
        return False
    if isinstance(b, torch.Tensor):
        # b broadcasts to a's shape (written out: torch.broadcast_shapes imports sympy).
        return not _has_tangent(b) and torch.result_type(a, b) == a.dtype and b.ndim <= a.ndim and \
            all(m in (1, n) for m, n in zip(reversed(b.shape), reversed(a.shape)))
    return a.is_floating_point()


def _silu(a):
    return silu(a, inplace=_overwritable(a))


def _add(a, b):
    return a.add_(b) if _overwritable(a, b) else a + b


def _mul(a, b):
    return a.mul_(b) if _overwritable(a, b) else a * b


def _has_tangent(*tensors):
    # Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) attaches a tangent to the tensors it traces.
    return any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _attention(q, k, v):
    """a_i = sum_j softmax_j(q_i . k_j / sqrt(c)) v_j for q, k, v of shape [N, c, L] (Vaswani et al. 2017, eq. 1).

    torch's fused kernel (scaled_dot_product_attention) where available; the plain path in float64 (the reference
    precision of exactness checks) and under forward-mode AD, for which the fused CPU kernel has no rule.
    """
    sdpa = getattr(torch.nn.functional, 'scaled_dot_product_attention', None)  # PyTorch >= 2.0
    if sdpa is not None and q.dtype != torch.float64 and not _has_tangent(q, k, v):
        return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return torch.einsum('nij,ncj->nci', _attention_weights(q, k), v)

# ----------------------------------------------------------------------------
# U-Net building block: residual block with optional up/down-sampling and self-attention.


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False, num_heads=None,
                 channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=[1, 1], resample_proj=False,
                 adaptive_scale=True, init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else \
            num_heads if num_heads is not None else out_channels // channels_per_head
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(f'{out_channels} channels do not split into {self.num_heads} attention heads')
        self.dropout = dropout
        self.skip_scale = float(skip_scale)  # A Python float: torch.compile cannot guard on numpy scalars.
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(_silu(self.norm0(x)))
        p = self.affine(emb).unsqueeze(2).unsqueeze(3).to(h.dtype)
        if self.adaptive_scale:  # FiLM-style modulation, (scale, shift) (Dhariwal & Nichol 2021, Sec. 3)
            scale, shift = p.chunk(chunks=2, dim=1)
            h = _silu(_add(_mul(self.norm1(h), scale + 1), shift))
        else:  # additive embedding (Ho et al. 2020)
            h = _silu(self.norm1(_add(h, p)))
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = _mul(_add(h, self.skip(x) if self.skip is not None else x), self.skip_scale)

        if self.num_heads:
            n, c = h.shape[0], h.shape[1]
            # qkv channels are interleaved per head: head * (3c/heads) + channel * 3 + {q, k, v}.
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3,
                                                           h.shape[2] * h.shape[3]).unbind(2)
            a = _attention(q, k, v)
            h = _mul(_add(self.proj(a.reshape(h.shape)), h), self.skip_scale)
        return h

# ----------------------------------------------------------------------------
# Noise-level embeddings.


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x f), sin(x f)] (Vaswani et al. 2017, Sec. 3.5)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        f = torch.arange(0, half, dtype=_compute_dtype(x.dtype), device=x.device)
        f = (1 / self.max_positions) ** (f / (half - (1 if self.endpoint else 0)))  # f_i = (1/P)^(i/(C/2 - delta))
        x = torch.outer(x, f.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)] (Tancik et al. 2020; Song et al. 2021, NCSN++)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)

# ----------------------------------------------------------------------------
# Raw U-Nets.


def _drop_labels(labels, p, training):
    # Classifier-free guidance training: zero each row of the labels with probability p (Ho & Salimans 2022).
    if training and p:
        keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
        labels = labels * keep.to(labels.dtype)
    return labels


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ / NCSN++ (Song et al., ICLR 2021), in the configuration used by EDM."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10,
                 label_dropout=0, embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
                 decoder_type='standard', resample_filter=[1, 1]):
        assert embedding_type in ['fourier', 'positional']
        assert encoder_type in ['standard', 'skip', 'residual']
        assert decoder_type in ['standard', 'skip']
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # Noise/label/augmentation embedding.
        self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True) \
            if embedding_type == 'positional' else FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        skips = [blk.out_channels for name, blk in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = (idx == num_blocks and res in attn_resolutions)
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, emb.shape[1] // 2).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = _drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * float(np.sqrt(self.map_label.in_features)))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / float(np.sqrt(2))
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = None
        tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """ADM (Dhariwal & Nichol, NeurIPS 2021), in the configuration used by EDM."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3, attn_resolutions=[32, 16, 8],
                 dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        # Noise/augmentation/label embedding.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode='kaiming_normal',
                                init_weight=np.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        skips = [blk.out_channels for blk in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(class_labels, self.label_dropout, self.training))
        emb = silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))

# ----------------------------------------------------------------------------
# Preconditioners: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (EDM eq. 7, Table 1).


def _autocast(device_type):
    try:
        return bool(torch.is_autocast_enabled(device_type))  # PyTorch >= 2.4
    except TypeError:  # Older PyTorch: one flag for CUDA, one for the CPU.
        return torch.is_autocast_enabled() if device_type == 'cuda' else \
            device_type == 'cpu' and torch.is_autocast_cpu_enabled()


class _Precond(torch.nn.Module):
    """Common part of every preconditioner; a subclass defines `scalings(sigma) -> (c_skip, c_out, c_in, c_noise)`
    (sigma of shape [N, 1, 1, 1]; scalars or broadcastable tensors), and may override `round_sigma`.

    Denoiser contract: `net(x, sigma, class_labels=None, force_fp32=False, **model_kwargs)` returns D(x; sigma) in
    float32 (float64 if the network's parameters were converted with `.double()`). `sigma` is a scalar or one value
    per sample. F runs in fp16 only if `use_fp16`, not `force_fp32` and x is on CUDA, unless autocast is active
    (torch_utils.precision): then F runs in float32 under autocast, and only c_skip x + c_out F stays outside it.
    Not persistent itself: only the concrete subclasses are pickled by name.
    """

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, out_channels=None):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = globals()[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=out_channels or img_channels, label_dim=label_dim,
                                           **model_kwargs)

    def scalings(self, sigma):
        raise NotImplementedError

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def _io_dtype(self):
        p = next(self.model.parameters(), None)
        return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        io_dtype = self._io_dtype()
        x = x.to(io_dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(io_dtype).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device, dtype=io_dtype)
        else:
            class_labels = class_labels.to(io_dtype).reshape(-1, self.label_dim)
        autocast = _autocast(x.device.type)  # Autocast (torch_utils.precision) replaces the fp16 rule.
        use_fp16 = self.use_fp16 and not force_fp32 and not autocast and x.device.type == 'cuda' and \
            io_dtype == torch.float32
        dtype = torch.float16 if use_fp16 else io_dtype

        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype or autocast
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(io_dtype)  # EDM eq. 7


class _VPTime:
    """The VP noise schedule sigma(t) and its inverse (EDM Table 1, "VP"), shared by VPPrecond and FDM_VPPrecond."""

    def sigma(self, t):
        return self._sigma(torch.as_tensor(t))

    def _sigma(self, t):
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()  # EDM Table 1, sigma(t) for VP

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        # Inverse of the VP sigma(t) of EDM Table 1 (root of beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2))
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def _vp_range(self, beta_d, beta_min, M, epsilon_t):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # Computed in float32 on the CPU as in EDM (sigma_min = 0.0009765625), also inside `with torch.device('meta')`.
        self.sigma_min = float(self._sigma(torch.tensor(epsilon_t, device='cpu')))
        self.sigma_max = float(self._sigma(torch.tensor(1.0, device='cpu')))

    def _vp_scalings(self, sigma):
        c_noise = (self.M - 1) * self.sigma_inv(sigma)  # EDM Table 1, VP: c_skip = 1, c_out = -sigma, c_noise
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise


@persistence.persistent_class
class VPPrecond(_VPTime, _Precond):
    """Variance preserving (Song et al., ICLR 2021; EDM Table 1, "VP")."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type='SongUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self._vp_range(beta_d, beta_min, M, epsilon_t)

    def scalings(self, sigma):
        return self._vp_scalings(sigma)  # EDM Table 1, VP c_skip, c_out, c_in, c_noise


@persistence.persistent_class
class VEPrecond(_Precond):
    """Variance exploding (Song et al., ICLR 2021; EDM Table 1, "VE"). `pfgmpp`, `D`: see EDMPrecond."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type='SongUNet', pfgmpp=False, D=128, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        _record_aug_dim(self, pfgmpp, D)

    def scalings(self, sigma):
        return _ve_scalings(sigma)  # EDM Table 1, VE


@persistence.persistent_class
class iDDPMPrecond(_Precond):
    """Improved DDPM, cosine schedule on M discrete levels u_0 > ... > u_{M-1} > u_M = 0 (Nichol & Dhariwal 2021;
    EDM Table 1, "iDDPM"). F has 2 * img_channels outputs; the learned-variance half is discarded.

    Time for `sigma(t)` / `sigma_inv(sigma)`: t in [1/M, 1] is the index time t = 1 - j/M, so t = 1 is u_0 = sigma_max
    and t = 1/M is u_{M-1} = sigma_min (at grid points c_noise = M t - 1). Between grid points log(u) is interpolated
    linearly; out-of-range arguments are clamped. Use `round_sigma` to snap to the levels the network was trained on.
    """

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type='DhariwalUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         out_channels=img_channels * 2)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        u = torch.zeros(M + 1, device='cpu')
        for j in range(M, 0, -1):  # EDM Table 1, iDDPM: u_{j-1} from u_j, u_M = 0
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])
        self.register_buffer('u', u.to(torch.empty([]).device))  # computed on the CPU, stored on the default device

    def alpha_bar(self, j):
        j = torch.as_tensor(j, device='cpu')
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2  # EDM Table 1, iDDPM alpha_bar_j (float32)

    def scalings(self, sigma):
        c_out = -sigma  # EDM Table 1, iDDPM c_out (c_skip = 1)
        c_in = 1 / (sigma ** 2 + 1).sqrt()  # EDM Table 1, iDDPM c_in
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(sigma.dtype)  # EDM Table 1, M-1-argmin
        return 1, c_out, c_in, c_noise

    def round_sigma(self, sigma, return_index=False):
        """Nearest u_j (same dtype/shape/device as sigma), or its index j with `return_index=True`."""
        sigma = torch.as_tensor(sigma)
        u = self.u.to(sigma.device)
        index = (sigma.to(torch.float32).reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(dim=1)
        result = index if return_index else u[index].to(sigma.dtype)
        return result.reshape(sigma.shape)

    def _log_u(self, device):
        return self.u[:self.M].to(device=device, dtype=torch.float64).log()  # u_0 .. u_{M-1}, all > 0

    def sigma(self, t):
        t = torch.as_tensor(t)
        log_u = self._log_u(t.device)
        s = (self.M * (1 - t.to(torch.float64))).clamp(0, self.M - 1)  # fractional index j = M (1 - t)
        j = s.floor().clamp(max=self.M - 2).long()
        w = s - j
        return ((1 - w) * log_u[j] + w * log_u[j + 1]).exp().to(_float_dtype(t))

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        neg_log_u = -self._log_u(sigma.device)  # increasing
        y = (-sigma.to(torch.float64).log()).clamp(float(neg_log_u[0]), float(neg_log_u[-1]))
        j = (torch.searchsorted(neg_log_u, y.reshape(-1)) - 1).clamp(0, self.M - 2).reshape(y.shape)
        w = (y - neg_log_u[j]) / (neg_log_u[j + 1] - neg_log_u[j])
        return (1 - (j + w) / self.M).to(_float_dtype(sigma))


@persistence.persistent_class
class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1 and Sec. 5).

    `pfgmpp`, `D`: the network was trained with PFGM++'s perturbation kernel in D augmented dimensions (Xu et al.
    2023); recorded for sampling (the prior at r_max = sigma_max sqrt(D)), with no effect on D(x; sigma).
    """

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float('inf'),
                 sigma_data=0.5, model_type='DhariwalUNet', pfgmpp=False, D=128, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        _record_aug_dim(self, pfgmpp, D)

    def scalings(self, sigma):
        return _edm_scalings(sigma, self.sigma_data)


def _edm_scalings(sigma, sd):
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)  # EDM Table 1, c_skip
    c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()  # EDM Table 1, c_out
    c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()  # EDM Table 1, c_in
    c_noise = sigma.log() / 4  # EDM Table 1, c_noise
    return c_skip, c_out, c_in, c_noise


def _ve_scalings(sigma):
    return 1, sigma, 1, (0.5 * sigma).log()  # EDM Table 1, VE: c_skip = 1, c_out = sigma, c_in = 1, c_noise


def _record_aug_dim(net, pfgmpp, D):
    # PFGM++ (Xu et al. 2023): N data dimensions augmented by D; D is recorded only for a PFGM++ network.
    net.pfgmpp = bool(pfgmpp)
    net.D = int(D) if pfgmpp else None
    net.N = net.img_channels * net.img_resolution ** 2

# ----------------------------------------------------------------------------
# FDM (Wu et al. 2023, "Fast Diffusion Model"): the baseline scalings with c_in replaced by the critically damped
# factor gamma(sigma) = (1 + B) e^-B, B = m (beta_min t + beta_d t^2 / 2), t = (sigma - sigma_min) / (sigma_max -
# sigma_min) linear in sigma (see docs/fdm_pfgmpp.md). Class and argument names are those of the FDM code, so its
# checkpoints load by name.


class _FDMInput:
    """The momentum factor gamma(sigma) of FDM, from the preconditioner's own sigma range."""

    def _fdm_args(self, fdm_beta_d, fdm_beta_min, fdm_multiplier):
        self.fdm_beta_d = fdm_beta_d
        self.fdm_beta_min = fdm_beta_min
        self.fdm_multiplier = fdm_multiplier

    def fdm_gamma(self, sigma, multiplier):
        t = (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)  # "momentum time", linear in sigma
        B = multiplier * (self.fdm_beta_min * t + 0.5 * self.fdm_beta_d * t ** 2)
        return torch.exp(-B) * (1 + B)  # critically damped envelope


@persistence.persistent_class
class FDM_EDMPrecond(_FDMInput, _Precond):
    """EDM-FDM: EDM's c_skip, c_out, c_noise; c_in = gamma(sigma) with multiplier m on [0.002, 80]."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.002, sigma_max=80.0,
                 sigma_data=0.5, model_type='SongUNet', fdm_beta_d=19.9, fdm_beta_min=0.1, fdm_multiplier=1.0,
                 **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self._fdm_args(fdm_beta_d, fdm_beta_min, fdm_multiplier)

    def scalings(self, sigma):
        c_skip, c_out, _, c_noise = _edm_scalings(sigma, self.sigma_data)
        return c_skip, c_out, self.fdm_gamma(sigma, self.fdm_multiplier), c_noise


@persistence.persistent_class
class FDM_VPPrecond(_FDMInput, _VPTime, _Precond):
    """VP-FDM: VP's c_skip, c_out, c_noise; c_in = gamma(sigma) with multiplier m on [sigma_VP(eps_t), sigma_VP(1)]."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type='SongUNet', fdm_beta_d=19.9, fdm_beta_min=0.1, fdm_multiplier=1.0,
                 **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self._vp_range(beta_d, beta_min, M, epsilon_t)
        self._fdm_args(fdm_beta_d, fdm_beta_min, fdm_multiplier)

    def scalings(self, sigma):
        c_skip, c_out, _, c_noise = self._vp_scalings(sigma)
        return c_skip, c_out, self.fdm_gamma(sigma, self.fdm_multiplier), c_noise


@persistence.persistent_class
class FDM_VEPrecond(_FDMInput, _Precond):
    """VE-FDM: VE's c_skip, c_out, c_noise; c_in = gamma(sigma) on [0.02, 100]. As in the FDM code, the factor uses
    m = 1 whatever `fdm_multiplier` says (the argument is stored, so that the FDM code's checkpoints load)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type='SongUNet', fdm_beta_d=19.9, fdm_beta_min=0.1, fdm_multiplier=1.0, **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._fdm_args(fdm_beta_d, fdm_beta_min, fdm_multiplier)

    def scalings(self, sigma):
        _, c_out, _, c_noise = _ve_scalings(sigma)
        return 1, c_out, self.fdm_gamma(sigma, 1), c_noise

# ----------------------------------------------------------------------------
