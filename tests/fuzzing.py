"""A small fuzzing harness for the toolkit's file loaders (tests/test_fuzz.py, benchmarks/fuzz.py).

`KINDS` is a table of file kinds. Each `Kind` makes a valid small file, loads a file as the toolkit does, and
names the file's format, which selects structure-aware mutations (pickle opcodes and arguments, zip members, the
JSON header of safetensors, JSON documents) on top of the byte-level ones. Adding a kind is one `Kind(...)`
entry: its `make(folder)` returns the path of a valid file, its `load(path)` returns normally for a usable file and
raises `dnnlib.util.InputError` for an unusable one. Both are module-level functions (workers import them).

`run()` derives mutants from each valid file with a seeded generator and loads them in a few long-lived worker
processes (spawned, one thread, address space limited with RLIMIT_AS). A worker that dies (a crash) or overruns
the time limit is reported with its mutant and replaced. Every outcome other than a normal return or an
InputError with a one-line message is a failure.
"""

import dataclasses
import functools
import io
import json
import multiprocessing
import os
import pickle
import pickletools
import random
import resource
import struct
import sys
import time
import traceback
import warnings
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@dataclasses.dataclass
class Kind:
    name: str           # Table key.
    make: callable      # make(folder) -> path of a valid small file.
    load: callable      # load(path): returns for a usable file, raises dnnlib.util.InputError otherwise.
    format: str         # 'pickle', 'zip', 'safetensors', 'json' or 'bytes': selects structural mutations.
    file_name: str      # Name the mutant is written under (loaders may check it).
    fuzzed: bool = True  # Part of the default runs (False: the harness's own self-test).

# ----------------------------------------------------------------------------
# The file kinds of this toolkit.


def _tiny_network():
    import torch
    from training import networks
    torch.manual_seed(0)
    return networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=4, model_type='SongUNet',
                               model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[8], dropout=0)


def _tiny_checkpoint():
    from training.augment import AugmentPipe
    from training.loss import EDMLoss
    return dict(ema=_tiny_network().eval().requires_grad_(False), loss_fn=EDMLoss(),
                augment_pipe=AugmentPipe(p=0.1, xflip=1),
                dataset_kwargs=dict(resolution=8, max_size=32, use_labels=True))


def make_network_pickle(folder):
    from torch_utils import persistence
    path = os.path.join(folder, 'network.pkl')
    persistence.save_pickle(_tiny_checkpoint(), path)
    return path


def make_network_safetensors(folder):
    from torch_utils import persistence
    path = os.path.join(folder, 'network.safetensors')
    persistence.save_safetensors(_tiny_checkpoint(), path)
    return path


def load_network(path):
    import torch
    from torch_utils import persistence
    net = persistence.load_network(path)['ema']
    if net.img_resolution * net.img_channels <= 64:   # The valid file's size: run it (larger ones are traced only).
        with torch.no_grad():
            x = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution])
            labels = torch.zeros([1, net.label_dim]) if net.label_dim else None
            net(x, torch.ones([1]), labels)


def _tiny_config():
    import dnnlib
    from training import config
    c = config.build(data='unused.zip', cond=True, arch='ddpmpp', cbase=8, cres=[1], batch=4, workers=0, augment=0,
                     dropout=0, seed=1)
    c.network_kwargs.update(num_blocks=1, attn_resolutions=[])
    c.dataset_info = dnnlib.EasyDict(resolution=8, channels=1, label_dim=4, size=8)
    c.dataset_kwargs.resolution, c.dataset_kwargs.max_size = 8, 8
    return c


def make_training_state(folder):
    import numpy as np
    from training import training_loop
    from training.demo_data import write_dataset
    images = np.random.RandomState(0).randint(0, 256, size=[8, 8, 8]).astype(np.uint8)
    c = _tiny_config()
    c.dataset_kwargs.path = write_dataset(images, os.path.join(folder, 'tiny.zip'), np.arange(8) % 4)
    c.update(run_dir=folder, total_kimg=0.004, kimg_per_tick=1, snapshot_ticks=None, state_dump_ticks=1)
    training_loop.training_loop(**c, max_steps=1)
    return os.path.join(folder, 'training-state-000000.pt')


