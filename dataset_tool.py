"""Convert image collections into the EDM / StyleGAN dataset layout.

Output layout (identical to the EDM and StyleGAN2-ADA/StyleGAN3 tools, so datasets can be mixed):

* an uncompressed (ZIP_STORED) ``.zip`` or a plain folder;
* images ``00000/img00000000.png``, ``00000/img00000001.png``, ... (1000 per sub-folder), written by PIL as PNG
  with ``compress_level=0``, mode ``L`` or ``RGB``;
* a root ``dataset.json`` holding ``{"labels": [["00000/img00000000.png", 6], ...]}``, or ``{"labels": null}``
  when some image has no label.

Sources: a folder of images (recursive), a ``.zip`` of images, the CIFAR-10 python tarball
(``cifar-10-python.tar.gz``), MNIST (``train-images-idx3-ubyte.gz`` + ``train-labels-idx1-ubyte.gz``) and LSUN
LMDB folders (``*_lmdb``; needs the optional packages ``lmdb`` and ``opencv-python``).

Resizing uses PIL's LANCZOS filter with EDM's crop rules, so the same input gives the same pixels. Images are
streamed one at a time (except the fixed-size CIFAR-10 and MNIST arrays), and the destination is written under a
temporary name and renamed only when the whole conversion succeeded: an error leaves nothing behind.

Deliberate differences from EDM's tool: palette (``P``) images are converted to RGB and 1-bit images to ``L``
(EDM would store palette indices as gray levels); an existing non-empty ``.zip`` destination is refused instead
of overwritten; the CIFAR-10 and MNIST readers accept any number of images (the real files have 50000 / 60000).
Everything here is importable: :func:`convert_dataset` is the whole tool without the command line.

Sources are untrusted input: the CIFAR-10 pickles are read by a restricted unpickler that rebuilds plain numeric
arrays only (`torch_utils.safe_numpy`), compressed members and decoded images are checked against
`dnnlib.limits` before they are produced, and names taken from a source are printed escaped.
"""

import gzip
import io
import json
import os
import re
import shutil
import sys
import tarfile
import uuid
import zipfile

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

from dnnlib import limits
from dnnlib.cli import Command, one_line, refuse_torchrun
from dnnlib.util import InputError, printable
from torch_utils.safe_numpy import ArrayUnpickler
from training import dataset as dataset_layout
from training.dataset import archive_name, encode_png

# ----------------------------------------------------------------------------
# Errors.


class DatasetToolError(click.ClickException):
    """A conversion problem, reported as one line (``Error: ...``) by the command line. Names taken from the
    source are escaped with `dnnlib.util.printable` by whoever builds the message."""

# ----------------------------------------------------------------------------
# Small helpers.


def is_image_file_name(name):
    """True if PIL knows the (case-insensitive) extension of `name`."""
    PIL.Image.init()
    ext = os.path.splitext(str(name))[1].lower()
    return ext != '' and ext in PIL.Image.EXTENSION


def parse_resolution(text):
    """'64x64' or '64,64' -> (width, height)."""
    match = re.fullmatch(r'\s*(\d+)\s*[x,]\s*(\d+)\s*', str(text))
    if match is None:
        raise ValueError(f'{text!r} is not a resolution like 64x64 (width x height)')
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise ValueError(f'{text!r}: width and height must be positive')
    return width, height


