"""Checkpoint pickles in the official EDM layout, read without running code embedded in them.

Writing: classes decorated with :func:`persistent_class` pickle as
``_reconstruct_persistent_obj(meta)`` where ``meta`` holds the source text of the defining module, the class
name and the object's ``__dict__`` (format version 6, the layout of NVlabs' ``torch_utils/persistence.py``), so
the files can be read by any EDM-based tool.

Reading: :func:`load_network` uses a restricted unpickler. Persistent objects are matched by class name onto
the classes declared with :func:`persistent_class` in this process (the registry; importing the package
``training`` declares the standard ones), rebuilt from their stored constructor arguments and given their stored
tensors; the embedded source text is never executed. Any global outside a short allow-list is refused with an
error naming it. Full legacy unpickling (which executes the embedded source) happens only with
``trust_pickle=True``.
"""

import copy
import io
import pickle
import sys
import types
import uuid

import torch

_version = 6                     # Format version written into every pickle (the official value).
_decorators = set()              # Persistent classes created by persistent_class().
_registry = {}                   # Class name -> persistent class declared in an ordinary module (safe loader).
_embedded_modules = set()        # Names of the modules created from embedded source (trusted loads).
_import_hooks = []               # Callbacks applied to `meta` before a trusted load.
_module_to_src = {}              # Module -> source text (for modules created from embedded source).
_src_to_module = {}              # Source text -> module (cache of trusted loads).

# ----------------------------------------------------------------------------
# Writing side.


def persistent_class(orig_class):
    """Make a class save its defining module's source with its instances (EDM's persistence format).

    The returned subclass records the constructor arguments (``init_args``, ``init_kwargs``) and pickles as
    ``_reconstruct_persistent_obj(meta)``. Applying it to a class that is already persistent returns it unchanged.

    The class is also registered under its name for :func:`load_network`, which finds classes by that name only
    (the pickle stores nothing else). Re-declaring the same ``module.qualname`` (a reload) replaces the entry; a
    different class with a name already taken raises ``ValueError``. Classes from embedded source executed by a
    trusted load are not registered.
    """
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src_text(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            import dnnlib
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            if type(self) not in _decorators:
                raise pickle.PicklingError(f'{type(self).__qualname__} derives from persistent class '
                                           f'{self._orig_class_name} but is not decorated with @persistent_class '
                                           'itself, so it would be saved as its base class')
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    if orig_class.__module__ not in _embedded_modules:
        _register(Decorator)
    _decorators.add(Decorator)
    return Decorator


def _register(cls):
    old = _registry.get(cls.__name__)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f'persistent class name "{cls.__name__}" is already taken by {old.__module__}.'
                         f'{old.__qualname__}; checkpoints identify classes by name only, so '
                         f'{cls.__module__}.{cls.__qualname__} needs another name')
    _registry[cls.__name__] = cls


def is_persistent(obj):
    """True if `obj` is a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook):
    """Register `hook(meta) -> meta`, applied to every persistent object before a trusted (legacy) load."""
    assert callable(hook)
    _import_hooks.append(hook)


def _module_to_src_text(module):
    src = _module_to_src.get(module)
    if src is None:
        with open(module.__file__, encoding='utf-8') as f:
            src = f.read()
        _module_to_src[module] = src
        _src_to_module[src] = module
    return src


def _src_to_module_obj(src):
    """Create (or reuse) a module from embedded source text. Executes code: trusted loads only."""
    module = _src_to_module.get(src)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _embedded_modules.add(module_name)
        _module_to_src[module] = src
        _src_to_module[src] = module
        exec(src, module.__dict__)  # pylint: disable=exec-used
    return module


def _reconstruct_persistent_obj(meta):
    """Trusted reconstruction (the official behaviour): executes the embedded module source."""
    meta = _EasyDictLike(meta)
    meta.state = _EasyDictLike(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None
    assert meta.version == _version, f'unsupported persistence format version {meta.version}'
    module = _src_to_module_obj(meta.module_src)
    assert meta.type == 'class'
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


class _EasyDictLike(dict):
    # Local stand-in for dnnlib.EasyDict so that this module needs nothing but torch (see load_network()).
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def __setattr__(self, name, value):
        self[name] = value


def save_pickle(obj, path):
    """Pickle `obj` to `path` atomically (temporary name, then rename)."""
    from dnnlib.util import atomic_path
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        pickle.dump(obj, f)

# ----------------------------------------------------------------------------
# Reading side: safe loader.


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a global that the safe loader does not allow."""


class NotANetworkError(pickle.UnpicklingError):
    """The file was read, but it holds no network under 'ema'."""


