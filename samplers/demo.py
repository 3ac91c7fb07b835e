"""What example.py does: pick a model (the bundled demo or an official EDM checkpoint), sample a grid, save a PNG.

Official checkpoints (EDM README) are fetched from `PRETRAINED_BASE`, which the environment variable
`EDM_PRETRAINED_BASE` can point to a mirror or a local folder (`file:///...`); downloads are cached by
dnnlib.util.open_url.
"""

import os
import re
import urllib.parse

import numpy as np
import torch

from torch_utils import persistence
from torch_utils import precision as fast

from .edm import edm_sampler
from .generation import make_grid, save_png, to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, 'checkpoints', 'edm-digits-16x16-cond-ddpmpp.pkl')
PRETRAINED_BASE = 'https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/'

# Models and their recommended sampler settings (EDM README / example.py; edm.md sec. 7.5 and 10).
MODELS = {
    'digits':   dict(file=None, grid_name='digits-16x16', sampler=dict(num_steps=18)),
    'cifar10':  dict(file='edm-cifar10-32x32-cond-vp.pkl', grid_name='cifar10-32x32', sampler=dict(num_steps=18)),
    'ffhq':     dict(file='edm-ffhq-64x64-uncond-vp.pkl', grid_name='ffhq-64x64', sampler=dict(num_steps=40)),
    'afhqv2':   dict(file='edm-afhqv2-64x64-uncond-vp.pkl', grid_name='afhqv2-64x64', sampler=dict(num_steps=40)),
    'imagenet': dict(file='edm-imagenet-64x64-cond-adm.pkl', grid_name='imagenet-64x64',
                     sampler=dict(num_steps=256, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)),
}


def pretrained_url(file):
    """The URL of an official EDM checkpoint file (mirror: EDM_PRETRAINED_BASE)."""
    base = os.environ.get('EDM_PRETRAINED_BASE') or PRETRAINED_BASE
    return base.rstrip('/') + '/' + file


def network_url(dataset):
    """The bundled file or the official URL of the model for `dataset` (mirror: EDM_PRETRAINED_BASE)."""
    model = MODELS[dataset]
    return BUNDLED if model['file'] is None else pretrained_url(model['file'])


def grid_layout(net, cols=None):
    """(rows, cols, class index per image or None): one row per class for nets with at most 16 classes,
    otherwise EDM's 8x8 grid with random classes."""
    if 0 < net.label_dim <= 16:
        cols = cols or 10
        return net.label_dim, cols, np.repeat(np.arange(net.label_dim), cols)
    cols = cols or 8
    return cols, cols, None


@torch.no_grad()
def sample_grid(net, rows, cols, classes=None, seed=0, device=torch.device('cpu'), **sampler_kwargs):
    """Sample rows*cols images with EDM's sampler; returns the grid as uint8 [rows*R, cols*R, C].

    Randomness as in EDM's example.py: the global generator seeded with `seed` draws the latents, then the
    classes (unless given), then the sampler's noise.
    """
    n = rows * cols
    torch.manual_seed(seed)
    latents = torch.randn([n, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = None
    if net.label_dim:
        idx = torch.as_tensor(classes, device=device) if classes is not None else \
            torch.randint(net.label_dim, size=[n], device=device)
        class_labels = torch.eye(net.label_dim, device=device)[idx]
    images = edm_sampler(net, latents, class_labels, randn_like=torch.randn_like, **sampler_kwargs)
    return make_grid(to_uint8(images), cols=cols)


def grid_name(dataset, network=None):
    """The output name: the model's (e.g. 'digits-16x16'), or with `network` the checkpoint's file name without
    its extension (so grids of different checkpoints do not overwrite one another)."""
    if network is None:
        return MODELS[dataset]['grid_name']
    stem = os.path.splitext(os.path.basename(urllib.parse.urlparse(network).path.rstrip('/')))[0]
    return re.sub(r'[^0-9A-Za-z._-]', '_', stem).lstrip('.') or 'network'


def default_device(device=None):
    """`device`, or CUDA if available, else the CPU."""
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


def run(dataset='digits', network=None, outdir='.', seed=0, steps=None, cols=None, device=None, trust_pickle=False,
        precision='fp32'):
    """Load the model, sample its grid and save `outdir/<grid_name(dataset, network)>.png`; returns the path.
    `precision`: see torch_utils.precision."""
    device = default_device(device)
    url = network or network_url(dataset)
    net = persistence.load_network(url, trust_pickle=trust_pickle)['ema'].to(device).eval().requires_grad_(False)
    fast.release_memory()
    net = fast.wrap(net, precision, device)
    sampler_kwargs = dict(MODELS[dataset]['sampler'])
    if steps is not None:
        sampler_kwargs['num_steps'] = steps
    rows, cols, classes = grid_layout(net, cols)
    grid = sample_grid(net, rows, cols, classes, seed=seed, device=device, **sampler_kwargs)
    path = os.path.join(outdir, grid_name(dataset, network) + '.png')
    save_png(grid, path)
    return path
