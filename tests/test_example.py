"""example.py: the bundled demo grid, and official checkpoints by URL (served locally; tests never download)."""
import functools
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import example
from samplers import demo
from torch_utils import persistence
from training.networks import EDMPrecond

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stand_in(resolution, label_dim, seed=0):
    torch.manual_seed(seed)
    return EDMPrecond(resolution, 3, label_dim, model_type='SongUNet', model_channels=8, channel_mult=[1],
                      num_blocks=1, attn_resolutions=[], dropout=0).eval()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """A 127.0.0.1 HTTP server with stand-ins named like the official checkpoints; records requested paths."""
    folder = tmp_path_factory.mktemp('pretrained')
    for name, model in demo.MODELS.items():
        if model['file']:
            res = 32 if name == 'cifar10' else 64
            label_dim = dict(cifar10=10, imagenet=1000).get(name, 0)
            persistence.save_pickle(dict(ema=stand_in(res, label_dim)), str(folder / model['file']))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield dict(url=f'http://127.0.0.1:{httpd.server_address[1]}/', requests=requests, folder=folder)
    httpd.shutdown()



@pytest.mark.parametrize('dataset,steps,churn', [('cifar10', 18, None), ('ffhq', 40, None), ('afhqv2', 40, None),
                                                  ('imagenet', 256, (40, 0.05, 50, 1.003))])
def test_official_checkpoints_by_url_with_recommended_settings(server, tmp_path, monkeypatch, dataset, steps, churn):
    calls = []

    def fake_sampler(net, latents, class_labels=None, randn_like=None, **kwargs):
        calls.append(dict(kwargs, labels=class_labels, shape=tuple(latents.shape)))
        return torch.zeros_like(latents)

    monkeypatch.setattr(demo, 'edm_sampler', fake_sampler)
    monkeypatch.setenv('EDM_PRETRAINED_BASE', server['url'])
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    res = CliRunner().invoke(example.main, [f'--dataset={dataset}', f'--outdir={tmp_path}'], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert server['requests'][-1] == '/' + demo.MODELS[dataset]['file']
    (call,) = calls
    assert call['num_steps'] == steps
    if churn:
        assert (call['S_churn'], call['S_min'], call['S_max'], call['S_noise']) == churn
    else:
        assert not {'S_churn', 'S_min', 'S_max', 'S_noise'} & set(call)
    res_px = 32 if dataset == 'cifar10' else 64
    if dataset == 'cifar10':   # Ten classes: one row per class.
        assert call['shape'] == (100, 3, 32, 32)
        assert call['labels'].argmax(1).tolist() == np.repeat(np.arange(10), 10).tolist()
    else:                      # EDM's 8x8 grid.
        assert call['shape'] == (64, 3, res_px, res_px)
    with PIL.Image.open(tmp_path / (demo.MODELS[dataset]['grid_name'] + '.png')) as img:
        side = (10 if dataset == 'cifar10' else 8) * res_px
        assert img.size == (side, side) and img.mode == 'RGB'


@pytest.mark.slow
def test_network_override_samples_for_real(server, tmp_path):
    url = (server['folder'] / 'edm-cifar10-32x32-cond-vp.pkl').as_uri()      # file:// URL
    res = subprocess.run([sys.executable, 'example.py', f'--network={url}', '--dataset=cifar10', '--steps=2',
                          '--cols=2', f'--outdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 0, res.stderr[-2000:]
    with PIL.Image.open(tmp_path / 'edm-cifar10-32x32-cond-vp.png') as img:  # Named after the network.
        pixels = np.asarray(img)
    assert pixels.shape == (320, 64, 3) and pixels.std() > 1      # 10 class rows x 2 columns, not blank.


@pytest.mark.slow
def test_missing_network_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, 'example.py', f'--network={tmp_path}/none.pkl', f'--outdir={tmp_path}'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()] == [res.stderr.strip()]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_bundled_demo_grid(tmp_path):
    assert os.path.getsize(demo.BUNDLED) <= 10 * 2 ** 20
    net = persistence.load_network(demo.BUNDLED)['ema']
    assert (net.img_resolution, net.img_channels, net.label_dim) == (16, 1, 10)
    # The default command, with fewer columns and steps to keep the test short.
    res = subprocess.run([sys.executable, 'example.py', f'--outdir={tmp_path}', '--cols=3', '--steps=6'], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 0, res.stderr[-2000:]
    with PIL.Image.open(tmp_path / 'digits-16x16.png') as img:
        assert img.mode == 'L' and img.size == (3 * 16, 10 * 16)
        rows = np.asarray(img).reshape(10, 16, 3 * 16).astype(np.float32)
    # Digits are bright strokes on black: every row (class) has ink, and rows differ from one another.
    assert all(row.mean() > 10 for row in rows)
    assert np.abs(rows[:, None] - rows[None]).mean(axis=(2, 3))[~np.eye(10, dtype=bool)].min() > 5


def test_network_option_names_the_grid_after_the_network(server, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, 'edm_sampler', lambda net, latents, *a, **k: torch.zeros_like(latents))
    names = []
    for file in ('edm-ffhq-64x64-uncond-vp.pkl', 'edm-afhqv2-64x64-uncond-vp.pkl'):
        res = CliRunner().invoke(example.main, [f'--network={(server["folder"] / file).as_uri()}',
                                                f'--outdir={tmp_path}', '--steps=2'], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        names.append(file.replace('.pkl', '.png'))
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # Neither overwrote the other, nor digits-16x16.png.
    assert demo.grid_name('digits', 'https://host/a/net%20x.pkl?x=1') == 'net_20x'
    assert demo.grid_name('digits', '/x/.hidden.pkl') == 'hidden' and demo.grid_name('cifar10') == 'cifar10-32x32'


def test_refuses_torchrun_with_one_line(tmp_path):
    for rank, count in (('0', 1), ('1', 0)):
        res = CliRunner().invoke(example.main, [f'--outdir={tmp_path}'], env=dict(WORLD_SIZE='2', RANK=rank))
        errors = [line for line in res.output.splitlines() if line.startswith('Error')]
        assert res.exit_code == 2 and len(errors) == count, res.output
        assert not errors or errors[0] == 'Error: example.py runs as one process; start it with python, not torchrun'
    assert os.listdir(tmp_path) == []
