"""Fréchet Inception Distance (FID): dataset reference statistics (`ref`) and scores of image sets (`calc`).

Statistics follow EDM: features of every image (a seeded random subset of `num` images for `calc`) are summed in
float64 as sum(f) and sum(f^T f) on each rank, all-reduced, and turned into the mean and the unbiased
covariance. The reference ``.npz`` holds ``mu`` [D] and ``sigma`` [D, D] (float64), the format of EDM's published
``fid-refs``; only these two members are read, after their headers are checked (`load_reference_stats`). The
distance is ||mu - mu_r||^2 + tr(S + S_r - 2 sqrtm(S S_r)) in float64 (scipy.linalg.sqrtm), keeping the real part
of the result.

The feature detector
--------------------
By default the standard Inception-v3 feature network used by EDM and StyleGAN3 (a PyTorch port of TensorFlow's
``inception-2015-12-05`` graph) is downloaded once from NVIDIA's fixed URL (`DEFAULT_DETECTOR_URL`) into the
private dnnlib download cache. That file is a plain Python pickle and is the **one trusted pickle** of this
toolkit: it is unpickled with the standard unpickler (which can run code) because it is a known file from a fixed,
official source, and only the bytes this toolkit downloaded are used (their SHA-256 is recorded at download and
checked on every use; ``--detector-sha256`` pins the expected digest). ``--detector PATH|URL`` replaces it with a
TorchScript archive (``torch.jit.save``) or a pickle of a module called as
``detector(uint8 [N, 3, H, W] images, return_features=True)`` that returns [N, D] features. Such a file is code
(TorchScript can read, create and overwrite files when loaded or called), so it is loaded only with
``--trust-detector`` (docs/security.md).

Importable API: :func:`calculate_inception_stats`, :func:`calculate_fid_from_inception_stats`,
:func:`load_detector`, :func:`load_reference_stats`, :func:`save_reference_stats`.
"""

import hashlib
import io
import os
import pickle
import warnings
import zipfile

import click
import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

import dnnlib
from dnnlib import limits
from dnnlib.cli import Group, bool_option, check_output_path, error_message, one_line
from dnnlib.util import InputError, printable
from samplers import selection, sweeps
from torch_utils import distributed as dist
from torch_utils.precision import release_memory
from training.dataset import ImageFolderDataset, ImageShapeError

DEFAULT_DETECTOR_URL = ('https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/'
                        'inception-2015-12-05.pkl')

# ----------------------------------------------------------------------------


class FIDError(click.ClickException):
    """A problem with the inputs of an FID computation; the message is one line.

    `collective=True` marks an error that every rank raises identically; only rank 0 then prints it.
    """

    def __init__(self, message, collective=False):
        super().__init__(message)
        self.collective = collective
        self.rank = dist.get_rank()  # Known when raised: the process group is left before the error is shown.

    def show(self, file=None):
        if not (self.collective and self.rank != 0):
            super().show(file)


def _rank0_first(fn):
    """Run `fn` on rank 0, then on the other ranks; a FIDError on rank 0 is raised on every rank."""
    result, message = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except FIDError as e:
            message = e.message
    message = dist.broadcast_object(message)
    if message is not None:
        raise FIDError(message, collective=True)
    if dist.get_rank() != 0:
        result = fn()
    return result

# ----------------------------------------------------------------------------
# Feature detector.


_detector_cache = {}