def load_training_state(path):
    import torch
    import dnnlib
    from training import training_loop
    c = _tiny_config()
    state = training_loop.load_training_state(path)
    training_loop.check_resume(state, c, path=path)
    info = c.dataset_info
    net = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=info.resolution,
                                         img_channels=info.channels, label_dim=info.label_dim)
    ema = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=info.resolution,
                                         img_channels=info.channels, label_dim=info.label_dim)
    optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **c.optimizer_kwargs)
    loss_fn = dnnlib.construct_class_by_name(**c.loss_kwargs)
    saved_rng = torch.get_rng_state()
    try:
        training_loop.apply_training_state(state, net, ema, optimizer, loss_fn, torch.device('cpu'))
        loss_fn(net, torch.zeros([2, 1, 8, 8]), torch.eye(4)[:2]).mean().backward()   # One step resumes.
        optimizer.step()
    finally:
        torch.set_rng_state(saved_rng)


def make_selftest(folder):
    path = os.path.join(folder, 'selftest.bin')
    with open(path, 'wb') as f:
        f.write(b'fine')
    return path


def load_selftest(path):
    """Misbehaves on purpose (the mutants are SELFTEST), so that tests can check what the harness reports."""
    import ctypes
    import dnnlib
    with open(path, 'rb') as f:
        data = f.read()
    if data == b'crash':
        ctypes.string_at(0)                      # Reads address 0: the interpreter dies (SIGSEGV).
    if data == b'memory':
        return bytearray(2 << 30)               # Above the worker's address-space limit.
    if data == b'hang':
        time.sleep(3600)
    if data == b'other':
        raise KeyError('not an InputError')
    if data == b'two lines':
        raise dnnlib.util.InputError('first\nsecond')
    if data != b'fine':
        raise dnnlib.util.InputError(f'{path}: refused')


def make_dataset_zip(folder):
    import numpy as np
    from training.demo_data import write_dataset
    images = np.random.RandomState(1).randint(0, 256, size=[4, 8, 8]).astype(np.uint8)
    return write_dataset(images, os.path.join(folder, 'data.zip'), np.arange(4) % 2)


def load_dataset_zip(path):
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(path, use_labels=True)
    for i in range(len(dataset)):
        dataset[i]
        dataset.get_label(i)


def make_fid_reference(folder):
    import numpy as np
    path = os.path.join(folder, 'ref.npz')
    rnd = np.random.RandomState(2)
    a = rnd.randn(16, 16)
    np.savez(path, mu=rnd.randn(16), sigma=a @ a.T)
    return path


def load_fid_reference(path):
    import fid
    fid.load_reference_stats(path)


GITS_SEARCH = dict(network='net.pkl:1:2', num_steps=5, solver='ipndm', num_steps_tea=61)