class _PersistentStub:
    """What the safe unpickler makes of `_reconstruct_persistent_obj(meta)`: data only, nothing executed."""

    def __init__(self, meta):
        self.class_name = meta.get('class_name')
        self.version = meta.get('version')
        self.state = meta.get('state') or {}
        self.module_src = meta.get('module_src', '')

    def __repr__(self):
        return f'<persistent {self.class_name}>'


def _load_storage_bytes(b):
    # Official pickles store tensors through `torch.storage._load_from_bytes`; read them with weights_only.
    return torch.load(io.BytesIO(b), weights_only=True, map_location='cpu')


def _numpy_scalar(dtype, data=None):
    import numpy as np
    return np.frombuffer(data, dtype=dtype)[0].copy() if data is not None else dtype.type()


def _numpy_dtype(name, *args):
    import numpy as np
    return np.dtype(name)


def _wrap(func):
    # A fresh function object per unpickler: pickle's BUILD opcode can set attributes on whatever find_class()
    # returned, so shared module-level objects must never be handed out.
    return lambda *args: func(*args)


def _latin1_encode(text, encoding='latin1'):
    # Protocol <= 2 pickles store bytes as `_codecs.encode(text, 'latin1')`.
    if encoding != 'latin1':
        raise UnsafePickleError(f'refusing _codecs.encode with encoding {encoding!r}')
    return text.encode('latin1')


def _allowed_globals():
    """Globals the safe loader accepts, each a fresh object (or an immutable builtin) for one unpickler."""
    import builtins
    import collections
    import torch._utils as tu
    allowed = {
        ('torch_utils.persistence', '_reconstruct_persistent_obj'): type('_Stub', (_PersistentStub,), {}),
        ('collections', 'OrderedDict'): collections.OrderedDict,  # Immutable C type.
        ('torch._utils', '_rebuild_tensor_v2'): _wrap(tu._rebuild_tensor_v2),
        ('torch._utils', '_rebuild_parameter'): _wrap(tu._rebuild_parameter),
        ('torch.storage', '_load_from_bytes'): _wrap(_load_storage_bytes),
        ('numpy.core.multiarray', 'scalar'): _wrap(_numpy_scalar),
        ('numpy._core.multiarray', 'scalar'): _wrap(_numpy_scalar),
        ('numpy', 'dtype'): _wrap(_numpy_dtype),
        ('copyreg', '_reconstructor'): _wrap(_copyreg_reconstructor),
        ('_codecs', 'encode'): _wrap(_latin1_encode),
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('dnnlib.util', 'EasyDict'): dict,
    }
    for name in ('set', 'frozenset', 'slice'):
        allowed[('builtins', name)] = allowed[('__builtin__', name)] = getattr(builtins, name)  # Immutable.
    if hasattr(tu, '_rebuild_parameter_with_state'):
        allowed[('torch._utils', '_rebuild_parameter_with_state')] = _wrap(tu._rebuild_parameter_with_state)
    for name in ('ModuleDict', 'ModuleList', 'Sequential'):
        allowed[('torch.nn.modules.container', name)] = _ContainerStub.factory(name)
    for name in ('float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'uint8', 'bool'):
        allowed[('torch', name)] = getattr(torch, name)  # Immutable dtype objects.
    return allowed


class _ContainerStub:
    """A torch.nn container (ModuleDict etc.) read as data: its `__dict__` lands in `state`."""
    class_name = None

    def __setstate__(self, state):
        self.state = state

    @classmethod
    def factory(cls, kind):
        # NEWOBJ needs a real type; one subclass per container kind.
        return type(f'_{kind}Stub', (cls,), dict(class_name=kind, state=None))


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(f'refusing to load global "{module}.{name}" from the pickle; '
                                    'if you trust the file, load it with trust_pickle=True (--trust-pickle)')
        return obj

    def persistent_load(self, pid):
        # torch.save-style persistent ids do not occur in EDM pickles.
        raise UnsafePickleError(f'unsupported persistent id in pickle: {pid!r}')


def _copyreg_reconstructor(cls, base, state):
    # `copyreg._reconstructor` is only reached with a class that find_class() already allowed.
    if cls is dict or isinstance(cls, type) and issubclass(cls, dict):
        return cls()
    raise UnsafePickleError(f'refusing to reconstruct object of type {cls!r}')


def _class_registry():
    """Class name -> persistent class, for every class a checkpoint may contain (see persistent_class())."""
    try:
        import training  # noqa: F401  # Declares the standard classes (networks, losses, augmentation).
    except ImportError:
        pass
    return dict(_registry)


def _stub_tensors(stub, prefix, out):
    """Flatten a module stub's parameters and buffers into `out` as a state_dict."""
    state = stub.state
    for kind in ('_parameters', '_buffers'):
        for name, value in (state.get(kind) or {}).items():
            if value is not None:
                out[prefix + name] = value
    for name, child in (state.get('_modules') or {}).items():
        if child is not None:
            _stub_tensors(child, prefix + name + '.', out)
    return out


def _rebuild(stub, registry):
    """Build a real object of this project from a stub: constructor arguments, then stored tensors/state."""
    if isinstance(stub, dict):
        return type(stub)((k, _rebuild(v, registry)) for k, v in stub.items())
    if isinstance(stub, (list, tuple)):
        return type(stub)(_rebuild(v, registry) for v in stub)
    if not isinstance(stub, _PersistentStub):
        return stub
    if stub.version != _version:
        raise pickle.UnpicklingError(f'unsupported persistence format version {stub.version} for {stub.class_name}')
    cls = registry.get(stub.class_name)
    if cls is None:
        known = ', '.join(sorted(registry)) or 'none'
        raise pickle.UnpicklingError(f'checkpoint contains class "{stub.class_name}", which no loaded module declares '
                                     f'(known: {known}); use --trust-pickle to run the embedded code instead')
    args = _rebuild(stub.state.get('_init_args', ()), registry)
    kwargs = _rebuild(stub.state.get('_init_kwargs', {}), registry)
    try:
        obj = cls(*args, **dict(kwargs))
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f'cannot rebuild {stub.class_name} from its stored arguments ({e}); '
                                     'use --trust-pickle to run the embedded code instead') from None
    if isinstance(obj, torch.nn.Module):
        tensors = _stub_tensors(stub, '', {})
        missing, unexpected = obj.load_state_dict(tensors, strict=False)
        # Buffers that are not persistent (or None) may legitimately be absent.
        persistent_keys = set(obj.state_dict().keys())
        missing = [k for k in missing if k in persistent_keys]
        if missing or unexpected:
            raise pickle.UnpicklingError(
                f'checkpoint tensors do not match {stub.class_name}({kwargs}): '
                f'missing {missing[:5]}{"..." if len(missing) > 5 else ""}, '
                f'unexpected {unexpected[:5]}{"..." if len(unexpected) > 5 else ""}')
        obj.train(bool(stub.state.get('training', False)))
        for module in obj.modules():
            module.training = obj.training
        _copy_plain_attributes(obj, stub.state)
    else:
        plain = {k: _rebuild(v, registry) for k, v in stub.state.items() if k not in ('_init_args', '_init_kwargs')}
        obj.__dict__.update(plain)
    return obj


