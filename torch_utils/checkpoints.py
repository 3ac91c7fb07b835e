"""Reading checkpoints without running code from them, and writing `.safetensors` checkpoints.

Readers (also reachable as `torch_utils.persistence.<name>`): `load_network` (EDM network pickles, this toolkit's
snapshots, `.safetensors` checkpoints, `torch.save` zips holding networks such as PFGM++'s training states),
`load_pickle`, `load_torch_zip`, `load_safetensors`; `describe_file` names what a file is. Every failure is one
`CheckpointError` line (a `dnnlib.util.InputError`); docs/security.md has the threat model and the limits.

The bytes go through the restricted unpickler of `torch_utils.safe_pickle` (or the safetensors library); every
persistent object is then rebuilt by `_Builder`: class looked up by name in the registry of
`torch_utils.persistence`, stored constructor arguments checked (plain data, plausible ranges), network constructed
on the meta device under a cap on modules and elements derived from the tensors the file holds, its module tree,
parameter and buffer shapes compared with the stored ones, its image networks traced on meta tensors, and only then
the stored tensors put in place.
"""

import collections
import contextlib
import copy
import inspect
import json
import os
import pickle
import re
import shutil
import zipfile

import numpy as np
import torch

from dnnlib.util import InputError, atomic_path, printable
from torch_utils import persistence, safe_pickle
from torch_utils.persistence import is_persistent
from torch_utils.safe_pickle import UnsafePickleError  # noqa: F401  # Re-exported: refusal of a global.

SAFETENSORS_FORMAT = 'edmkit.checkpoint'   # Metadata of this toolkit's .safetensors checkpoints.
SAFETENSORS_VERSION = 1
_MODULE_ATTRIBUTES = ('use_fp16',)   # Runtime settings copied onto a rebuilt network (the rest is constructed).


def save_safetensors(data, path):
    """Write a checkpoint (a dict such as ``dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...)``, or
    a bare network) as ``.safetensors``: the tensors of every persistent network, and as JSON metadata each object's
    class name, constructor arguments, module classes and plain attributes. Written atomically; no pickle inside.
    """
    from safetensors.torch import save_file
    if isinstance(data, torch.nn.Module):
        data = dict(ema=data)
    objects, tensors = {}, {}
    for key, value in data.items():
        if not isinstance(key, str) or '/' in key:
            raise ValueError(f'checkpoint keys must be strings without "/", got {key!r}')
        if value is None:
            objects[key] = None
        elif is_persistent(value):
            objects[key] = _describe_object(value)
            if isinstance(value, torch.nn.Module):
                for name, tensor in _module_tensors(value):
                    tensors[f'{key}/{name}'] = tensor.detach().to('cpu', copy=True).contiguous()
        else:
            objects[key] = dict(value=_json_plain(value, key))
    metadata = dict(format=SAFETENSORS_FORMAT, version=str(SAFETENSORS_VERSION), objects=json.dumps(objects))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _describe_object(obj):
    spec = {'class': obj._orig_class_name, 'args': _json_plain(list(obj._init_args), 'args'),
            'kwargs': _json_plain(dict(obj._init_kwargs), 'kwargs')}
    if isinstance(obj, torch.nn.Module):
        spec['modules'] = {path: type(m).__name__ for path, m in obj.named_modules()}
        spec['training'] = bool(obj.training)
        spec['attributes'] = {k: getattr(obj, k) for k in _MODULE_ATTRIBUTES if isinstance(getattr(obj, k, None), bool)}
    else:
        spec['attributes'] = {}
        for key, value in vars(obj).items():
            if not key.startswith('_'):
                with contextlib.suppress(ValueError):  # Values that are not plain data are left to the constructor.
                    spec['attributes'][key] = _json_plain(value, key)
    return spec


def _module_tensors(module):
    for path, m in module.named_modules():
        for kind in (m._parameters, m._buffers):
            for name, tensor in kind.items():
                if tensor is not None:
                    yield (f'{path}.{name}' if path else name), tensor


def _json_plain(value, what):
    """`value` as JSON data (numpy scalars become numbers, tuples lists); anything else raises ValueError."""
    if isinstance(value, np.generic) and value.dtype.kind in 'biuf':
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_plain(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_plain(v, what) for k, v in value.items()}
    raise ValueError(f'{what}: {type(value).__name__} values cannot be stored in a safetensors checkpoint')

# ----------------------------------------------------------------------------
# Reading.

MAX_ARG_ITEMS = 10_000           # Items in one object's constructor arguments.
MAX_ARG_DEPTH = 8                # Nesting of constructor arguments.
MAX_ARG_LIST = 64                # Length of one list argument.
MAX_MODULE_DEPTH = 64            # Nesting of a stored module tree.
MAX_METADATA = 1 << 24           # Bytes of safetensors JSON metadata.
_MISSING = object()
_prototypes = collections.OrderedDict()   # (class, arguments) -> network built and traced on meta (a few recent).
_TRUST_HINT = '; if you trust the file, load it with trust_pickle=True (--trust-pickle)'