def _to_array(image, where):
    """Decoded PIL image -> uint8 HW (grayscale) or HWC array, as np.array(image) would give for L/RGB."""
    mode = image.mode
    if mode == '1':
        image = image.convert('L')
    elif mode in ('CMYK', 'RGBX', 'YCbCr'):  # e.g. the CMYK JPEGs in ImageNet's training set.
        image = image.convert('RGB')
    elif mode in ('P', 'PA'):
        has_alpha = mode == 'PA' or 'transparency' in image.info
        image = image.convert('RGBA' if has_alpha else 'RGB')
    elif mode not in ('L', 'RGB', 'LA', 'RGBA'):
        raise DatasetToolError(f'{where}: unsupported pixel format {mode!r} (only 8-bit grayscale or RGB images '
                               'can be converted)')
    array = np.array(image)
    if array.dtype != np.uint8:
        raise DatasetToolError(f'{where}: unsupported pixel type {array.dtype} (8-bit images only)')
    if array.ndim == 3 and array.shape[2] not in (1, 3):
        raise DatasetToolError(f'{where}: image has {array.shape[2]} channels (mode {image.mode}); only grayscale '
                               '(1 channel) or RGB (3 channels) images can be converted')
    return array


def decode_image(data, where):
    """Decode image bytes into a uint8 array; a corrupt file, or one whose decoded size exceeds the limits of
    `dnnlib.limits`, raises DatasetToolError naming `where`."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            limits.check_expansion(where, 'the decoded image', len(data), width * height * len(image.getbands()))
            image.load()
            return _to_array(image, where)
    except DatasetToolError:
        raise
    except InputError as e:
        raise DatasetToolError(str(e)) from None
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetToolError(f'cannot read image {where}: {printable(one_line(e))}') from None

# ----------------------------------------------------------------------------
# Sources. Each opener returns (number of images or None, iterator of (where, HW[C] uint8 array, label or None)).


def _sort_key_path_parts(relpath):
    # Sort like pathlib.Path objects (component by component), which is how the EDM tool orders folder contents.
    return tuple(relpath.split('/'))


def _labels_from_json(text, where):
    try:
        return dataset_layout.parse_labels(text, where) or {}
    except InputError as e:
        raise DatasetToolError(str(e)) from None


def open_image_folder(source, max_images=None):
    """Every image file below `source` (recursive, sorted), labels from `source/dataset.json` or sub-folder names."""
    relpaths = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for fname in files:
            path = os.path.join(root, fname)
            if is_image_file_name(fname) and os.path.isfile(path):
                relpaths.append(os.path.relpath(path, source).replace(os.sep, '/'))
    relpaths.sort(key=_sort_key_path_parts)

    labels = {}
    meta_path = os.path.join(source, 'dataset.json')
    if os.path.isfile(meta_path):
        with open(meta_path, 'r', encoding='utf-8') as f:
            labels = _labels_from_json(f.read(), meta_path)
    if len(labels) == 0:
        # No labels given: one class per top-level sub-folder (files at the root form the class ''), if several.
        top = {rel: (rel.split('/', 1)[0] if '/' in rel else '') for rel in relpaths}
        classes = {name: idx for idx, name in enumerate(sorted(set(top.values())))}
        if len(classes) > 1:
            labels = {rel: classes[name] for rel, name in top.items()}

    count = len(relpaths) if max_images is None else min(len(relpaths), max_images)

    def iterate():
        for rel in relpaths[:count]:
            path = os.path.join(source, *rel.split('/'))
            try:
                with open(path, 'rb') as file:
                    data = file.read()
            except OSError as e:
                raise DatasetToolError(f'cannot read image {printable(path)}: {e.strerror or one_line(e)}') from None
            yield printable(path), decode_image(data, printable(path)), labels.get(rel)
    return count, iterate()


def _read_zip_member(z, name, source, size):
    try:
        return limits.read_zip_member(z, name, f'{source}:{name}', size)
    except InputError as e:
        raise DatasetToolError(str(e)) from None


def open_image_zip(source, max_images=None):
    """Every image in a zip archive (sorted names), labels from the archive's dataset.json."""
    size = os.path.getsize(source)
    try:
        with zipfile.ZipFile(source) as z:
            names = sorted(name for name in z.namelist() if is_image_file_name(name) and not name.endswith('/'))
            labels = {}
            if 'dataset.json' in z.namelist():
                text = _read_zip_member(z, 'dataset.json', source, size)
                labels = _labels_from_json(text, f'{source}:dataset.json')
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DatasetToolError(f'cannot read zip archive {printable(source)}: {printable(one_line(e))}') from None
    count = len(names) if max_images is None else min(len(names), max_images)

    def iterate():
        with zipfile.ZipFile(source) as z:
            for name in names[:count]:
                where = printable(f'{source}:{name}')
                try:
                    data = _read_zip_member(z, name, source, size)
                except DatasetToolError:
                    raise
                except Exception as e:  # pylint: disable=broad-except
                    raise DatasetToolError(f'cannot read image {where}: {printable(one_line(e))}') from None
                yield where, decode_image(data, where), labels.get(name)
    return count, iterate()


