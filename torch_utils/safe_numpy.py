"""Numpy dtypes, scalars and arrays rebuilt from untrusted pickles: plain numbers only.

numpy's own reconstruction functions trust their arguments. A dtype rebuilt by `numpy.dtype(...)` and then given a
state through the pickle's BUILD opcode can acquire object fields; a scalar or array then built from bytes of the
file makes numpy dereference pointers taken from those bytes (an interpreter crash, or worse). The functions here
accept only builtin numeric dtypes (bool, signed and unsigned integers, floats, complex) whose BUILD state changes
nothing but the byte order, and byte strings of exactly the size that the shape and the dtype need. Anything else
raises ValueError.

`ArrayUnpickler` is a restricted unpickler for files that hold plain containers and numeric arrays (the CIFAR-10
python batches): numpy's globals are replaced by the checked versions below, every other global is refused.
"""

import math
import pickle
import pickletools
import re

import numpy as np

from dnnlib.util import printable

NUMERIC_KINDS = 'biufc'
MAX_NDIM = 32


def plain_dtype(spec, align=False, copy=False):
    """`numpy.dtype(spec, align, copy)` for a type code of a builtin numeric type ('u1', '<f4', 'c16', ...)."""
    if type(align) not in (bool, int) or type(copy) not in (bool, int) or align not in (0, 1) or copy not in (0, 1):
        raise ValueError('numpy dtype with unexpected arguments')
    if not isinstance(spec, str) or not re.fullmatch(r'[<>|=]?[a-zA-Z?]\d{0,2}', spec):
        raise ValueError(f'numpy dtype {spec!r:.40} is not a plain numeric type code')
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise ValueError(f'numpy dtype {spec!r} is unknown') from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        raise ValueError(f'numpy dtype {spec!r} is not a plain numeric type (bool, int, uint, float or complex)')
    return dtype


def check_dtype_state(dtype, state):
    """The dtype that a BUILD `state` gives `dtype`: the state must be the one the dtype already has, except for
    the byte-order character (how big-endian arrays are pickled). Any other change raises ValueError."""
    expected = dtype.__reduce__()[2]
    if type(state) is tuple and len(state) == len(expected) and \
            all(type(v) in (int, str, type(None)) for v in state) and state[1] in ('<', '>', '=', '|'):
        order = state[1]
        if (order == '|') == (expected[1] == '|') and state[:1] + state[2:] == expected[:1] + expected[2:]:
            return dtype if order == '|' else dtype.newbyteorder(order)
    raise ValueError(f'numpy dtype {dtype.str!r} with a changed state (only plain numeric dtypes are accepted)')


def _as_bytes(data):
    if isinstance(data, str):  # Python 2 pickles read with encoding='latin1'.
        try:
            return data.encode('latin1')
        except UnicodeEncodeError:
            raise ValueError('numpy data is not a byte string') from None
    if type(data) not in (bytes, bytearray):
        raise ValueError(f'numpy data is a {type(data).__name__}, not a byte string')
    return data


def scalar_from_bytes(dtype, data):
    """A numpy scalar of a plain numeric `dtype` from exactly `dtype.itemsize` bytes."""
    dtype = plain_dtype(dtype.str) if isinstance(dtype, np.dtype) else dtype
    data = _as_bytes(data)
    if len(data) != dtype.itemsize:
        raise ValueError(f'numpy {dtype.name} scalar from {len(data)} bytes (needs {dtype.itemsize})')
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def array_from_bytes(data, dtype, shape, order='C'):
    """A (read-only) array of a plain numeric `dtype` and `shape` from exactly the bytes it needs."""
    data = _as_bytes(data)
    if type(shape) not in (tuple, list) or len(shape) > MAX_NDIM or \
            any(type(n) is not int or n < 0 for n in shape):
        raise ValueError('numpy array with an invalid shape')
    if order not in ('C', 'F'):
        raise ValueError('numpy array with an invalid memory order')
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise ValueError(f'numpy array of shape {list(shape)} and type {dtype.name} from {len(data)} bytes '
                         f'(needs {needed})')
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape), order=order)