# Plausible ranges of constructor arguments, by argument name (for every persistent class; list arguments
# element-wise). The tensors a file holds bound the rest (see _Builder.construct).
ARG_LIMITS = {
    'img_resolution': (1, 4096), 'img_channels': (1, 64), 'label_dim': (0, 100_000), 'augment_dim': (0, 1024),
    'model_channels': (1, 4096), 'channel_mult': (1, 64), 'channel_mult_emb': (1, 64), 'channel_mult_noise': (1, 64),
    'num_blocks': (0, 64), 'attn_resolutions': (0, 4096), 'dropout': (0, 1), 'label_dropout': (0, 1),
    'M': (2, 100_000), 'in_channels': (0, 65536), 'out_channels': (0, 65536), 'emb_channels': (0, 65536),
    'in_features': (0, 65536), 'out_features': (0, 65536), 'num_channels': (1, 65536), 'kernel': (0, 15),
    'num_heads': (0, 1024), 'channels_per_head': (1, 65536), 'num_groups': (1, 65536),
    'min_channels_per_group': (1, 65536), 'max_positions': (1, 1e9), 'resample_filter': (-1e6, 1e6),
}
_INT_LIMIT = 1 << 31             # Any other integer argument.
_MAX_STR = 10_000                # Any string argument.


class CheckpointError(InputError):
    """A checkpoint file that cannot be loaded; the message is one line naming the file and the problem."""


class NotANetworkError(CheckpointError):
    """The file was read (or recognised), but it holds no network under 'ema'."""


def _fail(name, message):
    safe_pickle.fail(name, message, CheckpointError)


class _PersistentStub(safe_pickle.Record):
    """What `_reconstruct_persistent_obj(meta)` becomes: the stored record, nothing executed."""

    def __init__(self, meta):
        self.meta = meta


class _ContainerStub(safe_pickle.Record):
    """A torch.nn container (ModuleDict etc.) read as data: BUILD stores its `__dict__` in `state`."""
    kind = None
    state = None


_CONTAINERS = {kind: type(f'_{kind}Stub', (_ContainerStub,), dict(kind=kind))
               for kind in ('ModuleDict', 'ModuleList', 'Sequential')}


class _EasyDictStub(dict, safe_pickle.Record):
    """`dnnlib.util.EasyDict` read as data (NEWOBJ, then SETITEMS); becomes an EasyDict."""

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError('EasyDict() with arguments')
        super().__init__()


def _pickle_globals(name):
    """The table of globals a network pickle may reference (see safe_pickle.Unpickler)."""
    def table(ref):
        def load_blob(blob):
            storage = safe_pickle.load_storage_blob(blob, name, ref().budget)
            ref().consume(blob)
            return storage

        def device(spec):
            if not isinstance(spec, (str, int)) or isinstance(spec, bool):
                ref().refuse('refusing torch.device of a non-string')
            return torch.device(spec)
        allowed = {
            ('torch_utils.persistence', '_reconstruct_persistent_obj'): _PersistentStub,
            ('torch.storage', '_load_from_bytes'): load_blob,
            ('torch', 'device'): device,
            ('dnnlib.util', 'EasyDict'): _EasyDictStub,
            ('builtins', 'slice'): slice, ('__builtin__', 'slice'): slice,
        }
        allowed.update(safe_pickle.numpy_globals(ref))
        for kind, stub in _CONTAINERS.items():
            allowed[('torch.nn.modules.container', kind)] = stub
        allowed.update(safe_pickle.tensor_globals(name))
        return allowed
    return table


def _is_scalar(value):
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, np.generic) and value.dtype.kind in 'biuf')


def _kind(value):
    if isinstance(value, (bool, np.bool_)):
        return 'bool'
    if isinstance(value, (int, float, np.integer, np.floating)):
        return 'number'
    if isinstance(value, (list, tuple)):
        return 'sequence'
    return type(value).__name__


class _Node:
    """One stored module: class name, tensors by name (kind 'param', 'buffer' or None if not recorded; a tensor or
    a `_LazyTensor`) and child nodes by name."""

    def __init__(self, class_name):
        self.class_name, self.tensors, self.children = class_name, {}, {}


class _LazyTensor:
    """A tensor of a safetensors file: shape and dtype known, data read by `load()`."""
    _DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
               'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
               'BOOL': torch.bool}

    def __init__(self, handle, key, name):
        self.handle, self.key = handle, key
        view = handle.get_slice(key)
        self.shape = torch.Size(view.get_shape())
        self.dtype = self._DTYPES.get(view.get_dtype())
        if self.dtype is None:
            _fail(name, f'tensor {printable(key, 80)} has unsupported type {printable(view.get_dtype(), 20)}')

    def load(self):
        # A fresh copy: the library's buffer is not aligned like torch's own, and CPU kernels may round differently.
        return self.handle.get_tensor(self.key).clone()