def load_detector(source=None, device='cpu', trust_pickle=False, trust_detector=False, sha256=None):
    """Load a feature detector.

    None (or the default URL): the Inception-v3 pickle, downloaded from its fixed official URL into the private
    download cache, with its SHA-256 recorded and checked on every use (dnnlib.util.open_trusted_url); `sha256`
    (hex) pins the expected digest. Any other `source` is a file of code (a TorchScript archive can create and
    overwrite files when it is loaded or called; a pickle can do anything), so it is loaded only with
    `trust_detector=True` (pickles also with `trust_pickle=True`); `sha256` then checks that file.
    """
    device = torch.device(device)
    trusted = source is None or source == DEFAULT_DETECTOR_URL
    source = DEFAULT_DETECTOR_URL if source is None else source
    if not (trusted or trust_detector or trust_pickle):
        raise FIDError(f'--detector {printable(source)}: a detector file is code (TorchScript and pickles can '
                       'read, create and overwrite files when loaded or called); add --trust-detector if you trust '
                       'it, or omit --detector to use the checked Inception-v3 download')
    key = (source, str(device), bool(trust_pickle), bool(trust_detector), sha256)
    if key in _detector_cache:
        return _detector_cache[key]
    try:
        if trusted:
            data = dnnlib.util.open_trusted_url(source, sha256=sha256, verbose=(dist.get_rank() == 0))
        else:
            with dnnlib.util.open_url(source, verbose=(dist.get_rank() == 0)) as f:
                data = f.read()
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
                raise FIDError(f'--detector {printable(source)}: SHA-256 {hashlib.sha256(data).hexdigest()} differs '
                               f'from the expected {printable(sha256)}')
    except FIDError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        hint = ('download it elsewhere and pass the local file with --detector=PATH --trust-detector' if trusted
                else 'pass a local TorchScript file with --detector=PATH')
        reason = one_line(e).split('; ')[0]  # A download error brings its own hint: give only this one.
        raise FIDError(f'cannot load the feature detector {printable(source)}: {reason}; {hint}') from None

    is_zip = data[:4] == b'PK\x03\x04'
    try:
        if is_zip:
            try:
                if not (trusted or trust_detector):
                    raise FIDError(f'--detector {printable(source)}: a TorchScript archive is code (it can create '
                                   'and overwrite files); add --trust-detector if you trust it')
                detector = torch.jit.load(io.BytesIO(data), map_location=device)
            except RuntimeError:  # Not TorchScript: a torch.save archive (trusted above).
                detector = torch.load(io.BytesIO(data), map_location=device, weights_only=False)
        else:
            detector = pickle.loads(data)  # The checked default detector, or an explicitly trusted file.
    except FIDError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise FIDError(f'cannot load the feature detector {printable(source)}: {one_line(e)}') from None
    if not callable(detector):
        raise FIDError(f'--detector {printable(source)}: the file does not hold a callable module')
    if hasattr(detector, 'to'):
        detector = detector.to(device)
    release_memory()
    _detector_cache[key] = detector
    return detector

# ----------------------------------------------------------------------------
# Statistics.


def calculate_inception_stats(image_path, num_expected=None, seed=0, max_batch_size=64, num_workers=3,
                              prefetch_factor=2, device=None, detector=None, trust_pickle=False, feature_dim=None,
                              progress=True, trust_detector=False, detector_sha256=None):
    """Mean [D] and covariance [D, D] (float64 numpy) of the detector features of the images in `image_path`.

    `image_path`: a folder (recursive) or a zip. With `num_expected`, a random subset of that many images (seeded
    by `seed`) is used and fewer images is an error. `detector`: None (the default Inception-v3), a path/URL, or
    a loaded module. `feature_dim`: the expected feature dimension (checked on the first batch). Under torchrun
    every rank processes its share of the batches and the sums are all-reduced; all ranks return the result.
    """
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    rank = dist.get_rank()

    try:
        dataset = ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    except (InputError, IOError) as e:
        raise FIDError(f'cannot read images: {one_line(e)}', collective=True) from None
    if num_expected is not None and len(dataset) < num_expected:
        raise FIDError(f'found {len(dataset)} images in {image_path}, but expected at least {num_expected} '
                       '(lower --num to use fewer)', collective=True)
    if len(dataset) < 2:
        raise FIDError(f'found {len(dataset)} image in {image_path}, but at least 2 are needed for statistics',
                       collective=True)

    if detector is None or isinstance(detector, str):
        dist.print0('Loading feature detector...')
        source = detector
        detector = _rank0_first(lambda: load_detector(source, device=device, trust_pickle=trust_pickle,
                                                      trust_detector=trust_detector, sha256=detector_sha256))

    dist.print0(f'Calculating statistics for {len(dataset)} images...')
    batches = [b for b in dist.rank_batches(len(dataset), max_batch_size) if len(b) > 0]
    loader_kwargs = dict(num_workers=num_workers)
    if num_workers > 0:
        loader_kwargs.update(prefetch_factor=prefetch_factor)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, pin_memory=(device.type == 'cuda'),
                                         **loader_kwargs)

    mu = sigma = None
    try:
        for images, _labels in tqdm(loader, unit='batch', disable=(rank != 0 or not progress)):
            if images.shape[1] == 1:
                images = images.repeat([1, 3, 1, 1])
            try:
                with torch.no_grad():
                    features = detector(images.to(device, non_blocking=True), return_features=True)
            except Exception as e:  # pylint: disable=broad-except
                raise FIDError(f'the feature detector failed on uint8 images of shape {list(images.shape)}: '
                               f'{error_message(e)}') from None
            if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != images.shape[0]:
                shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise FIDError(f'the feature detector returned {shape} for {images.shape[0]} images; expected '
                               '[N, D] features')
            if feature_dim is not None and features.shape[1] != feature_dim:
                raise FIDError(f'the reference statistics are {feature_dim}-dimensional, but the detector gives '
                               f'{features.shape[1]} features; use the detector the reference was made with',
                               collective=True)
            features = features.to(torch.float64)
            if mu is None:
                mu = torch.zeros([features.shape[1]], dtype=torch.float64, device=device)
                sigma = torch.zeros([features.shape[1], features.shape[1]], dtype=torch.float64, device=device)
            mu += features.sum(0)
            sigma += features.T @ features
    except (ImageShapeError, InputError, IOError) as e:
        raise FIDError(error_message(e)) from None

    # Ranks without images (fewer images than ranks) learn the feature dimension from rank 0, which always has some.
    dim = dist.broadcast_object(None if mu is None else mu.shape[0])
    if mu is None:
        mu = torch.zeros([dim], dtype=torch.float64, device=device)
        sigma = torch.zeros([dim, dim], dtype=torch.float64, device=device)
    elif mu.shape[0] != dim:
        raise FIDError(f'the detector gave {mu.shape[0]} features on rank {rank} but {dim} on rank 0')
    dist.all_reduce_sum(mu)
    dist.all_reduce_sum(sigma)
    n = len(dataset)
    mu /= n
    sigma -= mu.ger(mu) * n
    sigma /= n - 1
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrtm(a):
    # scipy.linalg.sqrtm(disp=False) as in EDM; `disp` is deprecated since SciPy 1.16 and removed in later versions.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        try:
            result = scipy.linalg.sqrtm(a, disp=False)
        except TypeError:
            result = scipy.linalg.sqrtm(a)
    return result[0] if isinstance(result, tuple) else result


def calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref):
    """Fréchet distance between N(mu, sigma) and N(mu_ref, sigma_ref), in float64; returns a Python float.

    d^2 = ||mu - mu_ref||^2 + tr(sigma + sigma_ref - 2 sqrtm(sigma sigma_ref)) (Dowson & Landau 1982; Heusel et
    al. 2017, Eq. 6); the real part of the result is kept, like EDM.
    """
    mu, sigma, mu_ref, sigma_ref = (np.asarray(x, dtype=np.float64) for x in (mu, sigma, mu_ref, sigma_ref))
    m = np.square(mu - mu_ref).sum()
    s = _sqrtm(np.dot(sigma, sigma_ref))
    fid = m + np.trace(sigma + sigma_ref - s * 2)
    return float(np.real(fid))

# ----------------------------------------------------------------------------
# Reference files.


def _read_npz_array(archive, key, where, archive_size):
    """Array `key` of an open .npz (zip) after checking its header: no pickled objects, a size within the limits
    of `dnnlib.limits`. Returns None if the archive has no such member."""
    try:
        info = archive.getinfo(key + '.npy')
    except KeyError:
        return None
    limits.check_zip_member(f'{where}:{key}.npy', info, archive_size)
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f'{key}.npy has the unsupported format version {version}')
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.kind != 'f' or dtype.fields is not None or dtype.subdtype is not None:
            raise InputError(f'reference statistics {printable(where)} are not floating point ({key} is {dtype})')
        count = int(np.prod(shape, dtype=object))
        if count * dtype.itemsize > info.file_size:
            raise ValueError(f'{key}.npy announces {list(shape)} values but holds {info.file_size} bytes')
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f'{key}.npy is truncated')
    return np.frombuffer(data, dtype=dtype).reshape(shape, order='F' if fortran else 'C')


