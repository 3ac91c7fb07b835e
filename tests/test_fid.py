"""fid.py: Fréchet distance against closed forms, statistics, the ref/calc CLI with a stand-in detector, torchrun.

Nothing is downloaded: the detector is a tiny deterministic TorchScript module built here.
"""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import dataset_tool  # noqa: E402 pylint: disable=wrong-import-position
import fid  # noqa: E402 pylint: disable=wrong-import-position
from conftest import error_line  # noqa: E402 pylint: disable=wrong-import-position
DIM = 32
NUM = 41


class StandInDetector(torch.nn.Module):
    """uint8 NCHW -> [N, DIM]: 4x4 average pooling, a fixed random linear map and tanh."""

    def __init__(self, dim=DIM, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer('weight', torch.randn(dim, 3 * 4 * 4, generator=g) * 0.5)
        self.register_buffer('bias', torch.randn(dim, generator=g))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8
        assert return_features
        f = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1)
        return torch.tanh(f @ self.weight.T + self.bias)


def env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)


def run_cli(args):
    result = CliRunner().invoke(fid.main, args, catch_exceptions=True)
    return result



@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('fid')
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(NUM, 8, 8, 3), dtype=np.uint8)
    # Some structure so that features vary along many directions.
    images[:, :4] //= 2
    src = root / 'src'
    src.mkdir()
    for i in range(NUM):
        PIL.Image.fromarray(images[i]).save(src / f'{i:03d}.png')
    zpath = root / 'set.zip'
    dataset_tool.convert_dataset(str(src), str(zpath), progress=False)
    other = root / 'other'
    other.mkdir()
    others = rng.integers(0, 256, size=(NUM, 8, 8, 3), dtype=np.uint8)
    for i in range(NUM):
        PIL.Image.fromarray(others[i]).save(other / f'{i:03d}.png')
    det = StandInDetector()
    det_path = root / 'detector.pt'
    torch.jit.save(torch.jit.script(det), str(det_path))
    # A detector file is code: loading it needs --trust-detector (trust_detector=True).
    return dict(root=root, zip=str(zpath), images=images, other=str(other), others=others, det=det,
                det_path=str(det_path), det_args=[f'--detector={det_path}', '--trust-detector'])


def assert_close(actual, expected):
    # Features are float32: batching changes them by a few ulps, so compare relative to the largest entry.
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def features_of(det, images):
    with torch.no_grad():
        return det(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), return_features=True).double().numpy()