class _Builder:
    """Rebuilds the persistent objects of one file (see the comment above)."""

    def __init__(self, name, registry, hint=''):
        self.name, self.registry, self.hint = name, registry, hint
        self.memo, self.active = {}, set()

    def fail(self, message):
        _fail(self.name, message)

    # Data from a pickle.
    def convert(self, obj, depth=0):
        """Stored data -> loaded data: persistent objects built, containers copied (each stored object once)."""
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if key in self.active:
            self.fail('contains a cyclic reference')
        if depth > safe_pickle.MAX_DEPTH:
            self.fail(f'limit hit: data nested deeper than {safe_pickle.MAX_DEPTH} levels')
        self.active.add(key)
        if isinstance(obj, _PersistentStub):
            result = self.build_stub(obj)
        elif isinstance(obj, _EasyDictStub):
            result = _easydict((self.convert(k, depth + 1), self.convert(v, depth + 1)) for k, v in obj.items())
        elif isinstance(obj, dict):
            result = type(obj)((self.convert(k, depth + 1), self.convert(v, depth + 1)) for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            result = type(obj)(self.convert(v, depth + 1) for v in obj)
        elif isinstance(obj, safe_pickle.NumpyDtype):
            result = obj.dtype
        elif _is_scalar(obj) or isinstance(obj, (bytes, complex, slice, np.generic, torch.Tensor, torch.Size,
                                                 torch.device, torch.dtype)):
            result = obj
        elif isinstance(obj, _ContainerStub):
            self.fail(f'a {obj.kind} outside any network')
        else:
            self.fail(f'unexpected {printable(type(obj).__name__, 40)} object in the data')
        self.active.discard(key)
        self.memo[key] = result
        return result

    def build_stub(self, stub):
        meta = stub.meta
        if not isinstance(meta, dict) or meta.get('type') != 'class':
            self.fail('a persistent object whose record is not a class record')
        class_name, state = meta.get('class_name'), meta.get('state')
        if not isinstance(class_name, str):
            self.fail('a persistent object without a class name')
        if meta.get('version') != persistence._version or isinstance(meta.get('version'), bool):
            self.fail(f'unsupported persistence format version {printable(repr(meta.get("version")), 20)} for '
                      f'{printable(class_name, 80)}')
        if state is None:
            state = {}
        if not isinstance(state, dict):
            self.fail(f'{printable(class_name, 80)}: stored state is a {printable(type(state).__name__)}, not a dict')
        cls = self.lookup(class_name)
        args = self.arguments(state.get('_init_args', ()), class_name)
        kwargs = self.arguments(state.get('_init_kwargs', {}), class_name)
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or \
                not all(isinstance(k, str) for k in kwargs):
            self.fail(f'{printable(class_name, 80)}: stored constructor arguments are not a list and a dict')
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            node = self.node_from_stub(stub, state, class_name, set(), 0)
            training = state.get('training', False)
            attributes = {k: state[k] for k in _MODULE_ATTRIBUTES if k in state}
            return self.build_module(cls, class_name, list(args), dict(kwargs), node, training, attributes)
        obj = self.construct(cls, class_name, list(args), dict(kwargs), None)
        plain = {k: v for k, v in state.items() if k not in ('_init_args', '_init_kwargs')}
        self.set_attributes(obj, plain, class_name)
        return obj

    def lookup(self, class_name):
        cls = self.registry.get(class_name)
        if cls is None:
            known = ', '.join(sorted(self.registry)) or 'none'
            self.fail(f'checkpoint contains class "{printable(class_name, 80)}", which no loaded module declares '
                      f'(known: {known}){self.hint}')
        return cls

    def arguments(self, value, class_name):
        """Constructor arguments as plain data (numbers, strings, lists, tuples, dicts; bounded)."""
        count = [0]

        def plain(v, depth):
            count[0] += 1
            if count[0] > MAX_ARG_ITEMS or depth > MAX_ARG_DEPTH:
                self.fail(f'limit hit: constructor arguments of {printable(class_name, 80)} hold more than '
                          f'{MAX_ARG_ITEMS} items or nest deeper than {MAX_ARG_DEPTH} levels')
            if isinstance(v, str) and len(v) > _MAX_STR:
                self.fail(f'limit hit: a constructor argument of {printable(class_name, 80)} is a string of '
                          f'{len(v)} characters')
            if _is_scalar(v):
                return v
            if isinstance(v, (list, tuple)):
                return type(v)(plain(x, depth + 1) for x in v)
            if isinstance(v, dict):
                if not all(isinstance(k, str) for k in v):
                    self.fail(f'{printable(class_name, 80)}: a constructor argument is a dict with non-string keys')
                return {k: plain(x, depth + 1) for k, x in v.items()}
            self.fail(f'{printable(class_name, 80)}: a constructor argument is a {printable(type(v).__name__, 40)}, '
                      'not plain data')
        return plain(value, 0)

    def check_arguments(self, cls, class_name, args, kwargs):
        """Bind the arguments to the constructor and check each against ARG_LIMITS (by name) or the generic limits."""
        target = cls.__bases__[0] if cls in persistence._decorators else cls  # pylint: disable=protected-access
        params = inspect.signature(target.__init__).parameters
        try:
            bound = inspect.signature(target.__init__).bind(None, *args, **kwargs)
        except TypeError as e:
            self.fail(f'stored arguments do not fit {printable(class_name, 80)}() '
                      f'({safe_pickle.describe_exception(e)})')
        named = []
        for key, value in bound.arguments.items():
            kind = params[key].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                named.extend(value.items())
            elif kind == inspect.Parameter.VAR_POSITIONAL:
                named.extend((None, v) for v in value)
            else:
                named.append((key, value))
        for key, value in named:
            self.check_value(class_name, key, value)

    def check_value(self, class_name, key, value):
        where = f'{printable(class_name, 80)} argument {printable(key or "(positional)", 80)}'
        if key == 'model_type':
            cls = self.registry.get(value) if isinstance(value, str) else None
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                self.fail(f'{where} = {printable(repr(value), 80)} names no known network class')
            return
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > MAX_ARG_LIST:
            self.fail(f'limit hit: {where} is a list of {len(value)} items (at most {MAX_ARG_LIST})')
        lo, hi = ARG_LIMITS.get(key, (-_INT_LIMIT, _INT_LIMIT))
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                continue
            if (key in ARG_LIMITS or isinstance(v, (int, np.integer))) and not lo <= v <= hi:
                self.fail(f'{where} = {printable(repr(v), 40)} is outside the plausible range [{lo:g}, {hi:g}]')

    def construct(self, cls, class_name, args, kwargs, limits=None):
        """cls(*args, **kwargs) after checking the arguments; any failure is one line. With `limits` (modules,
        tensor elements) the object is a network built on the meta device under those limits and traced if it is a
        denoiser; a copy of a cached prototype when the same class and arguments were built before."""
        self.check_arguments(cls, class_name, args, kwargs)
        key = None
        if limits is not None:
            key = (cls, json.dumps([args, kwargs], sort_keys=True, default=repr))
            if key in _prototypes:
                _prototypes.move_to_end(key)
                return _clone_module(_prototypes[key], {})
        try:
            if limits is None:
                return cls(*args, **kwargs)
            with torch.device('meta'), _construction_limits(self.name, class_name, *limits):
                module = cls(*args, **kwargs)
        except (InputError, MemoryError):
            raise
        except Exception as e:  # pylint: disable=broad-except
            self.fail(f'cannot build {printable(class_name, 80)} from its stored arguments '
                      f'({safe_pickle.describe_exception(e)}){self.hint}')
        if not isinstance(module, torch.nn.Module):
            self.fail(f'{printable(class_name, 80)} did not construct a module')
        _prototypes[key] = module
        while len(_prototypes) > 4:
            _prototypes.popitem(last=False)
        return _clone_module(module, {})

    def set_attributes(self, obj, state, class_name):
        # Stored plain attributes (e.g. a loss's step count or FDM's clamp state), as plain data. One that the
        # constructed object already has must keep its kind; methods and properties are never replaced.
        for key, value in state.items():
            if not (isinstance(key, str) and key.isidentifier() and not key.startswith('__')):
                continue
            current = inspect.getattr_static(obj, key, _MISSING)
            if current is not _MISSING and (callable(current) or isinstance(current, (property, classmethod,
                                                                                      staticmethod))
                                            or _kind(current) != _kind(value)):
                continue
            setattr(obj, key, self.arguments(value, class_name))

    # The module tree.
    def node_from_stub(self, stub, state, class_name, seen, depth):
        """The `_Node` tree of a stored module (persistent stub or container stub)."""
        if id(state) in seen:
            self.fail(f'module {printable(class_name, 80)} is stored twice in one network')
        seen.add(id(state))
        if depth > MAX_MODULE_DEPTH:
            self.fail(f'limit hit: modules nested deeper than {MAX_MODULE_DEPTH} levels')
        node = _Node(class_name)
        for kind, field in (('param', '_parameters'), ('buffer', '_buffers')):
            entries = state.get(field) or {}
            if not isinstance(entries, dict):
                self.fail(f'{printable(class_name, 80)}.{field} is a {printable(type(entries).__name__)}, not a dict')
            for key, value in entries.items():
                if not isinstance(key, str) or not (value is None or isinstance(value, torch.Tensor)):
                    self.fail(f'{printable(class_name, 80)}: {kind} {printable(repr(key), 80)} is not a tensor')
                if key in node.tensors:
                    self.fail(f'{printable(class_name, 80)}: {printable(key, 80)} stored as parameter and buffer')
                node.tensors[key] = (kind, value)
        children = state.get('_modules') or {}
        if not isinstance(children, dict):
            self.fail(f'{printable(class_name, 80)}._modules is a {printable(type(children).__name__)}, not a dict')
        for key, child in children.items():
            if not isinstance(key, str):
                self.fail(f'{printable(class_name, 80)}: a child module with a non-string name')
            if child is None:
                node.children[key] = None
                continue
            if isinstance(child, _PersistentStub) and isinstance(child.meta, dict):
                child_name, child_state = child.meta.get('class_name'), child.meta.get('state')
            elif isinstance(child, _ContainerStub):
                child_name, child_state = child.kind, child.state
            else:
                self.fail(f'{printable(class_name, 80)}: child {printable(key, 80)} is a '
                          f'{printable(type(child).__name__, 40)}, not a module')
            if not isinstance(child_name, str) or not isinstance(child_state, dict):
                self.fail(f'{printable(class_name, 80)}: child {printable(key, 80)} has no class name or state')
            node.children[key] = self.node_from_stub(child, child_state, child_name, seen, depth + 1)
        return node

    def build_module(self, cls, class_name, args, kwargs, node, training, attributes):
        """Construct on the meta device (capped by what the file holds), compare, put the tensors in, trace."""
        nodes = list(_walk(node, ''))
        stored = [(path, key, kind, t) for path, n in nodes for key, (kind, t) in n.tensors.items() if t is not None]
        numel = sum(t.shape.numel() for _, _, _, t in stored)
        module = self.construct(cls, class_name, args, kwargs, (len(nodes) + 16, numel + (1 << 20)))
        plan = self.match(module, node, '')
        if not isinstance(training, bool):
            self.fail(f'{printable(class_name, 80)}: stored "training" flag is not a bool')
        seen, logical, storages = set(), 0, {}
        for owner, key, kind, meta, stored_tensor, where in plan:
            if id(stored_tensor) in seen:
                self.fail(f'tensor {where} is stored twice in one network')
            seen.add(id(stored_tensor))   # `plan` keeps every stored object alive, so ids are not reused.
            tensor = stored_tensor.load() if isinstance(stored_tensor, _LazyTensor) else stored_tensor
            logical += tensor.numel() * tensor.element_size()
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            if logical > sum(storages.values()) + (1 << 20):
                self.fail('limit hit: the network\'s tensors are larger than the data stored for them (shared views)')
            tensor = tensor.detach().to(meta.dtype) if tensor.dtype != meta.dtype else tensor.detach()
            if kind == 'param':
                owner._parameters[key] = torch.nn.Parameter(tensor, requires_grad=meta.requires_grad)
            else:
                owner._buffers[key] = tensor
        for m in module.modules():
            for value in list(m._parameters.values()) + list(m._buffers.values()) + list(vars(m).values()):
                if isinstance(value, torch.Tensor) and value.is_meta:
                    self.fail(f'{printable(class_name, 80)} holds a tensor that the file does not store')
        _trace_image_networks(module, self.name, class_name)
        module.train(training)
        for key in _MODULE_ATTRIBUTES:
            if isinstance(attributes.get(key), bool):
                setattr(module, key, attributes[key])
        return module

    def match(self, module, node, path):
        """Compare the constructed module tree with the stored one; returns what to put where."""
        where = printable(path or '(top)', 120)
        if node.class_name != type(module).__name__:
            self.fail(f'module {where} is a {printable(node.class_name, 80)} in the file but '
                      f'{type(module).__name__} when built from the stored arguments')
        expected = {k: ('param', v) for k, v in module._parameters.items() if v is not None}
        expected.update({k: ('buffer', v) for k, v in module._buffers.items() if v is not None})
        have = {k for k, (_, t) in node.tensors.items() if t is not None}
        if have != set(expected):
            missing, extra = sorted(set(expected) - have), sorted(have - set(expected))
            self.fail(f'tensors of module {where} do not match its stored arguments: missing '
                      f'{printable(missing[:5], 120)}, unexpected {printable(extra[:5], 120)}')
        plan = []
        for key, (kind, meta) in expected.items():
            stored_kind, tensor = node.tensors[key]
            name = printable(f'{path}.{key}' if path else key, 120)
            if stored_kind not in (None, kind):
                self.fail(f'{name} is stored as a {stored_kind} but the network has it as a {kind}')
            if tensor.shape != meta.shape:
                self.fail(f'{name} has shape {list(tensor.shape)} in the file but {list(meta.shape)} in the network '
                          'built from the stored arguments')
            if tensor.dtype.is_floating_point != meta.dtype.is_floating_point or \
                    (not meta.dtype.is_floating_point and tensor.dtype != meta.dtype):
                self.fail(f'{name} is stored as {tensor.dtype}, the network needs {meta.dtype}')
            if isinstance(tensor, torch.Tensor) and (tensor.layout != torch.strided or tensor.device.type != 'cpu'):
                self.fail(f'{name} is not a plain CPU tensor')
            owner = module
            plan.append((owner, key, kind, meta, tensor, name))
        children = {k: v for k, v in module._modules.items() if v is not None}
        stored_children = {k for k, v in node.children.items() if v is not None}
        if stored_children != set(children):
            self.fail(f'child modules of {where} do not match its stored arguments: missing '
                      f'{printable(sorted(set(children) - stored_children)[:5], 120)}, unexpected '
                      f'{printable(sorted(stored_children - set(children))[:5], 120)}')
        for key, child in children.items():
            plan += self.match(child, node.children[key], f'{path}.{key}' if path else key)
        return plan


def _clone_module(module, memo):
    """A copy of a module built on the meta device: fresh meta tensors, submodules copied recursively, other
    attributes deep-copied. (copy.deepcopy would go through a persistent class's __reduce__.)"""
    if id(module) in memo:
        return memo[id(module)]
    clone = object.__new__(type(module))
    memo[id(module)] = clone
    for key, value in vars(module).items():
        if key in ('_parameters', '_buffers'):
            # torch.empty, not empty_like: the meta device's empty_like is a Python rule that imports sympy.
            value = collections.OrderedDict(
                (k, None if t is None else torch.nn.Parameter(_empty(t), requires_grad=t.requires_grad)
                 if isinstance(t, torch.nn.Parameter) else _empty(t)) for k, t in value.items())
        elif key == '_modules':
            value = collections.OrderedDict((k, None if m is None else _clone_module(m, memo))
                                            for k, m in value.items())
        else:
            value = copy.deepcopy(value, memo)
        clone.__dict__[key] = value
    return clone


def _empty(t):
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _walk(node, path):
    yield path, node
    for key, child in node.children.items():
        if child is not None:
            yield from _walk(child, f'{path}.{key}' if path else key)


def _easydict(items):
    from dnnlib.util import EasyDict
    return EasyDict(items)


@contextlib.contextmanager
def _construction_limits(name, class_name, max_modules, max_numel):
    """Abort a constructor as soon as it registers more modules or tensor elements than the file can fill."""
    counts = [0, 0]

    def on_module(parent, key, module):
        if module is not None:
            counts[0] += 1
            if counts[0] > max_modules:
                _fail(name, f'limit hit: the stored arguments of {printable(class_name, 80)} build more than the '
                            f'{max_modules - 16} modules the file holds')

    def on_tensor(parent, key, tensor):
        if tensor is not None:
            counts[1] += tensor.numel()
            if counts[1] > max_numel:
                _fail(name, f'limit hit: the stored arguments of {printable(class_name, 80)} build more tensor '
                            f'elements than the file holds ({max_numel - (1 << 20)})')
    from torch.nn.modules import module as module_hooks
    handles = [module_hooks.register_module_module_registration_hook(on_module),
               module_hooks.register_module_parameter_registration_hook(on_tensor),
               module_hooks.register_module_buffer_registration_hook(on_tensor)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def is_denoiser(obj):
    """True for a network with the denoiser interface: integer `img_resolution` >= 1, `img_channels` >= 1 and
    `label_dim` >= 0 (called as ``net(x, sigma, class_labels)``; see training.networks)."""
    if not isinstance(obj, torch.nn.Module):
        return False
    values = [getattr(obj, k, None) for k in ('img_resolution', 'img_channels', 'label_dim')]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values) and \
        values[0] >= 1 and values[1] >= 1 and values[2] >= 0


def _trace_image_networks(module, name, class_name):
    """Every image network in `module` (a persistent module constructed with `img_resolution` and `in_channels`:
    the raw U-Nets, whatever wraps them) must map an empty batch x [0, in_channels, R, R], noise labels and class
    labels to images of the same size. This catches stored arguments that construct but cannot run (e.g. zero
    channels per group). The empty batch checks every shape at no cost in time or memory; on the meta device the
    same trace would run PyTorch's Python meta kernels, which import torch._dynamo and sympy (about 70 MiB)."""
    for path, m in module.named_modules():
        if not is_persistent(m):
            continue
        try:
            args = inspect.signature(type(m).__bases__[0].__init__).bind(None, *m._init_args, **m._init_kwargs)
        except TypeError:
            continue
        args = args.arguments
        r, c, labels = (args.get(k) for k in ('img_resolution', 'in_channels', 'label_dim'))
        if not (isinstance(r, int) and isinstance(c, int)):
            continue
        labels = labels if isinstance(labels, int) else 0
        where = f'{printable(class_name, 80)} ({printable(path or type(m).__name__, 80)})'
        x = torch.zeros([0, c, r, r])
        try:
            with torch.no_grad():
                y = m(x, torch.ones([0]), torch.zeros([0, labels]) if labels else None)
        except (InputError, MemoryError):
            raise
        except Exception as e:  # pylint: disable=broad-except
            _fail(name, f'{where} built from the stored arguments fails on an input of shape {[0, c, r, r]} '
                        f'({safe_pickle.describe_exception(e)})')
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[2:] != x.shape[2:]:
            _fail(name, f'{where} maps an input of shape {[0, c, r, r]} to '
                        f'{list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}')


def load_pickle(file, trust_pickle=False, name=None):
    """Unpickle a checkpoint from a binary file object.

    Safe by default: persistent classes become this project's classes, no embedded code runs, and every failure
    is a `CheckpointError` (an `InputError`). With `trust_pickle=True` the file is read with the plain unpickler
    (embedded sources are executed).
    """
    name = name or getattr(file, 'name', None) or 'pickle'
    if trust_pickle:
        try:
            return pickle.load(file)
        except MemoryError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            _fail(name, f'legacy unpickling failed ({safe_pickle.describe_exception(e)})')
    data, _ = safe_pickle.read_pickle(file, name, _pickle_globals(name), hint=_TRUST_HINT)
    with _one_line(name):
        result = _Builder(name, persistence.class_registry(), _TRUST_HINT).convert(data)
        safe_pickle.check_structure(result, name)
    return result


@contextlib.contextmanager
def _one_line(name):
    # Safety net of the builders: an unforeseen error about a file is still one line naming it.
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as e:  # pylint: disable=broad-except
        _fail(name, f'cannot be loaded ({safe_pickle.describe_exception(e)})')


def load_safetensors(path, name=None):
    """Read a checkpoint written by `save_safetensors` through the same checks as a pickle; nothing is unpickled."""
    from safetensors import SafetensorError, safe_open
    name = name or path
    try:
        handle = safe_open(path, framework='pt', device='cpu')
    except (SafetensorError, OSError) as e:
        _fail(name, f'not a readable safetensors file ({safe_pickle.describe_exception(e)})')
    with handle, _one_line(name):
        return _from_safetensors(handle, handle.metadata() or {}, name)


def _from_safetensors(handle, metadata, name):
    if metadata.get('format') != SAFETENSORS_FORMAT:
        _fail(name, 'a safetensors file without this toolkit\'s checkpoint metadata (class names and constructor '
                    'arguments); it holds tensors only')
    if metadata.get('version') != str(SAFETENSORS_VERSION):
        _fail(name, f'checkpoint metadata version {printable(metadata.get("version"), 20)} is not supported')
    text = metadata.get('objects', '')
    if len(text) > MAX_METADATA:
        _fail(name, f'limit hit: metadata larger than {MAX_METADATA} bytes')
    try:
        objects = json.loads(text)
    except (ValueError, RecursionError) as e:
        _fail(name, f'corrupt checkpoint metadata ({safe_pickle.describe_exception(e)})')
    if not isinstance(objects, dict):
        _fail(name, 'checkpoint metadata is not a JSON object')
    safe_pickle.check_structure(objects, name, max_items=100_000)
    builder = _Builder(name, persistence.class_registry())
    keys = set(handle.keys())
    used = set()
    result = {}
    for key, spec in objects.items():
        if spec is None or (isinstance(spec, dict) and set(spec) == {'value'}):
            result[key] = None if spec is None else spec['value']
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get('class'), str):
            _fail(name, f'metadata of {printable(key, 80)} names no class')
        class_name = spec['class']
        cls = builder.lookup(class_name)
        args = builder.arguments(spec.get('args', []), class_name)
        kwargs = builder.arguments(spec.get('kwargs', {}), class_name)
        attributes = spec.get('attributes', {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(attributes, dict):
            _fail(name, f'metadata of {printable(key, 80)} has malformed arguments or attributes')
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            prefix = key + '/'
            mine = sorted(k for k in keys if k.startswith(prefix))
            used.update(mine)
            node = _node_from_safetensors(handle, spec.get('modules'), [k[len(prefix):] for k in mine], mine, name)
            result[key] = builder.build_module(cls, class_name, args, kwargs, node, spec.get('training', False),
                                               attributes)
        else:
            obj = builder.construct(cls, class_name, args, kwargs, None)
            builder.set_attributes(obj, attributes, class_name)
            result[key] = obj
    if keys - used:
        _fail(name, f'tensors that belong to no network: {printable(sorted(keys - used)[:5], 120)}')
    return result


def _node_from_safetensors(handle, modules, names, keys, name):
    if not isinstance(modules, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in modules.items()) \
            or '' not in modules:
        _fail(name, 'checkpoint metadata lacks the module classes of a network')
    nodes = {path: _Node(class_name) for path, class_name in modules.items()}
    for path in sorted(nodes, key=lambda p: p.count('.')):
        if path:
            parent, _, child = path.rpartition('.')
            if parent not in nodes:
                _fail(name, f'module {printable(path, 120)} has no parent module in the metadata')
            nodes[parent].children[child] = nodes[path]
    for short, key in zip(names, keys):
        path, _, tensor = short.rpartition('.')
        if path not in nodes:
            _fail(name, f'tensor {printable(key, 120)} belongs to no module of the metadata')
        nodes[path].tensors[tensor] = (None, _LazyTensor(handle, key, name))
    return nodes['']

# ----------------------------------------------------------------------------
# Files.


def describe_file(path):
    """What a file is, in words, from its first bytes (no unpickling): 'a network pickle', 'a safetensors file',
    'a training state of this toolkit', 'a torch.save archive', 'a TorchScript archive', 'a zip archive',
    'a text file', 'an empty file', 'a folder', 'a missing file' or 'a binary file of unknown format'."""
    if os.path.isdir(path):
        return 'a folder'
    if not os.path.exists(path):
        return 'a missing file'
    with open(path, 'rb') as f:
        return _sniff(f)[1]


def _sniff(f):
    """(kind, description) of an open binary file, which is left at its start."""
    start = f.tell()
    head = f.read(64)
    size = f.seek(0, os.SEEK_END) - start
    f.seek(start)
    if not head:
        return 'empty', 'an empty file'
    if head[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
        return 'zip', _describe_zip(f)
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], 'little') <= size - 8 and head[8:9] == b'{':
        return 'safetensors', 'a safetensors file'
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle', 'a pickle'
    try:
        text = head.decode('utf-8')
        if all(c.isprintable() or c in '\n\r\t' for c in text):
            return 'text', 'a text file'
    except UnicodeDecodeError:
        pass
    return 'unknown', 'a binary file of unknown format'


def _describe_zip(f):
    start = f.tell()
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n == 'data.pkl' or n.endswith('/data.pkl') and n.count('/') == 1]
            if any(n.endswith('/constants.pkl') for n in names):
                return 'a TorchScript archive'
            if len(pickles) == 1:
                info = archive.getinfo(pickles[0])
                small = info.compress_type == zipfile.ZIP_STORED and info.file_size <= (1 << 26)
                return 'a training state of this toolkit' if small and b'edm-training-state' in archive.read(info) \
                    else 'a torch.save archive'
            if names and all(n.endswith('.npy') for n in names):
                return 'a numpy .npz archive'
            return 'a zip archive'
    except MemoryError:
        raise
    except Exception:  # pylint: disable=broad-except
        return 'a damaged zip archive'
    finally:
        f.seek(start)