CIFAR_MAX_ENTRIES = 64          # The real archive has 8 entries.
CIFAR_MAX_PICKLE_OPS = 1 << 20  # A real batch of 10000 images is about 50000 pickle operations.


def _cifar_members(tar, source):
    """The TarInfo of data_batch_1..5, looking at no more than CIFAR_MAX_ENTRIES entries."""
    wanted = {f'cifar-10-batches-py/data_batch_{b}': b for b in range(1, 6)}
    found = {}
    for count, info in enumerate(tar):
        if count >= CIFAR_MAX_ENTRIES:
            raise DatasetToolError(f'{source}: more than {CIFAR_MAX_ENTRIES} entries; not a CIFAR-10 python archive')
        if info.name in wanted:
            if not info.isfile():
                raise DatasetToolError(f'{source}: {info.name} is not a regular file')
            found[wanted[info.name]] = info
    for b, name in enumerate(wanted, start=1):
        if b not in found:
            raise DatasetToolError(f'{source}: {name} is missing; not a CIFAR-10 python archive')
    return [found[b] for b in range(1, 6)]


def open_cifar10(source, max_images=None):
    """The CIFAR-10 python tarball: data_batch_1..5 (the test batch is not used), 32x32 RGB, labels 0..9."""
    images, labels = [], []
    stored, total = os.path.getsize(source), 0
    try:
        with tarfile.open(source, 'r:gz') as tar:
            for info in _cifar_members(tar, source):
                member = info.name
                total += info.size  # The sizes the archive declares, checked before anything is inflated.
                limits.check_expansion(f'{source}:{member}', 'the uncompressed batches', stored, total)
                with tar.extractfile(info) as file:
                    data = file.read(info.size)
                ArrayUnpickler.check_size(data, CIFAR_MAX_PICKLE_OPS)
                data = ArrayUnpickler(io.BytesIO(data), encoding='latin1').load()
                if not isinstance(data, dict) or 'data' not in data or 'labels' not in data:
                    raise DatasetToolError(f'{source}: {member} has no "data"/"labels"; not a CIFAR-10 python batch')
                batch_images = np.asarray(ArrayUnpickler.resolve(data['data']))
                if batch_images.dtype != np.uint8 or batch_images.ndim != 2 or batch_images.shape[1] != 3 * 32 * 32:
                    raise DatasetToolError(f'{source}: {member} holds {batch_images.dtype} data of shape '
                                           f'{list(batch_images.shape)}; CIFAR-10 images are uint8 rows of 3072 values')
                images.append(batch_images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # NCHW -> NHWC
                labels.append(np.asarray(ArrayUnpickler.resolve(data['labels'])).reshape(-1))
    except DatasetToolError:
        raise
    except InputError as e:
        raise DatasetToolError(str(e)) from None
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetToolError(f'cannot read CIFAR-10 archive {source}: {printable(one_line(e))}') from None
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in 'iu':
        raise DatasetToolError(f'{source}: expected one integer label per image, got {labels.dtype} labels of shape '
                               f'{list(labels.shape)} for {images.shape[0]} images')
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetToolError(f'{source}: CIFAR-10 labels must lie in 0..9, found {labels.min()}..{labels.max()}')
    count = len(images) if max_images is None else min(len(images), max_images)

    def iterate():
        for idx in range(count):
            yield f'{source}[{idx}]', images[idx], int(labels[idx])
    return count, iterate()


def _read_idx(path, magic, dims):
    with gzip.open(path, 'rb') as f:
        data = limits.read_limited(f, path, 'the uncompressed file', os.path.getsize(path))
    header = 4 * (1 + dims)
    if len(data) < header:
        raise DatasetToolError(f'{path}: file too short for an MNIST IDX header')
    values = np.frombuffer(data[:header], dtype='>u4')
    if int(values[0]) != magic:
        raise DatasetToolError(f'{path}: not an MNIST IDX file (magic number {int(values[0])}, expected {magic})')
    shape = [int(v) for v in values[1:]]
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise DatasetToolError(f'{path}: holds {array.size} values, the header announces {shape}')
    return array.reshape(shape)


def open_mnist(source, max_images=None):
    """MNIST training set: 28x28 grayscale, zero-padded by 2 to 32x32, labels from the matching labels file."""
    labels_path = os.path.join(os.path.dirname(source), 'train-labels-idx1-ubyte.gz')
    if not os.path.isfile(labels_path):
        raise DatasetToolError(f'MNIST labels not found: expected {labels_path} next to {source}')
    try:
        images = _read_idx(source, 2051, 3)
        labels = _read_idx(labels_path, 2049, 1)
    except DatasetToolError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetToolError(f'cannot read MNIST files {source}: {one_line(e)}') from None
    if images.shape[1:] != (28, 28):
        raise DatasetToolError(f'{source}: MNIST images are 28x28, found {images.shape[2]}x{images.shape[1]}')
    if labels.shape != (images.shape[0],):
        raise DatasetToolError(f'{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images')
    if labels.size and labels.max() > 9:
        raise DatasetToolError(f'{labels_path}: MNIST labels must lie in 0..9, found up to {labels.max()}')
    count = len(images) if max_images is None else min(len(images), max_images)

    def iterate():
        for idx in range(count):
            yield f'{source}[{idx}]', np.pad(images[idx], 2), int(labels[idx])
    return count, iterate()


def open_lmdb(source, max_images=None):
    """LSUN LMDB folder (no labels). Decoded with OpenCV like the EDM tool; undecodable entries are skipped."""
    try:
        import cv2  # pylint: disable=import-outside-toplevel
        import lmdb  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DatasetToolError('LSUN LMDB sources need the optional packages lmdb and opencv-python: '
                               'pip install lmdb opencv-python') from None
    try:
        with lmdb.open(source, readonly=True, lock=False) as env:
            entries = env.stat()['entries']
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetToolError(f'cannot open LMDB database {source}: {one_line(e)}') from None
    count = entries if max_images is None else min(entries, max_images)

    def iterate():
        produced = 0
        with lmdb.open(source, readonly=True, lock=False) as env, env.begin(write=False) as txn:
            for key, value in txn.cursor():
                if produced >= count:
                    break
                where = printable(f'{source}:{key.decode("utf-8", "replace")}')
                produced += 1
                img = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), cv2.IMREAD_COLOR)
                if img is not None:
                    img = np.ascontiguousarray(img[:, :, ::-1])  # OpenCV decodes BGR.
                else:
                    try:
                        img = decode_image(io.BytesIO(value), where)
                    except DatasetToolError as e:
                        tqdm.write(f'Skipping {where}: {e.message}', file=sys.stderr)
                        continue
                yield where, img, None
    return count, iterate()