def _copy_plain_attributes(module, state):
    # Module attributes that the constructor derives are recomputed by it; only copy a few runtime settings.
    for key in ('use_fp16',):
        if key in state and isinstance(state[key], (bool, int)):
            setattr(module, key, bool(state[key]))


def load_pickle(file, trust_pickle=False):
    """Unpickle a checkpoint from a binary file object.

    Safe by default: persistent classes become this project's classes, no embedded code runs.
    With `trust_pickle=True` the file is read with the plain unpickler (embedded sources are executed).
    """
    if trust_pickle:
        import pickle as _pickle
        return _pickle.load(file)
    data = _SafeUnpickler(file).load()
    return _rebuild(data, _class_registry())


def load_network(path_or_url, trust_pickle=False, cache=True):
    """Load a checkpoint (official EDM pickle, this project's snapshot, or a ``torch.save`` zip file such as
    PFGM++'s ``training-state-*.pt``, read by :mod:`torch_utils.torchzip`) from a path or URL.

    Returns the checkpoint dictionary: ``'ema'`` and, for training snapshots, ``'loss_fn'``,
    ``'augment_pipe'`` and ``'dataset_kwargs'``. Raises :class:`NotANetworkError` for a file without a network.
    """
    import dnnlib
    from . import torchzip
    with dnnlib.util.open_url(path_or_url, cache=cache) as f:
        try:   # torch.save zip files (PFGM++'s training-state-*.pt) or plain pickles.
            data = torchzip.load(f, trust_pickle) if torchzip.is_zip(f) else load_pickle(f, trust_pickle=trust_pickle)
        except NotANetworkError as e:
            raise NotANetworkError(f'{path_or_url}: {e}') from None
    if isinstance(data, torch.nn.Module):   # A bare network pickle.
        data = dict(ema=data)
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise NotANetworkError(f'{path_or_url}: not a network checkpoint (expected a dict whose "ema" is a network)')
    return data