def _not_a_network(name, message):
    safe_pickle.fail(name, message, NotANetworkError)


def _not_a_network_file(name, description):
    if description == 'a training state of this toolkit':
        match = re.fullmatch(r'training-state-(\d+)\.pt', os.path.basename(str(name)))
        snapshot = os.path.join(os.path.dirname(str(name)), f'network-snapshot-{match.group(1)}.pkl') if match \
            else 'network-snapshot-*.pkl of the same kimg'
        _not_a_network(name, 'it holds weights only (a training state of this toolkit, for --resume), not a network; '
                             f'load the matching {printable(snapshot)}')
    hint = 'expected an EDM network pickle (.pkl) or a .safetensors checkpoint'
    if description == 'a torch.save archive':
        _not_a_network(name, f'is a torch.save archive without a network; {hint}')
    _not_a_network(name, f'is {description}, not a network checkpoint; {hint}')


def load_network(path_or_url, trust_pickle=False, cache=True):
    """Load a checkpoint from a path or URL: an official EDM pickle, this project's snapshot, a `.safetensors`
    checkpoint written by `save_safetensors`, or a `torch.save` zip file that holds networks (PFGM++'s
    `training-state-*.pt`: dict(net, ema, optimizer_state, step)), read with the same restricted unpickler.

    Returns the checkpoint dictionary: ``'ema'`` (a denoiser network) and, for training snapshots, ``'loss_fn'``,
    ``'augment_pipe'`` and ``'dataset_kwargs'``. Any problem raises `CheckpointError` (a `dnnlib.util.InputError`;
    `NotANetworkError` for a file that holds no network) with one line that names the file.
    """
    import dnnlib
    name = path_or_url
    if not isinstance(name, str) or not name:
        raise CheckpointError('a network path or URL is required')
    if not dnnlib.util.is_url(name, allow_file_urls=True):
        if os.path.isdir(name):
            _fail(name, 'is a folder; expected a network file (.pkl or .safetensors)')
        if not os.path.exists(name):
            _fail(name, 'no such file')
    try:
        f = dnnlib.util.open_url(name, cache=cache)
    except (OSError, ValueError) as e:
        raise CheckpointError(printable(' '.join(str(e).split()))) from None
    with f:
        kind, description = _sniff(f)
        if kind == 'safetensors':
            data = _load_safetensors_file(f, name)
        elif kind in ('pickle', 'text', 'unknown'):
            try:
                data = load_pickle(f, trust_pickle=trust_pickle, name=name)
            except InputError:
                if kind != 'pickle':
                    _not_a_network_file(name, description)
                raise
        elif description == 'a torch.save archive':
            data = load_torch_zip(f, trust_pickle=trust_pickle, name=name)
            if not (isinstance(data, dict) and isinstance(data.get('ema'), torch.nn.Module)):
                _not_a_network_file(name, description)
        else:
            _not_a_network_file(name, description)
    return check_checkpoint(data, name)