# ----------------------------------------------------------------------------
# Restricted unpickling.


class _Dtype:
    """A dtype being unpickled: BUILD may only confirm its state."""

    def __init__(self, spec, align=False, copy=False):
        self.dtype = plain_dtype(spec, align, copy)

    def __setstate__(self, state):
        self.dtype = check_dtype_state(plain_dtype(self.dtype.str), state)


class _Array:
    """An array being unpickled by `_reconstruct` + BUILD; `resolve` replaces it by the array."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if type(state) is not tuple or len(state) not in (4, 5):
            raise ValueError('numpy array with an invalid state')
        if len(state) == 5:
            if state[0] != 1:
                raise ValueError('numpy array with an unknown state version')
            state = state[1:]
        shape, dtype, fortran, data = state
        if self.array is not None or not isinstance(dtype, _Dtype) or type(fortran) not in (bool, int):
            raise ValueError('numpy array with an invalid state')
        self.array = array_from_bytes(data, dtype.dtype, shape, 'F' if fortran else 'C')


class _NdarrayClass:
    """Stands for `numpy.ndarray`, which `_reconstruct` receives as its first argument."""


def _reconstruct(cls, shape, typecode):
    if cls is not _NdarrayClass or type(shape) is not tuple or _as_bytes(typecode) != b'b':
        raise ValueError('numpy array reconstruction with unexpected arguments')
    return _Array()


def _frombuffer(buf, dtype, shape, order='C'):
    if not isinstance(dtype, _Dtype):
        raise ValueError('numpy array without a dtype')
    return array_from_bytes(buf, dtype.dtype, shape, order)


def _scalar(dtype, data=None):
    if not isinstance(dtype, _Dtype) or data is None:
        raise ValueError('numpy scalar with unexpected arguments')
    return scalar_from_bytes(dtype.dtype, data)


def _encode(text, encoding='utf-8'):
    """`_codecs.encode` as Python 3 uses it to pickle bytes at protocol 2 (latin-1 only: no other codec runs)."""
    if type(text) is not str or encoding not in ('latin1', 'latin-1'):
        raise ValueError('unexpected use of _codecs.encode')
    return text.encode('latin1')


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and plain numeric numpy arrays and scalars; any other global
    raises pickle.UnpicklingError naming it, a bad numpy argument raises ValueError. Call `resolve(obj)` on the
    arrays taken from the result."""

    _globals = {'dtype': _Dtype, 'ndarray': _NdarrayClass, '_reconstruct': _reconstruct, 'scalar': _scalar,
                '_frombuffer': _frombuffer}
    _modules = ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray', 'numpy.core.numeric',
                'numpy._core.numeric')

    def find_class(self, module, name):
        if module == '_codecs' and name == 'encode':
            return _encode
        if module in self._modules and name in self._globals:
            return self._globals[name]
        raise pickle.UnpicklingError(f'unexpected object {printable(module, 80)}.{printable(name, 80)}')

    @staticmethod
    def check_size(data, max_ops):
        """Refuse a pickle of more than `max_ops` operations before loading it: every operation may create an
        object, so this bounds the memory that unpickling `data` can take (about 100 bytes per operation)."""
        try:
            for count, _ in enumerate(pickletools.genops(data)):
                if count >= max_ops:
                    raise ValueError(f'the pickle holds more than {max_ops} operations')
        except ValueError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            raise ValueError(f'not a valid pickle ({type(e).__name__})') from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError('unexpected persistent reference')

    @staticmethod
    def resolve(obj):
        """The array of an unpickled array, or `obj` itself if it is none (raises ValueError for a dtype)."""
        if isinstance(obj, _Array):
            if obj.array is None:
                raise ValueError('numpy array without data')
            return obj.array
        if isinstance(obj, _Dtype):
            raise ValueError('a numpy dtype where data was expected')
        return obj