def make_gits_cache(folder):
    path = os.path.join(folder, 'cache.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(search=GITS_SEARCH, t_steps=[80.0, 9.7, 1.6, 0.21, 0.002]), f)
    return path


def load_gits_cache(path):
    """A cache file is read by `samplers.selection.cached_search`, which recomputes on a bad record: here the
    reason it gives becomes the InputError, so refusals are counted."""
    import dnnlib
    from samplers import selection
    t_steps, reason = selection._read_cached(path, GITS_SEARCH)  # pylint: disable=protected-access
    if t_steps is None:
        raise dnnlib.util.InputError(f'{path}: {reason}')


KINDS = {kind.name: kind for kind in [
    Kind('network-pickle', make_network_pickle, load_network, 'pickle', 'network.pkl'),
    Kind('training-state', make_training_state, load_training_state, 'zip', 'training-state-000000.pt'),
    Kind('network-safetensors', make_network_safetensors, load_network, 'safetensors', 'network.safetensors'),
    Kind('dataset-zip', make_dataset_zip, load_dataset_zip, 'zip', 'dataset.zip'),
    Kind('fid-reference', make_fid_reference, load_fid_reference, 'zip', 'ref.npz'),
    Kind('gits-cache', make_gits_cache, load_gits_cache, 'json', 'cache.json'),
    Kind('selftest', make_selftest, load_selftest, 'selftest', 'selftest.bin', fuzzed=False),
]}
FUZZED = [name for name, kind in KINDS.items() if kind.fuzzed]

# ----------------------------------------------------------------------------
# Mutations.

EXTREME_INTS = [0, 1, -1, 2, 7, 255, 256, 65535, 2 ** 31 - 1, -2 ** 31, 2 ** 32, 2 ** 40, 2 ** 63 - 1, 10 ** 12]
EXTREME_VALUES = EXTREME_INTS + [0.0, -0.0, 1e308, -1e308, float('inf'), float('nan'), '', 'x', '\x1b[2K\rOK',
                                 'model_type', 'SongUNet', 'Conv2d', None, True, False, [], {}, [1] * 1000, [[[]]]]


def flip_bytes(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def truncate(data, rng):
    return data[:rng.randrange(len(data))] if data else data


def splice(data, rng):
    """Delete, duplicate or insert a chunk (shifts everything after it)."""
    if len(data) < 2:
        return data + data
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice([1, 2, 4, 8, 64, 1024]))
    choice = rng.randrange(3)
    if choice == 0:
        return data[:a] + data[b:]
    if choice == 1:
        return data[:b] + data[a:b] + data[b:]
    return data[:a] + bytes(rng.randrange(256) for _ in range(b - a)) + data[a:]


BYTE_MUTATIONS = [flip_bytes, truncate, splice]

# Pickles: parsed into (opcode, argument) pairs, changed, written back (FRAME opcodes dropped; they are optional).


def _encode_arg(op, arg):
    name = op.arg.name if op.arg is not None else None
    if name is None:
        return b''
    fixed = {'uint1': '<B', 'uint2': '<H', 'int4': '<i', 'uint4': '<I', 'uint8': '<Q', 'float8': '>d'}
    if name in fixed:
        return struct.pack(fixed[name], arg)
    if name in ('long1', 'long4'):
        body = pickle.encode_long(arg)
        return (struct.pack('<B', len(body)) if name == 'long1' else struct.pack('<i', len(body))) + body
    if name in ('bytes1', 'bytes4', 'bytes8', 'bytearray8', 'string1', 'string4', 'unicodestring1',
                'unicodestring4', 'unicodestring8'):
        body = arg.encode('utf-8', 'surrogatepass') if isinstance(arg, str) and name.startswith('unicode') else \
            arg.encode('latin1') if isinstance(arg, str) else bytes(arg)
        size = {'1': '<B', '4': '<I', '8': '<Q'}[name[-1]]
        if name == 'string4':
            size = '<i'
        return struct.pack(size, len(body)) + body
    if name == 'stringnl_noescape_pair':
        return '\n'.join(arg.split(' ', 1)).encode('utf-8') + b'\n'
    if name in ('decimalnl_short', 'decimalnl_long'):
        text = ('01' if arg else '00') if isinstance(arg, bool) else str(arg)
        return (text + ('L' if name == 'decimalnl_long' else '')).encode('ascii') + b'\n'
    if name == 'floatnl':
        return repr(arg).encode('ascii') + b'\n'
    if name in ('stringnl', 'stringnl_noescape', 'unicodestringnl'):
        return (repr(arg) if name == 'stringnl' else str(arg)).encode('raw_unicode_escape') + b'\n'
    raise ValueError(name)


def parse_pickle(data):
    return list(_parse_pickle(data))


@functools.lru_cache(maxsize=4)
def _parse_pickle(data):   # Cached: most mutants start from the valid file.
    return tuple((op, arg) for op, arg, _ in pickletools.genops(data) if op.name != 'FRAME')


def write_pickle(ops):
    return b''.join(op.code.encode('latin1') + _encode_arg(op, arg) for op, arg in ops)


OPS = {op.name: op for op in pickletools.opcodes}


def _push_op(value):
    """Opcodes that push `value` (for swapped types and substituted arguments)."""
    if value is None:
        return [(OPS['NONE'], None)]
    if isinstance(value, bool):
        return [(OPS['NEWTRUE' if value else 'NEWFALSE'], None)]
    if isinstance(value, int):
        return [(OPS['BININT'], value)] if -2 ** 31 <= value < 2 ** 31 else [(OPS['LONG1'], value)]
    if isinstance(value, float):
        return [(OPS['BINFLOAT'], value)]
    if isinstance(value, str):
        return [(OPS['BINUNICODE'], value)]
    if isinstance(value, list):
        return [(OPS['EMPTY_LIST'], None)] + ([(OPS['MARK'], None)] + sum((_push_op(v) for v in value), []) +
                                              [(OPS['APPENDS'], None)] if value else [])
    return [(OPS['EMPTY_DICT'], None)]


_PUSHERS = {'NONE', 'NEWTRUE', 'NEWFALSE', 'BININT', 'BININT1', 'BININT2', 'LONG1', 'BINFLOAT', 'BINUNICODE',
            'SHORT_BINUNICODE', 'BINBYTES', 'SHORT_BINBYTES', 'EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_TUPLE', 'EMPTY_SET',
            'BINGET', 'LONG_BINGET'}


_APPLIES = [   # Opcodes each pickle mutation applies to (None: any).
    None,
    {'BININT1', 'BININT2', 'BININT', 'LONG1', 'BINFLOAT', 'BINUNICODE', 'SHORT_BINUNICODE', 'NEWTRUE', 'NEWFALSE',
     'NONE'},
    {'BINBYTES', 'SHORT_BINBYTES', 'BINUNICODE', 'SHORT_BINUNICODE'},
    {'BINGET', 'LONG_BINGET', 'EMPTY_LIST'},
    _PUSHERS,
    {'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'},
    None,
]


def mutate_pickle(data, rng):
    """One structural change: opcode substitution, argument substitution, a huge length prefix, a duplicated memo
    reference, swapped types, a change inside a nested blob (torch's storages are pickles inside bytes arguments),
    or a flipped byte inside one opcode."""
    try:
        ops = parse_pickle(data)
    except Exception:  # pylint: disable=broad-except
        return flip_bytes(data, rng)
    choice = rng.randrange(len(_APPLIES))
    where = [i for i, (op, _) in enumerate(ops) if _APPLIES[choice] is None or op.name in _APPLIES[choice]]
    if not where:
        return flip_bytes(data, rng)
    i = rng.choice(where)
    op, arg = ops[i]
    memo = sum(1 for o, _ in ops[:i] if o.name in ('MEMOIZE', 'BINPUT', 'LONG_BINPUT'))
    if choice == 0:                                          # Opcode substitution (argument bytes reinterpreted).
        raw = write_pickle(ops[:i]) + rng.choice(pickletools.opcodes).code.encode('latin1')
        return raw + _encode_arg(op, arg) + write_pickle(ops[i + 1:])
    if choice == 1 and isinstance(arg, str):                 # Argument substitution.
        strings = [a for o, a in ops if isinstance(a, str) and len(a) < 100] + ['\x1b[2K\rOK', '', 'x' * 300]
        ops[i] = (OPS['BINUNICODE'], rng.choice(strings))
    elif choice == 1:
        ops[i:i + 1] = _push_op(rng.choice(EXTREME_VALUES))
    elif choice == 2:                                        # A huge length prefix.
        body = arg.encode('utf-8', 'surrogatepass') if isinstance(arg, str) else arg
        code = OPS['BINBYTES8'] if isinstance(arg, bytes) else OPS['BINUNICODE8']
        size = rng.choice([2 ** 40, 2 ** 32, len(body) + 1, 2 ** 63])
        return write_pickle(ops[:i]) + code.code.encode('latin1') + struct.pack('<Q', size) + body + \
            write_pickle(ops[i + 1:])
    elif choice == 3 and op.name == 'EMPTY_LIST':            # A list of many references to one stored object.
        ops[i + 1:i + 1] = [(OPS['MARK'], None)] + [(OPS['LONG_BINGET'], rng.randrange(max(memo, 1)))] * \
            rng.choice([2, 100, 10000]) + [(OPS['APPENDS'], None)]
    elif choice == 3:                                        # A memo reference to another stored object.
        ops[i] = (OPS['LONG_BINGET'], rng.randrange(max(memo, 1)))
    elif choice == 4:                                        # Swapped types.
        ops[i:i + 1] = _push_op(rng.choice(EXTREME_VALUES))
    elif choice == 5 and len(arg) >= 32:                     # Inside a nested blob.
        ops[i] = (OPS['BINBYTES'], rng.choice([mutate_pickle, flip_bytes, truncate, splice])(arg, rng))
    else:                                                    # A flipped byte inside one opcode.
        raw = bytearray(write_pickle(ops[i:i + 1]))
        raw[rng.randrange(min(len(raw), 64))] = rng.randrange(256)
        return write_pickle(ops[:i]) + bytes(raw) + write_pickle(ops[i + 1:])
    return write_pickle(ops)


def mutate_json_value(value, rng, depth=0, strict=False):
    """A copy of JSON data with one node replaced by an extreme value, a value of another type, or deep nesting
    (`strict`: no NaN or infinity, which strict JSON parsers refuse before anything else is checked)."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        if rng.random() < 0.1:
            return {k: v for k, v in value.items() if k != key}
        return dict(value, **{key: mutate_json_value(value[key], rng, depth + 1, strict)})
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return value[:i] + [mutate_json_value(value[i], rng, depth + 1, strict)] + value[i + 1:]
    if isinstance(value, str) and value[:1] in '{[' and rng.random() < 0.7:
        try:   # JSON inside a string (safetensors metadata).
            return json.dumps(mutate_json_value(json.loads(value), rng, depth + 1))
        except ValueError:
            pass
    choice = rng.random()
    if choice < 0.1:
        return _DEEP
    if choice < 0.2 and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * rng.choice([2, 10, 1000, -1])
    return rng.choice([v for v in EXTREME_VALUES if not strict or not (isinstance(v, float) and v != v * 0)])


_DEEP = '__deeply_nested__'   # Stands for 5000 nested arrays in the written text.


def mutate_json(data, rng, strict=False):
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return flip_bytes(data, rng)
    text = json.dumps(mutate_json_value(value, rng, strict=strict))
    deep = '[' * 5000 + ']' * 5000
    return text.replace(f'"{_DEEP}"', deep).replace(json.dumps(f'"{_DEEP}"')[1:-1], json.dumps(deep)[1:-1]) \
        .encode('utf-8')


def mutate_safetensors(data, rng):
    """Change the JSON header (shapes, offsets, dtypes, the metadata's class names and arguments), keeping its
    length prefix consistent unless the change is to the prefix itself."""
    if len(data) < 8:
        return flip_bytes(data, rng)
    n = struct.unpack('<Q', data[:8])[0]
    header, body = data[8:8 + n], data[8 + n:]
    if rng.random() < 0.1:
        return struct.pack('<Q', rng.choice([0, 1, max(n - 1, 0), n + 1, 2 ** 40, len(data)])) + data[8:]
    try:
        parsed = json.loads(header)
        objects = parsed['__metadata__']['objects']
    except (ValueError, KeyError, TypeError, RecursionError):
        objects = None
    if objects is not None and rng.random() < 0.5:           # This toolkit's metadata: classes and arguments.
        parsed['__metadata__']['objects'] = mutate_json(objects.encode('utf-8'), rng).decode('utf-8', 'replace')
        header = json.dumps(parsed).encode('utf-8')
    else:
        header = mutate_json(header, rng, strict=True)
    return struct.pack('<Q', len(header)) + header + body


def mutate_zip(data, rng):
    """Mutate one member with the mutations of its own format and write a consistent archive (stored, with valid
    checksums), so the change reaches the member's parser; sometimes also drop or duplicate a member."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:  # pylint: disable=broad-except
        return flip_bytes(data, rng)
    if not members:
        return data
    pickles = [j for j, (n, _) in enumerate(members) if n.endswith('.pkl')]
    i = rng.choice(pickles) if pickles and rng.random() < 0.5 else rng.randrange(len(members))
    name, content = members[i]
    choice = rng.random()
    if choice < 0.05:
        members.pop(i)
    elif choice < 0.1:
        members.insert(i, (name, content))
    else:
        mutate = mutate_pickle if name.endswith('.pkl') else mutate_json if name.endswith('.json') else \
            rng.choice([flip_bytes, flip_bytes, truncate, splice])
        members[i] = (name, mutate(content, rng))
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, 'w', compression=zipfile.ZIP_STORED) as archive:
        warnings.simplefilter('ignore')   # Duplicated member names are one of the mutations.
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name), content)
    return out.getvalue()