def load_reference_stats(path_or_url):
    """(mu [D], sigma [D, D]) float64 from an ``.npz`` path or URL. Only the members mu and sigma are read, after
    their headers are checked; any problem raises InputError (one line)."""
    where = printable(path_or_url)
    try:
        with dnnlib.util.open_url(path_or_url) as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            if f.read(4) != b'PK\x03\x04':
                raise ValueError('not an .npz archive')
            with zipfile.ZipFile(f) as archive:
                arrays = {key: _read_npz_array(archive, key, where, size) for key in ('mu', 'sigma')}
                missing = [key for key, value in arrays.items() if value is None]
                if missing:
                    found = sorted(os.path.splitext(name)[0] for name in archive.namelist())
                    raise InputError(f'reference statistics {where} lack {" and ".join(missing)} (found keys: '
                                     f'{printable(", ".join(found)) or "none"}); expected an .npz with mu [D] and '
                                     'sigma [D, D]')
    except InputError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise InputError(f'cannot load reference statistics {where}: {printable(one_line(e))}') from None
    mu, sigma = arrays['mu'], arrays['sigma']
    if mu.ndim != 1 or mu.shape[0] == 0 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputError(f'reference statistics {where} have mu of shape {list(mu.shape)} and sigma of shape '
                         f'{list(sigma.shape)}; expected mu [D] and sigma [D, D]')
    return mu.astype(np.float64), sigma.astype(np.float64)


def save_reference_stats(path, mu, sigma):
    """Write ``np.savez(mu=..., sigma=...)`` atomically (temporary name, then rename)."""
    with dnnlib.util.atomic_path(path) as tmp, open(tmp, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma)

# ----------------------------------------------------------------------------
# Run directories: the ckpt_* folders of a checkpoint sweep (generate.py without --network).


def is_run_dir(path):
    """True if `path` is a directory with ckpt_* image folders or with checkpoints of a training run."""
    if not os.path.isdir(path):
        return False
    try:
        return bool(sweeps.image_folders(path) or sweeps.checkpoints(path))
    except ValueError:
        return False


def calc_run_dir(run_dir, mu_ref, sigma_ref, num_expected=50000, seed=0, **stats_kwargs):
    """FID of every ckpt_* folder of `run_dir` (`samplers.sweeps.fid_rows`); a folder with too few images is
    reported in its row. Every rank returns the rows."""
    def score(folder):
        try:
            mu, sigma = calculate_inception_stats(image_path=folder, num_expected=num_expected, seed=seed,
                                                  feature_dim=mu_ref.shape[0], **stats_kwargs)
        except FIDError as e:
            raise ValueError(e.message) from None
        return calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref)
    try:
        return sweeps.fid_rows(run_dir, score)
    except ValueError as e:
        raise FIDError(str(e), collective=True) from None

# ----------------------------------------------------------------------------
# Command line.


def _device_callback(ctx, param, value):
    if value is None:
        return None
    try:
        device = torch.device(value)
    except RuntimeError as e:
        raise click.BadParameter(f'{value!r} is not a torch device ({one_line(e)})', ctx=ctx, param=param)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine; use --device=cpu', ctx=ctx, param=param)
    return value


_CONTEXT = dict(terminal_width=80, max_content_width=80)


