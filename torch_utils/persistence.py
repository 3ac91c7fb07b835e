"""Checkpoint pickles in the official EDM layout, read without running code embedded in them.

Writing: classes decorated with :func:`persistent_class` pickle as
``_reconstruct_persistent_obj(meta)`` where ``meta`` holds the source text of the defining module, the class
name and the object's ``__dict__`` (format version 6, the layout of NVlabs' ``torch_utils/persistence.py``), so
the files can be read by any EDM-based tool.

Reading: `load_network` and the other readers live in `torch_utils.checkpoints` and are also reachable here
(``persistence.load_network``): restricted unpickling, no embedded code executed, persistent objects matched by
class name onto the classes declared with :func:`persistent_class` in this process (the registry; importing the
package ``training`` declares the standard ones). Full legacy unpickling (which executes the embedded source, the
official behaviour: `_reconstruct_persistent_obj`) happens only with ``trust_pickle=True``. This file imports
nothing but torch (and dnnlib when it writes), so snapshots load with it alone.
"""

import copy
import pickle
import sys
import types
import uuid

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


def class_registry():
    """Class name -> persistent class, for every class a checkpoint may contain (see persistent_class())."""
    try:
        import training  # noqa: F401  # Declares the standard classes (networks, losses, augmentation).
    except ImportError:
        pass
    return dict(_registry)


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
    # Local stand-in for dnnlib.EasyDict so that this module needs nothing but torch: the trusted path runs it in
    # any EDM-based runtime (the reading side of this toolkit is in torch_utils/checkpoints.py).
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
# Reading side: torch_utils/checkpoints.py, reached through this module's names (imported on first use, so that
# this file needs nothing but torch when it runs inside another EDM-based tool).

_READING = ('load_network', 'load_pickle', 'load_torch_zip', 'load_safetensors', 'save_safetensors',
            'check_checkpoint', 'describe_file', 'is_denoiser', 'CheckpointError', 'NotANetworkError',
            'UnsafePickleError', 'ARG_LIMITS', 'SAFETENSORS_FORMAT', 'SAFETENSORS_VERSION')


def __getattr__(name):
    if name in _READING:
        from torch_utils import checkpoints
        return getattr(checkpoints, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