def open_source(source, max_images=None):
    """Recognise the source type of `source` and open it (see the module docstring)."""
    if not os.path.exists(source):
        raise DatasetToolError(f'--source {source}: no such file or folder')
    base = os.path.basename(os.path.normpath(source))
    if os.path.isdir(source):
        if base.endswith('_lmdb'):
            return open_lmdb(source, max_images)
        return open_image_folder(source, max_images)
    if base == 'cifar-10-python.tar.gz':
        return open_cifar10(source, max_images)
    if base == 'train-images-idx3-ubyte.gz':
        return open_mnist(source, max_images)
    if base.lower().endswith('.zip'):
        return open_image_zip(source, max_images)
    raise DatasetToolError(f'--source {source}: unknown source type (expected an image folder, a .zip of images, '
                           'cifar-10-python.tar.gz, train-images-idx3-ubyte.gz or an LSUN *_lmdb folder)')

# ----------------------------------------------------------------------------
# Transforms: all resizing is PIL LANCZOS, crops as in the EDM tool.


def _lanczos(img, width, height):
    return np.array(PIL.Image.fromarray(img).resize((width, height), PIL.Image.Resampling.LANCZOS))


def _gray_to_rgb(img):
    return np.repeat(img[:, :, np.newaxis], 3, axis=2) if img.ndim == 2 else img


