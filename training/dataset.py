"""Image datasets in the EDM / StyleGAN layout (a folder or an uncompressed zip made by dataset_tool.py).

`Dataset` holds what every dataset shares (index subset, x-flips, labels, cache); `ImageFolderDataset` reads
the images. Items are ``(uint8 CHW numpy array, float32 label)``; the training loop maps pixels with
``x / 127.5 - 1``. `archive_name` and `encode_png` write the same layout (dataset_tool.py,
training/demo_data.py).

Unusable files raise `dnnlib.util.InputError` (one line naming the file and the problem). A file cannot make the
reader allocate far more than it stores: zip entries and decoded images are checked against `dnnlib.limits`, and
class labels are capped at `MAX_CLASSES`. `parse_labels` is the one reader of ``dataset.json`` (also used by
dataset_tool.py).

Worker safety: a zip archive is opened lazily by each process that reads from it (DataLoader workers included)
and the open handle is never pickled, so datasets can be handed to worker processes (fork or spawn).
"""

import io
import json
import math
import os
import zipfile

import numpy as np
import PIL.Image
import torch

from dnnlib import limits
from dnnlib.cli import one_line
from dnnlib.util import InputError, printable

try:
    import pyspng
except ImportError:
    pyspng = None

# ----------------------------------------------------------------------------


class Dataset(torch.utils.data.Dataset):
    """Base class: `raw_shape` is [N, C, H, W]; subclasses implement `_load_raw_image` and `_load_raw_labels`.

    * `max_size`: if the dataset has more images, a random subset of `max_size` of them (drawn with
      ``np.random.RandomState(random_seed % 2**31)``, then sorted) is used.
    * `xflip`: the index list is doubled, the second copy mirrored along W.
    * `use_labels`: labels are returned (one-hot float32 for integer classes, float32 vectors otherwise);
      without it the label has shape [0].
    * `cache`: decoded images are kept in memory.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0, cache=False):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = {}
        self._raw_labels = None
        self._label_shape = None

        indices = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and indices.size > max_size:
            order = indices.copy()
            np.random.RandomState(random_seed % (1 << 31)).shuffle(order)
            indices = np.sort(order[:max_size])
        flips = np.zeros(indices.size, dtype=np.uint8)
        if xflip:
            indices = np.concatenate([indices, indices])
            flips = np.concatenate([flips, np.ones_like(flips)])
        self._raw_idx = indices
        self._xflip = flips

    # Subclass interface.
    def _load_raw_image(self, raw_idx):  # -> uint8 CHW numpy array
        raise NotImplementedError

    def _load_raw_labels(self):  # -> int64 [N] or float32 [N, D] numpy array, or None
        raise NotImplementedError

    def close(self):
        pass

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            labels = np.asarray(labels)
            if labels.shape[0] != self._raw_shape[0]:
                raise InputError(f'{self._name}: {labels.shape[0]} labels for {self._raw_shape[0]} images')
            if labels.dtype == np.int64:
                if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES)):
                    raise InputError(f'{self._name}: class labels must be integers in 0..{MAX_CLASSES - 1}, one per '
                                     'image')
            elif labels.dtype != np.float32 or labels.ndim != 2:
                raise InputError(f'{self._name}: labels must be integer classes or float vectors')
            self._raw_labels = labels
        return self._raw_labels

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or list(image.shape) != self.image_shape:
            shape = list(getattr(image, 'shape', []))
            raise ImageShapeError(f'{self._describe(raw_idx)}: image of shape {shape} (CHW), but the dataset\'s images '
                                  f'are {self.image_shape} (shape of the first image); all images must have the same '
                                  'size and channels')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def _describe(self, raw_idx):
        return f'{self._name} image #{raw_idx}'

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx):
        import dnnlib  # pylint: disable=import-outside-toplevel
        raw_idx = int(self._raw_idx[idx])
        return dnnlib.EasyDict(raw_idx=raw_idx, xflip=bool(self._xflip[idx]),
                               raw_label=self._get_raw_labels()[raw_idx].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):  # [C, H, W]
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        if self.image_shape[1] != self.image_shape[2]:
            raise ValueError(f'{self._name}: images are {self.image_shape[2]}x{self.image_shape[1]}, not square')
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            labels = self._get_raw_labels()
            if labels.dtype == np.int64:
                self._label_shape = [int(labels.max()) + 1 if labels.size else 0]
            else:
                self._label_shape = list(labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        if len(self.label_shape) != 1:
            raise ValueError(f'{self._name}: labels of shape {self.label_shape} have no single dimension')
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


class ImageShapeError(InputError):
    """An image whose size or channel count differs from the dataset's (the message is one line)."""

# ----------------------------------------------------------------------------
# dataset.json.

MAX_CLASSES = 1 << 16   # Class labels are one-hot vectors of length max + 1: 65536 classes at most.


def _label_kind(label):
    """'class' for an int, the length for a vector of numbers, None for anything else."""
    if type(label) is int:
        return 'class' if 0 <= label < MAX_CLASSES else None
    if type(label) is list and all(type(v) in (int, float) and math.isfinite(v) for v in label):
        return len(label)
    return None


