"""Restricted unpickling of files the toolkit is handed: no code runs, nothing crashes, memory stays bounded.

One engine, :class:`Unpickler` (Python's own pure-Python unpickler with its dangerous opcodes replaced), reads
every pickle the toolkit accepts without trust: network pickles (`torch_utils.persistence`), the `data.pkl` of
`torch.save` archives (`load_torch_zip`, training states) and the tensor blobs inside network pickles
(`load_storage_blob`). Callers pass a table of allowed globals; this module supplies safe entries for plain
containers, torch tensors and numpy scalars (`container_globals`, `tensor_globals`, `numpy_globals`).

What the engine guarantees, whatever the bytes:

- Globals outside the table are refused (`UnsafePickleError`); objects are created only by the table's
  functions, which check their arguments. ``BUILD`` is applied only to the engine's own record types (a numpy
  dtype is one: its state is checked) and to plain containers; ``NEWOBJ`` only to record types.
- Every length prefix is checked against the bytes that remain, so a file cannot request more memory than its
  size; tensor data is read only from bytes that are present (uncompressed), so all tensors together hold at most
  the file's size; copies made by allow-listed constructors are charged to a budget (`Budget`).
- Tensors are views inside their storage, never overlapping themselves (no stride-0 expansions).
- Numpy: only builtin numeric dtypes (bool, int, uint, float, complex), no state changes beyond byte order,
  scalars from exactly ``itemsize`` bytes (a dtype with object fields would let bytes become pointers); the checks
  are those of `torch_utils.safe_numpy`, which also serves the CIFAR-10 reader.
- Any other failure becomes :class:`dnnlib.util.InputError` with one line naming the file; ``MemoryError`` is
  passed through (it means a limit here is missing).

:func:`check_structure` bounds what loaded data expands to when it is traversed (shared references, cycles, depth).
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import torch

from dnnlib.util import InputError, printable
from torch_utils import safe_numpy

MAX_DEPTH = 100                 # Nesting of containers in loaded data.
MAX_ITEMS = 1_000_000           # Items of loaded data, counted along every path that reaches them.
MAX_DIMS = 32                   # Dimensions of one tensor or array.
COPY_FACTOR, COPY_SLACK = 4, 1 << 24   # Bytes allow-listed constructors may copy: FACTOR * file size + SLACK.
BIG_OBJECT = 1 << 16            # str/bytes at least this long are consumed once (dropped from the memo after use).


class UnsafePickleError(InputError):
    """The file references a global (or an operation) that the restricted unpickler does not allow."""


def fail(name, message, error=InputError):
    """Raise `error` with the one-line message '<name>: <message>' (name escaped)."""
    raise error(f'{printable(name)}: {message}')


def describe_exception(e):
    """'TypeError: message' in one escaped line of bounded length."""
    text = ' '.join(str(e).split())
    return printable(f'{type(e).__name__}: {text}' if text else type(e).__name__, limit=160)

# ----------------------------------------------------------------------------
# Limits relative to the file's size.


class Budget:
    """What one file may make the loader allocate: tensor data up to the file's size (it is read from bytes that
    are present), copies by allow-listed constructors up to COPY_FACTOR times the size plus COPY_SLACK."""

    def __init__(self, name, file_size):
        self.name = name
        self.file_size = int(file_size)
        self.tensor_bytes = 0
        self.copy_bytes = 0

    def tensor(self, nbytes):
        self.tensor_bytes += int(nbytes)
        if self.tensor_bytes > self.file_size:
            fail(self.name, f'limit hit: tensor data of more than the file\'s size ({self.file_size} bytes)')

    def copy(self, nbytes, what):
        self.copy_bytes += int(nbytes)
        limit = COPY_FACTOR * self.file_size + COPY_SLACK
        if self.copy_bytes > limit:
            fail(self.name, f'limit hit: {what} would copy more than {limit} bytes ({COPY_FACTOR}x the file\'s '
                            f'size + {COPY_SLACK >> 20} MiB)')


class _BoundedReader:
    """File wrapper whose reads never ask for more than what is left, so no length prefix can allocate beyond it."""

    def __init__(self, file, size, name):
        self._file, self._left, self._name = file, int(size), name

    def read(self, n=-1):
        n = self._left if n is None or n < 0 else n
        if n > self._left:
            fail(self._name, f'truncated or corrupt: {n} bytes announced where {self._left} remain')
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buffer):
        n = memoryview(buffer).nbytes
        if n > self._left:
            fail(self._name, f'truncated or corrupt: {n} bytes announced where {self._left} remain')
        got = self._file.readinto(buffer)
        self._left -= got
        return got

    def readline(self):
        line = self._file.readline(self._left)
        self._left -= len(line)
        return line

    @property
    def remaining(self):
        return self._left

# ----------------------------------------------------------------------------
# The engine.


class Record:
    """Base of the engine's own record types: data objects that `NEWOBJ` may create and `BUILD` may fill."""

    def __setstate__(self, state):
        self.state = state