def load_torch_zip(file, trust_pickle=False, name=None):
    """A `torch.save` zip file whose pickle may hold persistent networks, loaded like `load_pickle` (with
    `trust_pickle=True`: `torch.load(weights_only=False)`, which runs the embedded source)."""
    name = name or getattr(file, 'name', None) or 'archive'
    if trust_pickle:
        try:
            return torch.load(file, map_location='cpu', weights_only=False)
        except MemoryError:
            raise
        except Exception as e:  # pylint: disable=broad-except
            _fail(name, f'legacy unpickling failed ({safe_pickle.describe_exception(e)})')
    data = safe_pickle.load_torch_zip(file, name, _pickle_globals(name), hint=_TRUST_HINT)
    with _one_line(name):
        result = _Builder(name, persistence.class_registry(), _TRUST_HINT).convert(data)
        safe_pickle.check_structure(result, name)
    return result


def _load_safetensors_file(f, name):
    path = getattr(f, 'name', None)
    if isinstance(path, str) and os.path.isfile(path):
        return load_safetensors(path, name)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'checkpoint.safetensors')
        with open(path, 'wb') as out:
            shutil.copyfileobj(f, out)
        return load_safetensors(path, name)


def check_checkpoint(data, name):
    """`data` as a checkpoint dict whose 'ema' is a denoiser; a bare network becomes ``dict(ema=net)``."""
    if isinstance(data, torch.nn.Module):
        data = dict(ema=data)
    if isinstance(data, int) and data == 0x1950a86a20f9469cfc6c:   # The magic number that starts a legacy torch.save.
        _not_a_network(name, 'is a legacy torch.save file without a network; expected an EDM network pickle (.pkl) '
                             'or a .safetensors checkpoint')
    if not isinstance(data, dict):
        _not_a_network(name, f'not a network checkpoint: it holds a {printable(type(data).__name__, 40)} (expected a '
                             'dict whose "ema" is a network)')
    if 'ema' not in data:
        keys = ', '.join(printable(repr(k), 40) for k in list(data)[:8]) or 'none'
        _not_a_network(name, f'not a network checkpoint: no "ema" entry (keys: {keys})')
    if not is_denoiser(data['ema']):
        _not_a_network(name, f'not a network checkpoint: its "ema" is a {printable(type(data["ema"]).__name__, 40)}, '
                             'not a denoiser (a network with img_resolution, img_channels and label_dim, called as '
                             'net(x, sigma, class_labels))')
    return data