def _common_options(fn):
    options = [
        click.option('--batch', help='Maximum batch size per process', metavar='INT',
                     type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--detector', help='Feature detector file (code: needs --trust-detector)  [default: '
                     'Inception-v3]', metavar='PATH|URL', type=str, default=None),
        bool_option('--trust-detector', 'trust_detector',
                    help='Run the --detector file, which is code (trusted files only)'),
        click.option('--detector-sha256', 'detector_sha256', help='Expected SHA-256 of the detector file',
                     metavar='HEX', type=str, default=None),
        bool_option('--trust-pickle', 'trust_pickle', help='Allow a plain pickle as --detector (runs code in it)'),
        click.option('--device', help='Torch device  [default: cuda if available, else cpu]', metavar='DEVICE',
                     type=str, default=None, callback=_device_callback),
        click.option('--workers', help='Data loader worker processes', metavar='INT', type=click.IntRange(min=0),
                     default=3, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(cls=Group, context_settings=_CONTEXT)
def main():
    """Calculate Frechet Inception Distance (FID).

    \b
    Reference statistics of a dataset:
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz

    \b
    FID of generated images against published reference statistics:
    python fid.py calc --images=fid-tmp \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    Several processes (GPUs, or gloo on CPU):
    torchrun --standalone --nproc_per_node=2 fid.py calc --images=fid-tmp \\
        --ref=fid-refs/my-dataset.npz

    The default feature detector is the Inception-v3 network used by EDM and
    StyleGAN3, downloaded once from NVIDIA's official URL into a private cache;
    its SHA-256 is recorded at download and checked on every use. It is the
    one pickle this toolkit runs without being asked, because it is a known
    file from a fixed source. --detector replaces it with a TorchScript
    archive (or pickle) of a module called as detector(uint8 NCHW images,
    return_features=True) that returns [N, D] features; such a file is code,
    so it needs --trust-detector.

    Recent torchrun versions reject --num before the script as an ambiguous
    abbreviation of their own --numa-binding option; put -- before the
    script: torchrun --standalone --nproc_per_node=8 -- fid.py calc ... --num=N
    """


@main.command(context_settings=_CONTEXT)
@click.option('--images', 'image_path', help='Folder or zip of images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics (.npz path or URL)', metavar='NPZ|URL', type=str,
              required=True)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2),
              default=50000, show_default=True)
@click.option('--seed', help='Random seed for choosing the images', metavar='INT', type=int, default=0,
              show_default=True)
@_common_options
def calc(image_path, ref_path, num_expected, seed, batch, detector, trust_detector, detector_sha256, trust_pickle,
         device, workers):
    """Calculate FID of a set of images against reference statistics.

    With more than --num images, a random subset of --num images (chosen by
    --seed) is used; with fewer, this is an error.

    --images=RUN_DIR, a training run directory sampled by generate.py
    without --network, scores every ckpt_* folder: a table is printed and
    written to RUN_DIR/fid.json.
    """
    try:
        device = dist.init(device)

        def load_ref():
            dist.print0(f'Loading reference statistics from {ref_path}...')
            try:
                return load_reference_stats(ref_path)
            except InputError as e:
                raise FIDError(str(e)) from None
        mu_ref, sigma_ref = _rank0_first(load_ref)
        if is_run_dir(image_path):
            trust = dict(trust_pickle=trust_pickle, trust_detector=trust_detector, sha256=detector_sha256)
            _calc_run_dir(image_path, ref_path, mu_ref, sigma_ref, num_expected, seed, batch, detector, trust, device,
                          workers)
            return
        mu, sigma = calculate_inception_stats(image_path=image_path, num_expected=num_expected, seed=seed,
                                              max_batch_size=batch, num_workers=workers, device=device,
                                              detector=detector, trust_pickle=trust_pickle,
                                              trust_detector=trust_detector, detector_sha256=detector_sha256,
                                              feature_dim=mu_ref.shape[0])
        dist.print0('Calculating FID...')
        if dist.get_rank() == 0:
            fid = calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref)
            print(f'{fid:g}')
        dist.barrier()
    finally:
        dist.shutdown()  # On every exit path (errors too): a process that exits in the group can abort.


def _calc_run_dir(run_dir, ref_path, mu_ref, sigma_ref, num_expected, seed, batch, detector, trust, device,
                  workers):
    if detector is None or isinstance(detector, str):
        source = detector
        detector = _rank0_first(lambda: load_detector(source, device=device, **trust))
    rows = calc_run_dir(run_dir, mu_ref, sigma_ref, num_expected=num_expected, seed=seed, max_batch_size=batch,
                        num_workers=workers, device=device, detector=detector)
    if dist.get_rank() == 0:
        print(sweeps.format_fid_table(rows))
        path = os.path.join(run_dir, 'fid.json')
        selection.write_json(path, dict(ref=ref_path, num=num_expected, seed=seed, rows=rows))
        print(f'Saved the table to {path}')
    dist.barrier()


@main.command(context_settings=_CONTEXT)
@click.option('--data', 'dataset_path', help='Dataset folder or zip', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path', help='Output .npz file', metavar='NPZ', type=str, required=True)
@_common_options
def ref(dataset_path, dest_path, batch, detector, trust_detector, detector_sha256, trust_pickle, device, workers):
    """Calculate reference statistics (mu, sigma) of a dataset for 'calc'."""
    check_output_path(dest_path, '--dest', folder=False)  # Before the work, not after it.
    try:
        device = dist.init(device)
        mu, sigma = calculate_inception_stats(image_path=dataset_path, max_batch_size=batch, num_workers=workers,
                                              device=device, detector=detector, trust_pickle=trust_pickle,
                                              trust_detector=trust_detector, detector_sha256=detector_sha256)
        if dist.get_rank() == 0:
            dist.print0(f'Saving reference statistics to {dest_path}...')
            try:
                save_reference_stats(dest_path, mu, sigma)
            except OSError as e:
                raise FIDError(f'cannot write {dest_path}: {one_line(e)}') from None
        dist.barrier()
        dist.print0('Done.')
    finally:
        dist.shutdown()  # On every exit path (errors too): a process that exits in the group can abort.


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