# ----------------------------------------------------------------------------
# Fréchet distance.


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(1)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = fid.calculate_fid_from_inception_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_closed_form_commuting():
    rng = np.random.default_rng(2)
    d = 48
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.01, 5, size=d), rng.uniform(0.01, 5, size=d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.calculate_fid_from_inception_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # Same distribution: zero (up to rounding); the arguments may be float32 (computed in float64).
    assert abs(fid.calculate_fid_from_inception_stats(mu1.astype(np.float32), s1, mu1, s1)) < 1e-5


def test_frechet_one_dimensional():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians with standard deviations s1, s2.
    assert fid.calculate_fid_from_inception_stats([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, rel=1e-12)

# ----------------------------------------------------------------------------
# Statistics.


def test_stats_match_direct_computation(setup):
    mu, sigma = fid.calculate_inception_stats(setup['zip'], detector=setup['det_path'], trust_detector=True,
                                              num_workers=0, max_batch_size=8, device='cpu', progress=False)
    f = features_of(setup['det'], setup['images'])
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (DIM,) and sigma.shape == (DIM, DIM)
    assert_close(mu, f.mean(0))
    assert_close(sigma, np.cov(f, rowvar=False))
    assert np.linalg.matrix_rank(sigma) == DIM


def test_stats_subset_and_grayscale(setup, tmp_path):
    # --num picks a seeded random subset (sorted), like ImageFolderDataset(max_size=num, random_seed=seed).
    mu, _ = fid.calculate_inception_stats(setup['zip'], num_expected=10, seed=3, detector=setup['det'],
                                          num_workers=0, device='cpu', progress=False)
    order = np.arange(NUM)
    np.random.RandomState(3).shuffle(order)
    f = features_of(setup['det'], setup['images'][np.sort(order[:10])])
    assert_close(mu, f.mean(0))
    # Grayscale images are repeated to 3 channels.
    gray = np.random.default_rng(5).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    folder = tmp_path / 'gray'
    folder.mkdir()
    for i in range(5):
        PIL.Image.fromarray(gray[i], 'L').save(folder / f'{i}.png')
    mu, _ = fid.calculate_inception_stats(str(folder), detector=setup['det'], num_workers=0, device='cpu',
                                          progress=False)
    assert_close(mu, features_of(setup['det'], np.stack([gray] * 3, axis=3)).mean(0))

# ----------------------------------------------------------------------------
# Command line (subprocess), torchrun.


@pytest.mark.slow
def test_cli_ref_calc_pipeline(setup):
    root = setup['root']
    ref = root / 'refs' / 'set.npz'
    common = [*setup['det_args'], '--device=cpu', '--workers=1', '--batch=16']
    res = subprocess.run([sys.executable, 'fid.py', 'ref', f'--data={setup["zip"]}', f'--dest={ref}'] + common,
                         cwd=ROOT, env=env(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    with np.load(ref) as data:
        assert sorted(data.files) == ['mu', 'sigma']
        mu_ref, sigma_ref = data['mu'], data['sigma']
    assert mu_ref.dtype == np.float64 and sigma_ref.shape == (DIM, DIM)
    f = features_of(setup['det'], setup['images'])
    assert_close(mu_ref, f.mean(0))
    assert_close(sigma_ref, np.cov(f, rowvar=False))

    # A set against its own reference: ~0.
    res = subprocess.run([sys.executable, 'fid.py', 'calc', f'--images={setup["zip"]}', f'--ref={ref}',
                          f'--num={NUM}'] + common, cwd=ROOT, env=env(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert abs(float(res.stdout.strip().splitlines()[-1])) < 1e-6

    # Another set: the printed value ({:g}) is the Fréchet distance of the two sets' statistics.
    res = subprocess.run([sys.executable, 'fid.py', 'calc', f'--images={setup["other"]}', f'--ref={ref}',
                          f'--num={NUM}'] + common, cwd=ROOT, env=env(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    g = features_of(setup['det'], setup['others'])
    expected = fid.calculate_fid_from_inception_stats(g.mean(0), np.cov(g, rowvar=False), mu_ref, sigma_ref)
    assert expected > 0.01
    assert float(res.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('torchrun') is None and not os.path.exists(os.path.join(os.path.dirname(
    sys.executable), 'torchrun')), reason='torchrun not found')
def test_torchrun_two_processes_match_one(setup):
    root = setup['root']
    torchrun = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
    one, two = root / 'one.npz', root / 'two.npz'
    common = [f'--data={setup["zip"]}', *setup['det_args'], '--device=cpu', '--workers=0',
              '--batch=8']
    res = subprocess.run([sys.executable, 'fid.py', 'ref', f'--dest={one}'] + common, cwd=ROOT, env=env(),
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([torchrun, '--standalone', '--nproc_per_node=2', 'fid.py', 'ref', f'--dest={two}'] + common,
                         cwd=ROOT, env=env(), capture_output=True, text=True, check=False, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count('Done.') == 1  # Only rank 0 reports.
    with np.load(one) as a, np.load(two) as b:
        # Same batches on 1 or 2 ranks (EDM's split), so only the float64 summation order differs.
        np.testing.assert_allclose(b['mu'], a['mu'], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(b['sigma'], a['sigma'], rtol=1e-6, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('torchrun') is None and not os.path.exists(os.path.join(os.path.dirname(
    sys.executable), 'torchrun')), reason='torchrun not found')
def test_torchrun_error_is_one_line_and_every_rank_exits_cleanly(setup):
    torchrun = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
    res = subprocess.run([torchrun, '--standalone', '--nproc_per_node=2', 'fid.py', 'calc', f'--images={setup["zip"]}',
                          f'--ref={setup["root"] / "missing.npz"}', *setup['det_args'], '--device=cpu',
                          '--workers=0'], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith('Error')]
    assert len(lines) == 1 and 'cannot load reference statistics' in lines[0], res.stderr
    # The ranks leave the process group before exiting: no abort at exit (SIGABRT, "terminate called ...").
    assert 'SIGABRT' not in res.stderr and 'terminate called' not in res.stderr, res.stderr

# ----------------------------------------------------------------------------
# Errors: one line, nothing written.


def test_error_fewer_images_than_num(setup):
    line = error_line(run_cli(['calc', f'--images={setup["zip"]}', f'--ref={setup["root"] / "x.npz"}',
                               *setup['det_args'], '--device=cpu', '--workers=0']))
    assert 'cannot load reference statistics' in line  # The reference is checked first.
    ref = setup['root'] / 'good.npz'
    np.savez(ref, mu=np.zeros(DIM), sigma=np.eye(DIM))
    line = error_line(run_cli(['calc', f'--images={setup["zip"]}', f'--ref={ref}', *setup['det_args'],
                               '--device=cpu', '--workers=0', '--num=100']))
    assert f'found {NUM} images' in line and 'at least 100' in line


def test_error_reference_keys_and_dimensions(setup, tmp_path):
    base = ['calc', f'--images={setup["zip"]}', *setup['det_args'], '--device=cpu', '--workers=0',
            f'--num={NUM}']
    np.savez(tmp_path / 'keys.npz', mu=np.zeros(DIM), cov=np.eye(DIM))
    line = error_line(run_cli(base + [f'--ref={tmp_path / "keys.npz"}']))
    assert 'lack sigma' in line and 'found keys: cov, mu' in line
    np.savez(tmp_path / 'shape.npz', mu=np.zeros(DIM), sigma=np.eye(DIM + 1))
    assert 'expected mu [D] and sigma [D, D]' in error_line(run_cli(base + [f'--ref={tmp_path / "shape.npz"}']))
    np.savez(tmp_path / 'dim.npz', mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32))
    line = error_line(run_cli(base + [f'--ref={tmp_path / "dim.npz"}']))
    assert f'2048-dimensional, but the detector gives {DIM} features' in line
    np.save(tmp_path / 'plain.npy', np.zeros(3))
    assert 'not an .npz' in error_line(run_cli(base + [f'--ref={tmp_path / "plain.npy"}']))


def test_error_detector_not_downloadable(setup, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    dest = tmp_path / 'r.npz'
    line = error_line(run_cli(['ref', f'--data={setup["zip"]}', f'--dest={dest}', '--device=cpu', '--workers=0',
                               '--detector=http://127.0.0.1:9/detector.pt', '--trust-detector']))
    assert 'cannot load the feature detector' in line and '--detector=PATH' in line
    # The default (trusted) detector: the message says how to pass a local copy.
    monkeypatch.setattr(fid, 'DEFAULT_DETECTOR_URL', 'http://127.0.0.1:9/inception-2015-12-05.pkl')
    line = error_line(run_cli(['ref', f'--data={setup["zip"]}', f'--dest={dest}', '--device=cpu', '--workers=0']))
    assert 'inception-2015-12-05.pkl' in line and 'pass the local file with --detector=PATH' in line
    assert line.count('download it elsewhere') == 1  # One hint, not the download error's own as well.
    assert not dest.exists()


def test_plain_pickle_detector_needs_trust(setup, tmp_path):
    path = tmp_path / 'det.pkl'
    with open(path, 'wb') as f:
        pickle.dump(StandInDetector(), f)
    dest = tmp_path / 'r.npz'
    args = ['ref', f'--data={setup["zip"]}', f'--dest={dest}', f'--detector={path}', '--device=cpu', '--workers=0']
    assert '--trust-detector' in error_line(run_cli(args))
    assert not dest.exists()
    result = run_cli(args + ['--trust-detector'])
    assert result.exit_code == 0, result.output
    with np.load(dest) as data:
        assert_close(data['mu'], features_of(setup['det'], setup['images']).mean(0))


@pytest.mark.parametrize('workers', [0, 1])
def test_error_mixed_sizes(setup, tmp_path, workers):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    for i in range(4):
        PIL.Image.fromarray(np.zeros((8 if i < 3 else 16,) * 2 + (3,), np.uint8)).save(folder / f'{i}.png')
    dest = tmp_path / 'r.npz'
    line = error_line(run_cli(['ref', f'--data={folder}', f'--dest={dest}', *setup['det_args'],
                               '--device=cpu', f'--workers={workers}']))
    assert '3.png' in line and 'same size' in line
    assert not dest.exists() and os.listdir(tmp_path) == ['mixed']

# ----------------------------------------------------------------------------
# Hostile reference files: only mu and sigma are read, after their headers are checked.


def _npz(path, members):
    """An .npz written member by member (np.save format inside a zip)."""
    import io
    import zipfile
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        for name, value in members.items():
            if isinstance(value, bytes):
                z.writestr(name + '.npy', value)
            else:
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=True)
                z.writestr(name + '.npy', buf.getvalue())
    return str(path)


def test_reference_extra_large_member_is_not_read(tmp_path):
    import tracemalloc
    mu, sigma = np.arange(DIM, dtype=np.float64), np.eye(DIM)
    path = _npz(tmp_path / 'extra.npz', dict(mu=mu, sigma=sigma, junk=np.zeros(10 << 20)))  # 80 MiB, deflated
    assert os.path.getsize(path) < 1 << 20
    tracemalloc.start()
    try:
        got_mu, got_sigma = fid.load_reference_stats(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert peak < 2 << 20, f'peak {peak / 2 ** 20:.1f} MiB'


def _npy_header(shape, descr='<f8'):
    """The bytes of an .npy header announcing `shape` (version 1.0), without the data."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += ' ' * (63 - (len(header) + 10) % 64) + '\n'
    return b'\x93NUMPY\x01\x00' + len(header).to_bytes(2, 'little') + header.encode()


@pytest.mark.parametrize('members,message', [
    (dict(mu=_npy_header([1 << 30]), sigma=np.eye(2)), 'announces [1073741824] values but holds'),
    (dict(mu=np.zeros(2), sigma=_npy_header([2, 2]) + b'\0' * 5), 'sigma.npy is truncated'),
    (dict(mu=np.array([None, 1], dtype=object), sigma=np.eye(2)), 'not floating point (mu is object)'),
    (dict(mu=np.zeros(2), sigma=np.zeros((2, 2), dtype=[('a', '<f8')])), 'not floating point'),
    (dict(mu=np.zeros(0), sigma=np.zeros((0, 0))), 'expected mu [D] and sigma [D, D]'),
    (dict(mu=np.zeros(2), sigma=b'garbage'), 'cannot load reference statistics'),
    (dict(mu=np.zeros(2), **{'s\x1b[2Kigma': np.eye(2)}), 'found keys: mu, s\\x1b[2Kigma'),
])
def test_reference_broken_members(tmp_path, members, message):
    path = _npz(tmp_path / 'r.npz', members)
    with pytest.raises(fid.InputError) as info:
        fid.load_reference_stats(path)
    assert message in str(info.value) and '\n' not in str(info.value)


def test_reference_declared_size_beyond_archive(tmp_path):
    path = _npz(tmp_path / 'r.npz', dict(mu=np.zeros(2), sigma=np.eye(2)))
    from test_dataset import _patch_sizes  # pylint: disable=import-outside-toplevel
    _patch_sizes(path, 'sigma.npy', 4000000000, 4000000000)
    with pytest.raises(fid.InputError, match='more than the whole archive'):
        fid.load_reference_stats(path)


def test_ref_dest_checked_before_the_work(setup, tmp_path):
    folder = tmp_path / 'existing'
    folder.mkdir()
    # The detector does not exist: a late check would report it (or compute first) instead of --dest.
    for dest, message in ((folder, 'is a folder; give the name of the file to write'),
                          (tmp_path / 'file' / 'r.npz', 'is a file, not a folder')):
        (tmp_path / 'file').write_text('x')
        line = error_line(run_cli(['ref', f'--data={setup["zip"]}', f'--dest={dest}', '--detector=/nonexistent.pt',
                                   '--device=cpu', '--workers=0']))
        assert '--dest' in line and message in line
    assert os.listdir(folder) == []

# ----------------------------------------------------------------------------
# Help text.


def live_fid_help():
    """docs/fid-help.txt convention: for each command line, '$ <command>' and then its exact output."""
    text = ''
    for sub in ([], ['calc'], ['ref']):
        cmd = ['python', 'fid.py'] + sub + ['--help']
        out = subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, env=env(), capture_output=True, text=True,
                             check=True).stdout
        text += '$ ' + ' '.join(cmd) + '\n' + out
    return text


@pytest.mark.slow
def test_help_file_is_current():
    with open(os.path.join(ROOT, 'docs', 'fid-help.txt'), encoding='utf-8') as f:
        assert f.read() == live_fid_help(), 'docs/fid-help.txt is stale: regenerate with python tests/test_fid.py'


if __name__ == '__main__':
    # Regenerate docs/fid-help.txt.
    with open(os.path.join(ROOT, 'docs', 'fid-help.txt'), 'w', encoding='utf-8') as f:
        f.write(live_fid_help())