def transform_image(img, transform=None, resolution=None):
    """Apply `transform` (None, 'center-crop' or 'center-crop-wide') and `resolution` (width, height).

    Returns the new uint8 array, or None when 'center-crop-wide' skips an image that is too small.
    """
    height, width = img.shape[:2]
    if transform is None:
        if resolution is None or (width, height) == tuple(resolution):
            return img
        return _lanczos(img, *resolution)
    if resolution is None:
        raise DatasetToolError(f'--transform={transform} needs --resolution=WxH')
    out_w, out_h = resolution
    if transform == 'center-crop':
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crop = _gray_to_rgb(img[top:top + side, left:left + side])
        return _lanczos(np.ascontiguousarray(crop), out_w, out_h)
    if transform == 'center-crop-wide':
        crop_h = int(np.round(out_w * height / width))
        if width < out_w or crop_h < out_h:
            return None
        top = (height - crop_h) // 2
        crop = _gray_to_rgb(img[top:top + crop_h])
        resized = _lanczos(np.ascontiguousarray(crop), out_w, out_h)
        canvas = np.zeros([out_w, out_w, 3], dtype=np.uint8)
        canvas[(out_w - out_h) // 2:(out_w - out_h) // 2 + out_h] = resized
        return canvas
    raise DatasetToolError(f'unknown transform {transform!r} (choose center-crop or center-crop-wide)')


# ----------------------------------------------------------------------------
# Destinations, written under a temporary name and renamed at the end.


class _Destination:
    """Write files into a zip or a folder; `commit()` publishes it, `abort()` removes every trace."""

    def __init__(self, dest):
        self.dest = dest
        self.is_zip = dest.lower().endswith('.zip')
        parent = os.path.dirname(os.path.abspath(dest))
        if self.is_zip:
            if os.path.isdir(dest):
                raise DatasetToolError(f'--dest {dest} is a folder, not a zip file')
            if os.path.exists(dest) and os.path.getsize(dest) > 0:
                raise DatasetToolError(f'--dest {dest} already exists and holds data; remove it or choose a new name')
        else:
            if os.path.exists(dest) and not os.path.isdir(dest):
                raise DatasetToolError(f'--dest {dest} is an existing file; give a folder or a name ending in .zip')
            if os.path.isdir(dest) and len(os.listdir(dest)) != 0:
                raise DatasetToolError(f'--dest folder {dest} already holds data; it must be empty or new')

        self._created_dirs = []  # Parent folders made here, removed again on abort.
        probe = parent
        while not os.path.exists(probe):
            self._created_dirs.append(probe)
            probe = os.path.dirname(probe)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise DatasetToolError(f'cannot create folder {parent}: {e.strerror or one_line(e)}') from None
        self.tmp = os.path.join(parent, f'.{os.path.basename(os.path.normpath(dest))}.tmp-{uuid.uuid4().hex[:12]}')
        try:
            if self.is_zip:
                self._zip = zipfile.ZipFile(self.tmp, mode='w', compression=zipfile.ZIP_STORED)
            else:
                os.mkdir(self.tmp)
        except OSError as e:
            self._remove_created_dirs()
            raise DatasetToolError(f'--dest {dest}: cannot create files in {parent} '
                                   f'({e.strerror or one_line(e)})') from None

    def add(self, name, data):
        if self.is_zip:
            self._zip.writestr(name, data)
        else:
            path = os.path.join(self.tmp, *name.split('/'))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def commit(self):
        if self.is_zip:
            self._zip.close()
            os.replace(self.tmp, self.dest)
        else:
            if os.path.isdir(self.dest):
                os.rmdir(self.dest)  # Checked empty at the start.
            os.rename(self.tmp, self.dest)

    def abort(self):
        if self.is_zip:
            try:
                self._zip.close()
            except Exception:  # pylint: disable=broad-except
                pass
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        elif os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._remove_created_dirs()

    def _remove_created_dirs(self):
        for path in self._created_dirs:  # Deepest first.
            try:
                os.rmdir(path)
            except OSError:
                break

# ----------------------------------------------------------------------------
# The conversion.


def _check_attributes(img, where, first, transformed=''):
    """Check an image against the dataset's rules and the first image; `transformed` says what was done to it
    (e.g. ' after resizing'). Returns the attributes of the first image."""
    height, width = img.shape[:2]
    channels = img.shape[2] if img.ndim == 3 else 1
    attrs = dict(width=width, height=height, channels=channels)
    if first is None:
        if width != height:
            raise DatasetToolError(f'{where}: image is {width}x{height}{transformed}, but images must be square; use '
                                   '--resolution=WxH and/or --transform=center-crop')
        if channels not in (1, 3):
            raise DatasetToolError(f'{where}: images must be grayscale or RGB, found {channels} channels')
        if width & (width - 1) != 0:
            raise DatasetToolError(f'{where}: image side {width} is not a power of two; use --resolution=WxH')
        return attrs
    if attrs != first:
        diffs = ', '.join(f'{key} {attrs[key]} (first image: {first[key]})'
                          for key in attrs if attrs[key] != first[key])
        hints = []
        if attrs['width'] != first['width'] or attrs['height'] != first['height']:
            hints.append('--resolution=WxH to resize all images')
        if attrs['channels'] != first['channels']:
            hints.append('--transform=center-crop to make all images RGB')
        raise DatasetToolError(f'{where}: all images must have the same size and channels, this one differs in '
                               f'{diffs}; use ' + ' and '.join(hints))
    return first


def convert_dataset(source, dest, max_images=None, transform=None, resolution=None, progress=True):
    """Convert `source` into an EDM dataset at `dest` (a ``.zip`` file or a folder).

    `resolution` is (width, height) or a string like '64x64'; `transform` is None, 'center-crop' or
    'center-crop-wide'. Returns a dict with the number of images written and skipped.
    Raises DatasetToolError (one line) on any problem; `dest` is then left untouched.
    """
    if isinstance(resolution, str):
        try:
            resolution = parse_resolution(resolution)
        except ValueError as e:
            raise DatasetToolError(f'--resolution: {e}') from None
    if transform is not None and transform not in ('center-crop', 'center-crop-wide'):
        raise DatasetToolError(f'unknown transform {transform!r} (choose center-crop or center-crop-wide)')
    if transform is not None and resolution is None:
        raise DatasetToolError(f'--transform={transform} needs --resolution=WxH')

    count, images = open_source(source, max_images)
    if count == 0:
        raise DatasetToolError(f'--source {printable(source)}: no images found; nothing was written')
    transformed = ' after cropping and resizing' if transform else ' after resizing' if resolution else ''
    out = _Destination(dest)
    written = skipped = 0
    try:
        first = None
        labels = []
        for index, (where, img, label) in enumerate(tqdm(images, total=count, unit='img', disable=not progress)):
            img = transform_image(img, transform, resolution)
            if img is None:
                skipped += 1
                continue  # The index keeps counting, so names can have gaps (as in EDM).
            first = _check_attributes(img, where, first, transformed)
            name = archive_name(index)
            out.add(name, encode_png(img))
            labels.append(None if label is None else [name, label])
            written += 1
        if hasattr(images, 'close'):
            images.close()
        if written == 0:
            reason = f'all {skipped} images are too small for --transform={transform} at --resolution=' \
                f'{resolution[0]}x{resolution[1]}' if skipped else 'no image could be decoded'
            raise DatasetToolError(f'--source {printable(source)}: {reason}; nothing was written')
        metadata = {'labels': labels if all(entry is not None for entry in labels) else None}
        out.add('dataset.json', json.dumps(metadata).encode('utf-8'))
        out.commit()
    except BaseException as e:
        if hasattr(images, 'close'):
            images.close()
        out.abort()
        if isinstance(e, OSError):
            raise DatasetToolError(f'cannot write {dest}: {one_line(e)}') from None
        raise
    return dict(written=written, skipped=skipped)

# ----------------------------------------------------------------------------
# Command line.


def _resolution_callback(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_resolution(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param)


@click.command(cls=Command, context_settings=dict(terminal_width=80, max_content_width=80))
@click.option('--source', help='Image folder or .zip, CIFAR-10/MNIST archive, LSUN *_lmdb folder', metavar='PATH',
              type=str, required=True)
@click.option('--dest', help='Output .zip file, or folder (must be empty or new)', metavar='PATH', type=str,
              required=True)
@click.option('--max-images', help='Convert at most this many input images', metavar='INT',
              type=click.IntRange(min=1), default=None)
@click.option('--transform', help='Crop before resizing (needs --resolution)',
              type=click.Choice(['center-crop', 'center-crop-wide']), default=None)
@click.option('--resolution', help='Output size, e.g. 64x64 (width x height)', metavar='WxH', type=str,
              default=None, callback=_resolution_callback)
def main(source, dest, max_images, transform, resolution):
    """Convert an image collection into the EDM / StyleGAN dataset format.

    The output is an uncompressed zip (or a folder) of PNG images 00000/img00000000.png, ... with a
    dataset.json holding the class labels (null when the source has none). Labels of a folder or zip
    source come from its dataset.json or, for folders, from the names of its top-level sub-folders.

    \b
    Examples:
    python dataset_tool.py --source=downloads/cifar10/cifar-10-python.tar.gz \\
        --dest=datasets/cifar10-32x32.zip
    python dataset_tool.py --source=downloads/ffhq/images1024x1024 \\
        --dest=datasets/ffhq-64x64.zip --resolution=64x64
    python dataset_tool.py --source=downloads/imagenet/ILSVRC/Data/CLS-LOC/train \\
        --dest=datasets/imagenet-64x64.zip --resolution=64x64 --transform=center-crop

    \b
    Transforms (PIL LANCZOS resizing):
    (none)             resize to --resolution when given
    center-crop        crop the central square, convert to RGB, resize
    center-crop-wide   crop to the output aspect ratio, resize, pad to a
                       square with black (skips images that are too small)

    LSUN LMDB sources need the optional packages lmdb and opencv-python. The tool
    runs as one process (not under torchrun).
    """
    refuse_torchrun('dataset_tool.py')
    if transform is not None and resolution is None:
        raise click.BadParameter(f'--transform={transform} needs --resolution=WxH', param_hint='--resolution')
    result = convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=resolution)
    note = f', skipped {result["skipped"]} too small for --transform=center-crop-wide' if result['skipped'] else ''
    click.echo(f'Wrote {result["written"]} images to {dest}{note}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