_CONSUMED = object()  # Memo entry of a large string or blob that was already used.


class Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
    """Pure-Python unpickler over a table of allowed globals ``{(module, name): object}``.

    `persistent`: function for persistent ids (torch.save archives), else they are refused. `hint`: text appended
    to the refusal of a global. `budget`: a `Budget` (default: one for the size), shared with the table's
    functions. `data`: the whole pickle as bytes (then `file` and `size` are not used).
    """
    dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

    def __init__(self, file, name, size, allowed, persistent=None, hint='', budget=None, encoding='ASCII',
                 data=None):
        self.name = name
        self._reader = _BoundedReader(file if data is None else io.BytesIO(b''), size if data is None else 0, name)
        self._data = data  # In-memory pickles are read as one frame (fast reads, still bounded).
        super().__init__(self._reader, encoding=encoding)
        self._allowed = allowed
        self._allowed_ids = {id(v) for v in allowed.values()}
        self._persistent = persistent
        self._hint = hint
        self.budget = budget if budget is not None else Budget(name, size if data is None else len(data))
        self._big = {}  # id(large str/bytes) -> [(memo key, the object or a tuple holding it)]

    def load(self):
        try:
            return self._load()
        except (InputError, MemoryError):
            raise
        except EOFError:
            fail(self.name, 'truncated: the pickle data ends early')
        except Exception as e:  # pylint: disable=broad-except
            fail(self.name, f'corrupt or unsupported pickle data ({describe_exception(e)})')

    def _load(self):
        # pickle._Unpickler.load(), with the data of an in-memory pickle preset as the current frame.
        self._unframer = pickle._Unframer(self._reader.read, self._reader.readline)  # pylint: disable=W0212
        if self._data is not None:
            self._unframer.current_frame = io.BytesIO(self._data)
        self.read, self.readinto, self.readline = self._unframer.read, self._unframer.readinto, \
            self._unframer.readline
        self.metastack, self.stack, self.proto = [], [], 0
        self.append = self.stack.append
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # pylint: disable=protected-access
            return stop.value

    def load_frame(self):
        size, = struct.unpack('<Q', self.read(8))
        if self._data is None:
            if size > self._reader.remaining:
                fail(self.name, f'truncated or corrupt: {size} bytes announced where {self._reader.remaining} remain')
            self._unframer.load_frame(size)
    dispatch[pickle.FRAME[0]] = load_frame

    def refuse(self, what):
        fail(self.name, what + self._hint, UnsafePickleError)

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            self.refuse(f'refusing to load global "{printable(module, 80)}.{printable(name, 80)}"')
        return obj

    def persistent_load(self, pid):
        if self._persistent is None:
            self.refuse('refusing a persistent id (not an object this file type holds)')
        return self._persistent(pid)

    def consume(self, obj):
        """Drop a large string or blob from the memo once it has been turned into what it encodes (and the memoized
        argument tuples that hold it), so that it is freed and cannot be used a second time."""
        for key, holder in self._big.pop(id(obj), ()):
            if self.memo.get(key) is holder:
                self.memo[key] = _CONSUMED

    def _callable(self, func):
        if id(func) not in self._allowed_ids:
            self.refuse(f'refusing to call {printable(type(func).__name__)} object (only allow-listed functions)')
        return func

    # Opcodes replaced or restricted.
    def load_reduce(self):
        args = self.stack.pop()
        func = self._callable(self.stack[-1])
        if type(args) is not tuple:
            self.refuse('REDUCE without an argument tuple')
        self.stack[-1] = func(*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass, args):
        self.append(self._callable(klass)(*args))

    def load_newobj(self):
        self.stack.pop()  # Record types take no constructor arguments; BUILD fills them.
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, Record) and id(cls) in self._allowed_ids):
            self.refuse(f'refusing to create an object of type {printable(getattr(cls, "__name__", "?"))}')
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self.stack.pop()
        self.load_newobj()
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Record):
            try:
                inst.__setstate__(state)
            except ValueError as e:   # A record's own check (e.g. a numpy dtype's state).
                self.refuse(f'refusing {printable(e, 160)}')
        elif isinstance(inst, collections.OrderedDict) and (not state or _metadata_state(state)):
            if state:
                inst._metadata = state['_metadata']  # What torch's state_dict() pickles as attributes.
        elif state:
            self.refuse(f'refusing to set the state of a {printable(type(inst).__name__)} object')
    dispatch[pickle.BUILD[0]] = load_build

    def load_ext1(self):
        self.refuse('refusing the extension registry (EXT opcodes)')
    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = load_ext1

    def load_bytearray8(self):
        n, = struct.unpack('<Q', self.read(8))
        self.append(bytearray(self.read(n)))  # Bounded read first (the stock version allocates n bytes first).
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_append(self):
        value = self.stack.pop()
        self._container(list).append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self._container(list).extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._container(dict)[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self._container(dict)
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        self._container(set).update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def _container(self, kind):
        target = self.stack[-1]
        if not isinstance(target, kind):
            self.refuse(f'refusing to add items to a {printable(type(target).__name__)} object')
        return target

    def _memo_put(self, key):
        obj = self.stack[-1]
        if isinstance(obj, (str, bytes)) and len(obj) >= BIG_OBJECT:
            self._big.setdefault(id(obj), []).append((key, obj))
        elif type(obj) is tuple and len(obj) <= 4:
            for item in obj:
                if id(item) in self._big:
                    self._big[id(item)].append((key, obj))
        self.memo[key] = obj

    def _memo_get(self, key):
        obj = self.memo[key]
        if obj is _CONSUMED:
            self.refuse('a large string or tensor blob is used twice (limit: each is read once)')
        self.append(obj)

    def load_get(self):
        self._memo_get(int(self.readline()[:-1]))
    dispatch[pickle.GET[0]] = load_get

    def load_binget(self):
        self._memo_get(self.read(1)[0])
    dispatch[pickle.BINGET[0]] = load_binget

    def load_long_binget(self):
        self._memo_get(struct.unpack('<I', self.read(4))[0])
    dispatch[pickle.LONG_BINGET[0]] = load_long_binget

    def load_put(self):
        self._memo_put(int(self.readline()[:-1]))
    dispatch[pickle.PUT[0]] = load_put

    def load_binput(self):
        self._memo_put(self.read(1)[0])
    dispatch[pickle.BINPUT[0]] = load_binput

    def load_long_binput(self):
        self._memo_put(struct.unpack('<I', self.read(4))[0])
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput

    def load_memoize(self):
        self._memo_put(len(self.memo))
    dispatch[pickle.MEMOIZE[0]] = load_memoize


def _metadata_state(state):
    return isinstance(state, dict) and set(state) == {'_metadata'}


# ----------------------------------------------------------------------------
# Plain containers.


def container_globals(unpickler_ref):
    """Allowed globals for containers that pickles build through calls. `unpickler_ref()` gives the unpickler
    (for its budget); every entry is a fresh object, so BUILD-style tampering cannot outlive one load."""
    def sized(kind, what):
        def make(items=()):
            if not isinstance(items, (list, tuple, set, frozenset, dict)):
                unpickler_ref().refuse(f'refusing {what}() of a {printable(type(items).__name__)} object')
            unpickler_ref().budget.copy(64 * len(items), f'{what}()')
            return kind(items)
        return make

    def encode(text, encoding='latin1'):
        # Protocol <= 2 pickles store bytes as `_codecs.encode(text, 'latin1')`.
        if encoding != 'latin1' or not isinstance(text, str):
            unpickler_ref().refuse('refusing _codecs.encode other than of a str to latin1')
        unpickler_ref().budget.copy(len(text), '_codecs.encode()')
        data = text.encode('latin1')
        unpickler_ref().consume(text)
        return data

    table = {('collections', 'OrderedDict'): sized(collections.OrderedDict, 'OrderedDict'),
             ('_codecs', 'encode'): encode}
    for module in ('builtins', '__builtin__'):
        table[(module, 'set')] = sized(set, 'set')
        table[(module, 'frozenset')] = sized(frozenset, 'frozenset')
    return table

# ----------------------------------------------------------------------------
# Tensors.

STORAGE_DTYPES = {
    'FloatStorage': torch.float32, 'DoubleStorage': torch.float64, 'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'ComplexFloatStorage': torch.complex64, 'ComplexDoubleStorage': torch.complex128, 'UntypedStorage': torch.uint8,
}


class StorageType:
    """What a storage class global (`torch.FloatStorage`) becomes: its element type, nothing callable."""

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class Storage:
    """Tensor data read from the file: a flat tensor of `numel` elements of `dtype`."""

    def __init__(self, flat):
        self.flat = flat


def read_storage(reader, dtype, numel, budget, name):
    """A `Storage` of `numel` elements read from `reader` (bounded); charged to the budget."""
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        fail(name, f'invalid storage size {printable(repr(numel), 40)}')
    element = torch.empty([], dtype=dtype).element_size()
    budget.tensor(numel * element)
    flat = torch.empty([numel], dtype=dtype)
    view = flat.view(torch.uint8).numpy() if numel else np.empty([0], np.uint8)
    if numel and reader.readinto(memoryview(view)) != numel * element:
        fail(name, 'truncated tensor data')
    return Storage(flat)


def _non_overlapping(size, stride):
    """True if no two indices of a view with these sizes and strides reach the same element."""
    dims = sorted((st, sz) for sz, st in zip(size, stride) if sz > 1)
    reach = 0
    for st, sz in dims:
        if st <= reach:
            return False
        reach += st * (sz - 1)
    return True


def _check_int_tuple(values, what, name):
    if not isinstance(values, (tuple, list, torch.Size)) or len(values) > MAX_DIMS or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        fail(name, f'invalid tensor {what} {printable(repr(values), 80)}')
    return tuple(values)


def _empty_hooks(hooks):
    return hooks is None or (isinstance(hooks, dict) and not hooks)


def rebuild_tensor(name, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` with checks: a view inside its storage that does not overlap itself."""
    if not isinstance(storage, Storage):
        fail(name, f'tensor data is a {printable(type(storage).__name__)}, not a storage')
    size = _check_int_tuple(size, 'size', name)
    stride = _check_int_tuple(stride, 'stride', name)
    if len(size) != len(stride) or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        fail(name, 'invalid tensor layout (size, stride and offset do not fit together)')
    if not isinstance(requires_grad, bool) or not _empty_hooks(hooks) or metadata not in (None, {}):
        fail(name, 'tensor with hooks, metadata or an invalid requires_grad flag')
    numel = 1
    for s in size:
        numel *= s
    if numel:
        extent = offset + sum((sz - 1) * st for sz, st in zip(size, stride)) + 1
        if extent > storage.flat.numel():
            fail(name, f'tensor of size {list(size)} reaches element {extent - 1} of a storage of '
                       f'{storage.flat.numel()} elements')
        if not _non_overlapping(size, stride):
            fail(name, f'limit hit: tensor of size {list(size)} repeats its storage elements (stride '
                       f'{list(stride)}); stored tensors may not overlap themselves')
    t = storage.flat.as_strided(size, stride, offset if numel else 0)
    if requires_grad:
        if not t.is_floating_point():
            fail(name, f'a {t.dtype} tensor cannot require gradients')
        t.requires_grad_(True)
    return t


def rebuild_parameter(name, data, requires_grad=True, hooks=None, state=None):
    """`torch._utils._rebuild_parameter[_with_state]` with checks."""
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool) or not _empty_hooks(hooks) \
            or state not in (None, {}):
        fail(name, 'invalid parameter record (data is not a tensor, or it carries hooks or state)')
    if requires_grad and not data.is_floating_point():
        fail(name, f'a parameter stored as {data.dtype} (parameters must be floating point)')
    return torch.nn.Parameter(data.detach(), requires_grad=requires_grad)


def tensor_globals(name):
    """Allowed globals for tensors and parameters (torch's rebuild functions, checked), sizes and dtypes."""
    def size(dims=()):
        return torch.Size(_check_int_tuple(dims, 'size', name))

    table = {
        ('torch._utils', '_rebuild_tensor_v2'): lambda *a: rebuild_tensor(name, *a),
        ('torch._utils', '_rebuild_parameter'): lambda *a: rebuild_parameter(name, *a),
        ('torch._utils', '_rebuild_parameter_with_state'): lambda *a: rebuild_parameter(name, *a),
        ('torch', 'Size'): size,
    }
    for dtype_name in ('float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8',
                       'bool', 'complex64', 'complex128'):
        table[('torch', dtype_name)] = getattr(torch, dtype_name)  # Immutable singletons, never called.
    return table


def load_storage_blob(blob, name, budget):
    """One tensor storage from the bytes that `torch.storage._load_from_bytes` receives in pickles written by plain
    `pickle` (torch's legacy serialization: magic number, version, system info, a pickle naming the storage, its
    key list, then 8-byte element count and raw little-endian data)."""
    if not isinstance(blob, bytes):
        fail(name, f'tensor data is a {printable(type(blob).__name__)}, not bytes (or it is used twice)')
    reader = io.BytesIO(blob)
    size = len(blob)
    where = f'{name} (tensor blob)'

    def header():
        return Unpickler(reader, where, size - reader.tell(), {}, budget=budget).load()
    if blob[:4] == b'PK\x03\x04':
        fail(where, 'a zip archive (torch writes pickled storages in its legacy format)')
    if header() != 0x1950a86a20f9469cfc6c or header() != 1001:
        fail(where, 'not in torch\'s legacy storage format (wrong magic number or version)')
    info = header()
    if not isinstance(info, dict) or info.get('little_endian') is not True:
        fail(where, 'not written on a little-endian machine, or its system information is missing')

    records = {}

    def persistent(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage'):
            fail(where, 'unsupported persistent id')
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) or view is not None:
            fail(where, 'unsupported storage record')
        if key in records:
            fail(where, 'a storage listed twice')
        records[key] = (storage_type.dtype, numel)
        return key
    types = {('torch', n): StorageType(n, dtype) for n, dtype in STORAGE_DTYPES.items()}
    root = Unpickler(reader, where, size - reader.tell(), types, persistent=persistent, budget=budget).load()
    keys = header()
    if not isinstance(root, str) or keys != [root] or list(records) != [root]:
        fail(where, 'expected exactly one storage')
    dtype, numel = records[root]
    count = struct.unpack('<q', _read_exact(reader, 8, where))[0]
    if count != numel:
        fail(where, f'element count {count} does not match the announced {numel}')
    bounded = _BoundedReader(reader, size - reader.tell(), where)
    storage = read_storage(bounded, dtype, numel, budget, where)
    if bounded.remaining:
        fail(where, f'{bounded.remaining} unexpected bytes after the tensor data')
    return storage


def _read_exact(reader, n, name):
    data = reader.read(n)
    if len(data) != n:
        fail(name, 'truncated tensor data')
    return data


def load_torch_zip(file, name, allowed_fn=None, hint='', max_pickle=1 << 26):
    """Read a `torch.save` archive (zip format) holding containers, numbers, strings and plain tensors.

    Like `torch.load(weights_only=True)`, with these limits: entries stored uncompressed (so tensor data cannot
    exceed the file's size), each storage read once and only from a record of exactly its announced size, tensors
    checked by `rebuild_tensor`. `allowed_fn(unpickler_ref)` adds globals to the table (as in `read_pickle`).
    """
    try:
        return _load_torch_zip(file, name, allowed_fn, hint, max_pickle)
    except (InputError, MemoryError):
        raise
    except Exception as e:  # pylint: disable=broad-except
        fail(name, f'not a readable zip archive ({describe_exception(e)})')


def _load_torch_zip(file, name, allowed_fn, hint, max_pickle):
    archive = zipfile.ZipFile(file)
    infos = archive.infolist()
    total = sum(info.file_size for info in infos)
    size = file.seek(0, os.SEEK_END) if hasattr(file, 'seek') else os.path.getsize(file)
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos) or total > size:
        fail(name, 'limit hit: compressed zip entries (torch.save writes them uncompressed)')
    entries = {info.filename: info for info in infos}
    pickles = [n for n in entries if n == 'data.pkl' or n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
        fail(name, 'not a torch.save archive (no single */data.pkl)')
    prefix = pickles[0][:-len('data.pkl')]
    order = entries.get(prefix + 'byteorder')
    if order is not None and archive.read(order) != b'little':
        fail(name, 'written on a big-endian machine')
    if entries[pickles[0]].file_size > max_pickle:
        fail(name, f'limit hit: data.pkl larger than {max_pickle} bytes')
    budget = Budget(name, size)
    storages = {}

    def persistent(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            fail(name, 'unsupported persistent id in data.pkl')
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType) or not isinstance(key, str):
            fail(name, 'unsupported storage record in data.pkl')
        if key in storages:
            if storages[key].flat.dtype != storage_type.dtype or storages[key].flat.numel() != numel:
                fail(name, f'storage {printable(key, 40)} announced twice with different types or sizes')
            return storages[key]
        info = entries.get(f'{prefix}data/{key}')
        element = torch.empty([], dtype=storage_type.dtype).element_size()
        if info is None or not isinstance(numel, int) or info.file_size != numel * element:
            fail(name, f'storage {printable(key, 40)} is missing or its record size does not match')
        with archive.open(info) as f:
            storages[key] = read_storage(_BoundedReader(f, info.file_size, name), storage_type.dtype, numel, budget,
                                         name)
        return storages[key]

    unpickler = None
    ref = lambda: unpickler  # noqa: E731
    table = container_globals(ref)
    table.update(tensor_globals(name))
    table.update({('torch', n): StorageType(n, dtype) for n, dtype in STORAGE_DTYPES.items()})
    table.update(allowed_fn(ref) if allowed_fn is not None else {})
    data = archive.read(entries[pickles[0]])  # Small (no tensor data); unpickled from memory.
    unpickler = Unpickler(None, name, len(data), table, persistent=persistent, hint=hint, budget=budget, data=data)
    return unpickler.load()

# ----------------------------------------------------------------------------
# Numpy (the checks themselves are those of torch_utils.safe_numpy).


class NumpyDtype(Record):
    """What the `numpy.dtype` global makes: a plain numeric dtype (`.dtype`) whose BUILD state may change nothing
    but the byte order. A record rather than the dtype itself, so that BUILD updates every reference to it."""

    def __init__(self, spec, align=False, copy=False):
        self.dtype = safe_numpy.plain_dtype(spec, align, copy)

    def __setstate__(self, state):
        self.dtype = safe_numpy.check_dtype_state(safe_numpy.plain_dtype(self.dtype.str), state)


def numpy_globals(unpickler_ref):
    """Allowed globals for numpy scalars (`numpy.dtype` and `numpy.core.multiarray.scalar`, both spellings)."""
    def dtype(*args):
        try:
            return NumpyDtype(*args)
        except ValueError as e:
            unpickler_ref().refuse(f'refusing {e}')

    def scalar(spec, data=None):
        if not isinstance(spec, NumpyDtype) or data is None:
            unpickler_ref().refuse('refusing a numpy scalar without a checked dtype and its bytes')
        try:
            return safe_numpy.scalar_from_bytes(spec.dtype, data).copy()
        except ValueError as e:
            unpickler_ref().refuse(f'refusing {e}')

    table = {('numpy', 'dtype'): dtype}
    for core in ('numpy.core', 'numpy._core'):
        table[(core + '.multiarray', 'scalar')] = scalar
    return table


# ----------------------------------------------------------------------------
# Loaded data.


def check_structure(obj, name, max_items=MAX_ITEMS, max_depth=MAX_DEPTH, leaf=None):
    """Refuse data that is cyclic, nested deeper than `max_depth`, or that reaches more than `max_items` items
    when traversed along every path (shared references counted each time). Containers are lists, tuples, dicts,
    sets; `leaf(obj)` may veto other objects by raising. Returns the item count."""
    sizes, active = {}, set()

    def count(value, depth):
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            key = id(value)
            if key in sizes:
                return sizes[key]
            if key in active:
                fail(name, 'contains a cyclic reference')
            if depth > max_depth:
                fail(name, f'limit hit: data nested deeper than {max_depth} levels')
            active.add(key)
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            total = 1
            for k, v in items:
                total += count(k, depth + 1) + count(v, depth + 1)
                if total > max_items:
                    fail(name, f'limit hit: data reaches more than {max_items} items when traversed')
            active.discard(key)
            sizes[key] = total
            return total
        if leaf is not None:
            leaf(value)
        return 1
    return count(obj, 0)


def read_pickle(file, name, allowed_fn, hint='', persistent=None, size=None, encoding='ASCII'):
    """Unpickle `file` (a binary file object) from its current position with the table `allowed_fn(unpickler_ref)`
    plus plain containers; returns (object, unpickler). The size is what remains of the file unless given;
    `encoding` decodes Python 2 strings (e.g. 'latin1')."""
    if size is None:
        start = file.tell()
        size = file.seek(0, os.SEEK_END) - start
        file.seek(start)
    unpickler = None
    ref = lambda: unpickler  # noqa: E731
    table = container_globals(ref)
    table.update(allowed_fn(ref))
    data = None
    if isinstance(file, io.BytesIO) and file.tell() == 0 and size == len(file.getbuffer()):
        data = file.getvalue()
    unpickler = Unpickler(file, name, size, table, persistent=persistent, hint=hint, data=data, encoding=encoding)
    return unpickler.load(), unpickler

