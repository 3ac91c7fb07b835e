"""Read `torch.save` zip files that hold pickled persistent-class networks, without running code from them.

PFGM++ (Xu et al. 2023) saves its checkpoints as `training-state-<kimg>.pt`: `torch.save(dict(net=..., ema=...,
optimizer_state=..., step=...))`, where `net` and `ema` are networks pickled with their module source (the EDM
persistence format). torch's zip format is `<archive>/data.pkl` (the pickle) plus one member `<archive>/data/<key>`
per storage, referenced from the pickle by persistent id ('storage', storage type, key, location, numel).

`load` reads `data.pkl` with the safe unpickler of `torch_utils.persistence` (the same allow-list, persistent classes
matched by name onto this project's classes and rebuilt from their stored arguments, no embedded source executed),
extended with torch's storage types; the storages come from the zip members. This toolkit's own training states
(`training-state-*.pt` of `training.training_loop`) hold weights only, not networks: they are recognised and refused
with a message that names the snapshot to load instead.
"""

import io
import pickle
import zipfile

import torch

from . import persistence

ZIP_MAGIC = b'PK\x03\x04'

# torch.save pickles a storage's type as the global torch.<Name>Storage.
_STORAGE_DTYPES = {
    'FloatStorage': torch.float32, 'DoubleStorage': torch.float64, 'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'ComplexFloatStorage': torch.complex64, 'ComplexDoubleStorage': torch.complex128, 'UntypedStorage': torch.uint8,
}


def is_zip(file):
    """True if the binary file object starts a zip archive (torch.save's format); the position is restored."""
    position = file.tell()
    magic = file.read(4)
    file.seek(position)
    return magic == ZIP_MAGIC


class _StorageType:
    """What the unpickler returns for torch.<Name>Storage: data only (a dtype), one fresh object per global."""

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class _ZipUnpickler(persistence._SafeUnpickler):  # pylint: disable=protected-access
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        for name, dtype in _STORAGE_DTYPES.items():
            self._allowed[('torch', name)] = _StorageType(name, dtype)
        self._archive, self._prefix, self._storages = archive, prefix, {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise persistence.UnsafePickleError(f'unsupported persistent id in torch zip file: {pid!r}')
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype
        if not isinstance(dtype, torch.dtype):
            raise persistence.UnsafePickleError(f'invalid storage type {storage_type.name!r}')
        if key not in self._storages:
            try:
                raw = self._archive.read(f'{self._prefix}data/{key}')
            except KeyError:
                raise pickle.UnpicklingError(f'torch zip file lacks the storage "{key}"') from None
            nbytes = numel * torch.empty([], dtype=dtype).element_size()
            if len(raw) != nbytes:
                raise pickle.UnpicklingError(f'storage "{key}" holds {len(raw)} bytes, expected {nbytes}')
            untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw \
                else torch.UntypedStorage(0)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


def read(file):
    """Unpickle a torch zip file with the safe unpickler; returns the raw data (persistent classes as stubs)."""
    with zipfile.ZipFile(file) as archive:
        pickles = [n for n in archive.namelist() if n == 'data.pkl' or (n.endswith('/data.pkl') and n.count('/') == 1)]
        if len(pickles) != 1:
            raise pickle.UnpicklingError('not a torch.save zip file (no single <archive>/data.pkl)')
        prefix = pickles[0][:-len('data.pkl')]
        if f'{prefix}byteorder' in archive.namelist() and archive.read(f'{prefix}byteorder') != b'little':
            raise pickle.UnpicklingError('the file stores big-endian tensors, which this reader does not support')
        return _ZipUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix).load()


def load(file, trust_pickle=False):
    """Load a checkpoint in torch's zip format: the dict (or network) with its networks rebuilt.

    Safe by default (see the module docstring); `trust_pickle=True` uses `torch.load(weights_only=False)`, which
    runs the embedded source.
    """
    if trust_pickle:
        return torch.load(file, map_location='cpu', weights_only=False)
    data = read(file)
    if isinstance(data, dict) and isinstance(data.get('ema'), dict):
        what = 'a training state of this toolkit, for --resume' if data.get('format') else 'a state dict'
        raise persistence.NotANetworkError(f'it holds weights only ({what}), not a network; load the run\'s '
                                           'network-snapshot-*.pkl of the same kimg')
    return persistence._rebuild(data, persistence._class_registry())  # pylint: disable=protected-access


__all__ = ['is_zip', 'read', 'load']