def parse_labels(text, where):
    """The labels of a ``dataset.json`` text: {file name: label}, or None for ``{"labels": null}`` or no
    "labels". A label is a class index in 0..MAX_CLASSES-1 or a vector of finite numbers; all labels have the same
    kind. Raises InputError naming `where` for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = 'nested too deeply' if isinstance(e, RecursionError) else printable(one_line(e))
        raise InputError(f'{printable(where)}: not valid JSON ({reason})') from None
    if not isinstance(data, dict):
        raise InputError(f'{printable(where)}: expected an object {{"labels": ...}}, found a JSON '
                         f'{type(data).__name__}')
    labels = data.get('labels')
    if labels is None:
        return None
    if not isinstance(labels, list):
        raise InputError(f'{printable(where)}: "labels" must be a list of [file name, label] pairs or null, found a '
                         f'JSON {type(labels).__name__}')
    result, kind = {}, None
    for entry in labels:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise InputError(f'{printable(where)}: "labels" must be a list of [file name, label] pairs; found '
                             f'{printable(json.dumps(entry), 60)}')
        name, label = entry
        this = _label_kind(label)
        if this is None or (kind is not None and this != kind):
            expected = 'a class index' if kind == 'class' else f'a vector of {kind} numbers' if kind is not None \
                else f'a class index in 0..{MAX_CLASSES - 1} or a vector of finite numbers'
            raise InputError(f'{printable(where)}: the label of {printable(name, 80)} is '
                             f'{printable(json.dumps(label), 60)}, expected {expected}')
        kind = this
        result[name] = label
    return result

# ----------------------------------------------------------------------------


def _ext(name):
    return os.path.splitext(name)[1].lower()


class ImageFolderDataset(Dataset):
    """Images from a folder (walked recursively) or a ``.zip``, in sorted file-name order.

    Labels come from the root ``dataset.json`` (``{"labels": [[relative/path.png, label], ...]}``; integer
    classes or lists of floats, see `parse_labels`). `resolution`, when given, must match the images. PNGs are
    decoded with pyspng when it is installed (and `use_pyspng`), else with PIL. Problems raise InputError.
    """

    def __init__(self, path, resolution=None, use_pyspng=True, **super_kwargs):
        self._path = path
        self._use_pyspng = use_pyspng
        self._zipfile = None
        self._zipfile_pid = None

        if not os.path.exists(path):
            raise InputError(f'{printable(path)}: no such folder or zip file')
        if os.path.isdir(path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=path)
                                for root, _dirs, files in os.walk(path) for fname in files}
        elif _ext(path) == '.zip':
            self._type = 'zip'
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except Exception as e:  # pylint: disable=broad-except
                raise InputError(f'{printable(path)}: cannot read zip archive ({printable(one_line(e))})') from None
        else:
            raise InputError(f'{printable(path)}: the dataset path must be a folder or a .zip file')

        PIL.Image.init()
        self._image_fnames = sorted(f for f in self._all_fnames if _ext(f) in PIL.Image.EXTENSION)
        if len(self._image_fnames) == 0:
            raise InputError(f'{printable(path)}: no image files found')
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise InputError(f'{printable(path)}: images are {raw_shape[3]}x{raw_shape[2]}, but resolution='
                             f'{resolution} was asked')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    def _get_zipfile(self):
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: open a fresh one.
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_size = os.path.getsize(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _read_file(self, fname):
        """The bytes of a file of the dataset (a zip entry within the limits of `dnnlib.limits`)."""
        where = os.path.join(self._path, fname) if self._type == 'dir' else f'{self._path}:{fname}'
        try:
            if self._type == 'dir':
                with open(where, 'rb') as f:
                    return f.read()
            return limits.read_zip_member(self._get_zipfile(), fname, where, self._zipfile_size)
        except InputError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            raise InputError(f'{printable(where)}: cannot read ({printable(one_line(e))})') from None

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zipfile_pid=None)

    def _describe(self, raw_idx):
        return printable(os.path.join(self._path, self._image_fnames[raw_idx]))

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            data = self._read_file(fname)
            image = decode_image(data, self._describe(raw_idx), use_pyspng=self._use_pyspng and _ext(fname) == '.png')
        except InputError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            raise InputError(f'{self._describe(raw_idx)}: cannot read image ({printable(one_line(e))})') from None
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW => HWC
        return image.transpose(2, 0, 1)  # HWC => CHW

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        labels = parse_labels(self._read_file(fname), f'{self._path}:{fname}' if self._type == 'zip' else
                              os.path.join(self._path, fname))
        if labels is None:
            return None
        missing = [f for f in self._image_fnames if f.replace('\\', '/') not in labels]
        if missing:
            raise InputError(f'{printable(self._path)}: dataset.json has no label for {printable(missing[0])} '
                             f'({len(missing)} image(s) without a label)')
        labels = [labels[f.replace('\\', '/')] for f in self._image_fnames]
        return np.array(labels, dtype=np.int64 if type(labels[0]) is int else np.float32)


def decode_image(data, where, use_pyspng=False):
    """Decode image bytes into a uint8 HW or HWC array, refusing images whose decoded size exceeds the limit of
    `dnnlib.limits` for these bytes (checked from the header, before decoding)."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        limits.check_expansion(where, 'the decoded image', len(data), width * height * max(len(image.getbands()), 1))
        if not (use_pyspng and pyspng is not None):
            image.load()
            return np.array(image)
    return pyspng.load(data)

# ----------------------------------------------------------------------------
# Writing the layout (dataset_tool.py and small in-memory datasets).


def archive_name(index):
    """EDM's name for image number `index`: the first five digits of the 8-digit index name the sub-folder."""
    digits = f'{index:08d}'
    return f'{digits[:5]}/img{digits}.png'


def encode_png(img):
    """Uncompressed PNG bytes (compress_level=0), mode L for 2-D uint8 arrays and RGB for [H, W, 3]."""
    image = PIL.Image.fromarray(img, 'L' if img.ndim == 2 else 'RGB')
    buf = io.BytesIO()
    image.save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()