STRUCTURAL = {'pickle': mutate_pickle, 'zip': mutate_zip, 'safetensors': mutate_safetensors, 'json': mutate_json}
SELFTEST = [b'fine', b'refused', b'crash', b'memory', b'hang', b'other', b'two lines']   # Mutant i: SELFTEST[i % 7].


def mutant(kind, data, seed, index):
    """Mutant `index` of `data` (a function of seed, kind and index only): 1-3 mutations, structural ones twice
    as often as byte-level ones."""
    if kind.format == 'selftest':
        return SELFTEST[index % len(SELFTEST)]
    rng = random.Random(f'{seed}:{kind.name}:{index}')
    structural = STRUCTURAL.get(kind.format)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutate = structural if structural is not None and rng.random() < 2 / 3 else rng.choice(BYTE_MUTATIONS)
        data = mutate(data, rng)
    return data

# ----------------------------------------------------------------------------
# Workers.


def _vm_size():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
    return 0


def _valid(folder, kind):
    with open(os.path.join(folder, 'valid', kind.name, kind.file_name), 'rb') as f:
        return f.read()


def _worker(conn, folder, memory, seed):
    """Make and load the mutants sent as (kind, index) until None; answer (index, outcome, detail)."""
    import torch
    import dnnlib
    torch.set_num_threads(1)
    for kind in KINDS.values():   # Imports and first-use caches before the limit is set.
        if os.path.isdir(os.path.join(folder, 'valid', kind.name)):
            kind.load(os.path.join(folder, 'valid', kind.name, kind.file_name))
    valid = {name: _valid(folder, kind) for name, kind in KINDS.items() if os.path.isdir(os.path.join(folder, 'valid',
                                                                                                    name))}
    limit = _vm_size() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(('ready', None, None))
    scratch = os.path.join(folder, f'worker-{os.getpid()}')
    while True:
        message = conn.recv()
        if message is None:
            conn.send(('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None))
            return
        name, index = message
        kind = KINDS[name]
        try:
            data = mutant(kind, valid[name], seed, index)
        except Exception:  # pylint: disable=broad-except
            conn.send((index, 'harness error (making the mutant)', traceback.format_exc(limit=-4)))
            continue
        os.makedirs(scratch, exist_ok=True)
        path = os.path.join(scratch, kind.file_name)
        with open(path, 'wb') as f:
            f.write(data)
        try:
            kind.load(path)
            outcome, detail = 'ok', None
        except dnnlib.util.InputError as e:
            text = str(e)
            outcome, detail = ('input', text) if '\n' not in text and 0 < len(text) <= 2000 else ('bad-message', text)
        except MemoryError:
            outcome, detail = 'memory', traceback.format_exc(limit=-8)
        except Exception:  # pylint: disable=broad-except
            outcome, detail = 'exception', traceback.format_exc(limit=-8)
        conn.send((index, outcome, detail))


@dataclasses.dataclass
class Report:
    counts: dict            # kind -> {outcome: count}
    failures: list          # (kind, index, outcome, detail, path of the saved mutant)
    peak_rss: int           # Largest peak resident size of a worker, bytes.
    seconds: float

    def summary(self):
        lines = [f'{k}: ' + ', '.join(f'{o} {n}' for o, n in sorted(c.items())) for k, c in self.counts.items()]
        for kind, index, outcome, detail, path in self.failures[:10]:
            lines.append(f'FAIL {kind} #{index} {outcome} ({path}):\n{detail}')
        lines.append(f'peak RSS {self.peak_rss / 2 ** 20:.0f} MiB, {self.seconds:.0f} s')
        return '\n'.join(lines)


def run(kinds, count, folder, seed=0, workers=2, memory=1 << 30, timeout=30, progress=None):
    """Fuzz `kinds` (names in KINDS) with `count` mutants each; returns a Report. Mutants that fail are saved in
    `folder`/failures. `memory`: address space a worker may add after its start-up (RLIMIT_AS)."""
    ctx = multiprocessing.get_context('spawn')
    for name in kinds:
        os.makedirs(os.path.join(folder, 'valid', name), exist_ok=True)
        made = KINDS[name].make(os.path.join(folder, 'valid', name))
        expected = os.path.join(folder, 'valid', name, KINDS[name].file_name)
        if os.path.abspath(made) != os.path.abspath(expected):
            os.replace(made, expected)
    jobs = [(name, i) for name in kinds for i in range(count)]
    jobs.reverse()
    counts = {name: {} for name in kinds}
    failures, peak = [], 0
    start = time.time()

    def record(name, index, outcome, detail):
        counts[name][outcome] = counts[name].get(outcome, 0) + 1
        if outcome not in ('ok', 'input'):
            path = os.path.join(folder, 'failures', f'{name}-{index}.bin')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                data = mutant(KINDS[name], _valid(folder, KINDS[name]), seed, index)
            except Exception:  # pylint: disable=broad-except
                data, path = b'', None
            if path is not None:
                with open(path, 'wb') as f:
                    f.write(data)
            failures.append((name, index, outcome, detail, path))

    def launch():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker, args=(child, folder, memory, seed), daemon=True)
        process.start()
        child.close()
        return dict(process=process, conn=parent, job=None, since=None)

    def started(worker):
        assert worker['conn'].recv()[0] == 'ready'
        return worker

    def start_worker():
        return started(launch())

    pool = [started(w) for w in [launch() for _ in range(workers)]]
    done = 0
    while jobs or any(w['job'] for w in pool):
        for w in pool:
            if w['job'] is None and jobs:
                w['job'], w['since'] = jobs.pop(), time.time()
                w['conn'].send(w['job'])
        busy = [w for w in pool if w['job'] is not None]
        ready = multiprocessing.connection.wait([w['conn'] for w in busy] + [w['process'].sentinel for w in busy],
                                                timeout=1)
        for i, w in enumerate(pool):
            if w['job'] is None:
                continue
            name, index = w['job']
            answer = None
            if w['conn'] in ready:
                try:
                    answer = w['conn'].recv()
                except (EOFError, OSError):   # The worker died: handled with its exit code below.
                    pass
            if answer is not None:
                record(name, index, answer[1], answer[2])
            elif w['conn'] in ready or w['process'].sentinel in ready or time.time() - w['since'] > timeout:
                w['process'].join(1)
                if w['process'].is_alive():
                    w['process'].kill()
                    w['process'].join()
                    outcome = 'timeout'
                else:
                    outcome = f'crash (exit code {w["process"].exitcode})'
                record(name, index, outcome, None)
                w['conn'].close()
                pool[i] = start_worker()
            else:
                continue
            w['job'] = None
            done += 1
            if progress is not None:
                progress(done)
    for w in pool:
        w['conn'].send(None)
        peak = max(peak, w['conn'].recv()[1])
        w['process'].join()
    return Report(counts, failures, peak, time.time() - start)
