"""Checkpoint pickles: official layout, safe loading that never runs embedded code, recompileNN."""
import importlib
import io
import os
import pickle
import sys
import textwrap

import pytest
import torch

from torch_utils import persistence, safe_pickle
from training import networks

pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated'),  # torch's jvp decompositions
              pytest.mark.usefixtures('one_thread')]


def small_net(**kwargs):
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=4, model_type='SongUNet',
                              model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                              dropout=0.0, **kwargs)
    # Non-trivial weights everywhere (the zero-ish initial output layers would hide mistakes).
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval().requires_grad_(False)


def outputs(net):
    g = torch.Generator().manual_seed(1)
    x = torch.randn([2, 3, 8, 8], generator=g)
    labels = torch.eye(4)[[0, 3]]
    with torch.no_grad():
        return net(x, torch.tensor([0.5, 3.0]), labels)


def test_round_trip_rebuilds_project_classes():
    net = small_net()
    data = persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=net, extra=[1, 'a']))))
    loaded = data['ema']
    assert type(loaded) is networks.EDMPrecond and not loaded.training
    assert data['extra'] == [1, 'a']
    assert torch.equal(outputs(net), outputs(loaded))
    assert loaded.init_kwargs == net.init_kwargs


def test_written_pickle_uses_only_official_globals():
    official = {('torch_utils.persistence', '_reconstruct_persistent_obj'), ('collections', 'OrderedDict'),
                ('torch.nn.modules.container', 'ModuleDict'), ('torch._utils', '_rebuild_parameter'),
                ('torch._utils', '_rebuild_tensor_v2'), ('torch.storage', '_load_from_bytes'),
                ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'), ('numpy', 'dtype'),
                ('builtins', 'set')}
    found = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add((module, name))
            return super().find_class(module, name)
    Recorder(io.BytesIO(pickle.dumps(dict(ema=small_net())))).load()
    assert found and found <= official, found - official


@pytest.fixture
def evil_pickle(monkeypatch):
    """An official-layout pickle whose embedded module source prints and raises when executed."""
    evil_src = "import sys\nsys.stdout.write('EMBEDDED CODE RAN')\nraise RuntimeError('embedded code executed')\n"
    for cls in vars(networks).values():
        if isinstance(cls, type) and persistence.is_persistent(cls):
            monkeypatch.setattr(cls, '_orig_module_src', evil_src)
    net = small_net()
    data = pickle.dumps(dict(ema=net))
    monkeypatch.undo()
    assert b'EMBEDDED CODE RAN' in data
    return net, data


def test_safe_load_never_executes_embedded_code(evil_pickle, tmp_path, capsys):
    net, data = evil_pickle
    path = tmp_path / 'evil.pkl'
    path.write_bytes(data)
    loaded = persistence.load_network(str(path))['ema']
    assert 'EMBEDDED CODE RAN' not in capsys.readouterr().out
    assert torch.equal(outputs(net), outputs(loaded))
    # Proof that the source is live: legacy unpickling would run it.
    with pytest.raises(persistence.CheckpointError, match=r'legacy unpickling failed \(RuntimeError: embedded code'):
        persistence.load_network(str(path), trust_pickle=True)


def test_unknown_global_is_refused(tmp_path):
    path = tmp_path / 'bad.pkl'
    path.write_bytes(pickle.dumps(dict(ema=small_net(), payload=os.system)))
    with pytest.raises(persistence.UnsafePickleError, match=r'"(posix|nt)\.system"') as e:
        persistence.load_network(str(path))
    assert '\n' not in str(e.value) and '--trust-pickle' in str(e.value)


def test_unknown_persistent_class_is_refused():
    class Stub:
        def __reduce__(self):
            return persistence._reconstruct_persistent_obj, (dict(type='class', version=6, module_src='',
                                                                   class_name='MysteryNet', state={}),)
    with pytest.raises(persistence.CheckpointError, match='"MysteryNet", which no loaded module declares') as e:
        persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=Stub()))))
    assert '\n' not in str(e.value) and 'EDMPrecond' in str(e.value) and '--trust-pickle' in str(e.value)


NEW_FAMILY = textwrap.dedent('''
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class FamilyBlock(torch.nn.Module):
        def __init__(self, channels, gain=1.0):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(channels, channels))
            self.gain = gain

        def forward(self, x):
            return torch.tanh(torch.einsum('ij,njhw->nihw', self.weight, x)) * self.gain

    @persistence.persistent_class
    class FamilyNet(torch.nn.Module):
        def __init__(self, channels, depth, gains=(1.0,)):
            super().__init__()
            self.blocks = torch.nn.ModuleList([FamilyBlock(channels, gain=gains[i % len(gains)])
                                               for i in range(depth)])
            self.register_buffer('offset', torch.randn(channels, 1, 1))

        def forward(self, x):
            for block in self.blocks:
                x = x + block(x)
            return x + self.offset
''')


@pytest.fixture
def scratch_registry(monkeypatch):
    """Classes declared during the test leave the registry (and their modules sys.modules) afterwards."""
    monkeypatch.setattr(persistence, '_registry', dict(persistence._registry))
    yield
    for name in ('mynewfamily', 'clashing'):
        sys.modules.pop(name, None)


def test_class_from_a_module_the_loader_never_heard_of_loads(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / 'mynewfamily.py').write_text(NEW_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module('mynewfamily')
    torch.manual_seed(0)
    net = module.FamilyNet(3, depth=2, gains=(0.5, 2.0)).eval()
    path = tmp_path / 'snapshot.pkl'
    persistence.save_pickle(dict(ema=net, dataset_kwargs=dict(resolution=4)), str(path))
    # The loader neither imports the module by name nor runs the embedded source: take both away.
    monkeypatch.delitem(sys.modules, 'mynewfamily')
    (tmp_path / 'mynewfamily.py').unlink()
    with open(path, 'rb') as f:
        data = persistence.load_pickle(f)   # load_network() would also require a denoiser.
    loaded = data['ema']
    assert type(loaded) is module.FamilyNet and type(loaded.blocks[1]) is module.FamilyBlock
    assert [b.gain for b in loaded.blocks] == [0.5, 2.0] and not loaded.training
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert data['dataset_kwargs'] == dict(resolution=4)


def test_a_second_class_with_a_taken_name_is_refused(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / 'clashing.py').write_text('from torch_utils import persistence\n\n'
                                          '@persistence.persistent_class\nclass EDMLoss:\n    pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match='"EDMLoss" is already taken by training.loss.EDMLoss; .* '
                                         'clashing.EDMLoss needs another name'):
        importlib.import_module('clashing')
    # Reloading a module re-declares its classes under the same module and qualified name: they replace the old.
    (tmp_path / 'mynewfamily.py').write_text(NEW_FAMILY)
    module = importlib.import_module('mynewfamily')
    first = module.FamilyNet
    importlib.reload(module)
    assert module.FamilyNet is not first and persistence._registry['FamilyNet'] is module.FamilyNet


def test_trusted_load_of_other_source_leaves_the_registry_alone(monkeypatch, tmp_path):
    net = small_net()
    for cls in vars(networks).values():
        if isinstance(cls, type) and persistence.is_persistent(cls):
            monkeypatch.setattr(cls, '_orig_module_src', cls._orig_module_src + '\n# An edited copy.\n')
    path = tmp_path / 'edited.pkl'
    path.write_bytes(pickle.dumps(dict(ema=net)))
    monkeypatch.undo()
    trusted = persistence.load_network(str(path), trust_pickle=True)['ema']   # Executes the edited source.
    assert type(trusted).__name__ == 'EDMPrecond' and type(trusted) is not networks.EDMPrecond
    safe = persistence.load_network(str(path))['ema']
    assert type(safe) is networks.EDMPrecond
    assert torch.equal(outputs(net), outputs(trusted)) and torch.equal(outputs(net), outputs(safe))


def test_undecorated_subclass_of_a_persistent_class_refuses_to_pickle():
    class Unregistered(networks.EDMPrecond):
        pass
    with pytest.raises(pickle.PicklingError, match='Unregistered derives from persistent class EDMPrecond'):
        pickle.dumps(Unregistered(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=8,
                                  channel_mult=[1], num_blocks=1, attn_resolutions=[]))


def test_load_network_rejects_non_checkpoints(tmp_path):
    path = tmp_path / 'list.pkl'
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(persistence.CheckpointError, match='not a network checkpoint: it holds a list'):
        persistence.load_network(str(path))


def test_recompile_cli(evil_pickle, tmp_path):
    net, data = evil_pickle
    src = tmp_path / 'official.pkl'
    src.write_bytes(data)
    dest = tmp_path / 'ckpts' / 'rebuilt.pkl'
    res = run_recompile([f'--pkl_dir=file://{src}', f'--dest={dest}'])
    assert res.exit_code == 0, res.output
    assert 'Check state round trip: ok' in res.output and 'EMBEDDED CODE RAN' not in res.output
    rebuilt = dest.read_bytes()
    assert b'EMBEDDED CODE RAN' not in rebuilt and b'class SongUNet' in rebuilt
    assert torch.equal(outputs(net), outputs(persistence.load_network(str(dest), trust_pickle=True)['ema']))


def test_pickle_cannot_tamper_with_loader_globals(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2; BUILD (None, {'__defaults__': ({'neg': True},)}); then {'ema': 0}.
    # With shared objects this would make every later tensor load in the process return negated values.
    attack = (b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__}X\x03\x00\x00\x00neg'
              b'\x88s\x85s\x86b0}X\x03\x00\x00\x00emaK\x00s.')
    with pytest.raises(persistence.UnsafePickleError, match='refusing to set the state of a function'):
        persistence.load_pickle(io.BytesIO(attack))
    net = small_net()
    loaded = persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=net))))['ema']
    assert torch.equal(outputs(net), outputs(loaded))
    buf = io.BytesIO()
    torch.save({'w': torch.tensor([1.0, 2.0])}, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)['w'].tolist() == [1.0, 2.0]
    (tmp_path / 'attack.pkl').write_bytes(attack)
    with pytest.raises(persistence.UnsafePickleError, match='attack.pkl: refusing'):
        persistence.load_network(str(tmp_path / 'attack.pkl'))


def test_protocol_2_pickles_load():
    net = small_net()
    loaded = persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=net, tags={'a'}), protocol=2)))
    assert loaded['tags'] == {'a'}
    assert torch.equal(outputs(net), outputs(loaded['ema']))


def snapshot():
    from training.augment import AugmentPipe
    from training.loss import EDMLoss
    loss_fn = EDMLoss(P_mean=-1.0)
    loss_fn.set_step(7)
    return dict(ema=small_net(), loss_fn=loss_fn, augment_pipe=AugmentPipe(p=0.25, xflip=1),
                dataset_kwargs=dict(resolution=8, max_size=32, path='data.zip'))


def test_safetensors_round_trip_gives_identical_outputs(tmp_path, monkeypatch):
    data = snapshot()
    persistence.save_pickle(data, str(tmp_path / 'net.pkl'))
    persistence.save_safetensors(persistence.load_network(str(tmp_path / 'net.pkl')), str(tmp_path / 'net.safetensors'))
    # Nothing is unpickled when reading it.
    monkeypatch.setattr(safe_pickle, 'Unpickler', None)
    monkeypatch.setattr(pickle, 'load', None)
    loaded = persistence.load_network(str(tmp_path / 'net.safetensors'))
    assert type(loaded['ema']) is networks.EDMPrecond and not loaded['ema'].training
    assert torch.equal(outputs(data['ema']), outputs(loaded['ema']))
    assert loaded['ema'].init_kwargs == data['ema'].init_kwargs
    assert type(loaded['loss_fn']).__name__ == 'EDMLoss' and loaded['loss_fn'].P_mean == -1.0
    assert loaded['loss_fn'].step == 7 and loaded['augment_pipe'].p == 0.25
    assert loaded['dataset_kwargs'] == data['dataset_kwargs']
    with open(tmp_path / 'net.safetensors', 'rb') as f:
        assert b'_reconstruct_persistent_obj' not in f.read()


def test_recompile_to_safetensors(evil_pickle, tmp_path):
    from click.testing import CliRunner
    import recompileNN
    net, data = evil_pickle
    src = tmp_path / 'official.pkl'
    src.write_bytes(data)
    dest = tmp_path / 'out' / 'official.safetensors'
    res = CliRunner().invoke(recompileNN.main, [f'--pkl_dir={src}', '--format=safetensors', f'--dest={dest}'])
    assert res.exit_code == 0, res.output
    assert 'Check state round trip: ok' in res.output and f'Saved {dest}' in res.output
    assert torch.equal(outputs(net), outputs(persistence.load_network(str(dest))['ema']))
    # The default name follows the format.
    with CliRunner().isolated_filesystem(temp_dir=tmp_path):
        res = CliRunner().invoke(recompileNN.main, [f'--network={src}', '--format=safetensors'])
        assert res.exit_code == 0 and os.path.isfile(os.path.join('ckpts', 'official.safetensors')), res.output


def test_train_writes_safetensors_snapshots(tmp_path):
    from click.testing import CliRunner
    import numpy as np
    import train
    from training.demo_data import write_dataset
    images = np.random.RandomState(0).randint(0, 256, size=[8, 8, 8]).astype(np.uint8)
    zip_path = write_dataset(images, str(tmp_path / 'tiny.zip'), np.arange(8) % 4)
    res = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "run"}', f'--data={zip_path}', '--cond=1',
                                          '--cbase=8', '--cres=1', '--batch=4', '--workers=0', '--augment=0',
                                          '--duration=0.000004', '--seed=1', '--snapshot-format=safetensors'])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / 'run').iterdir()
    assert (run_dir / 'network-snapshot-000000.safetensors').is_file()
    assert not (run_dir / 'network-snapshot-000000.pkl').exists()
    snap = persistence.load_network(str(run_dir / 'network-snapshot-000000.safetensors'))
    state = torch.load(str(run_dir / 'training-state-000000.pt'), weights_only=True)
    for name, tensor in snap['ema'].state_dict().items():
        assert torch.equal(tensor, state['ema'][name])
# ----------------------------------------------------------------------------
# recompileNN.py: rebuild + checks, on official-layout pickles made here (their embedded source is networks.py).


def run_recompile(args):
    from click.testing import CliRunner
    import recompileNN
    return CliRunner().invoke(recompileNN.main, args, catch_exceptions=True)


def family_net(cls, **kwargs):
    torch.manual_seed(0)
    net = getattr(networks, cls)(img_resolution=8, img_channels=2, label_dim=3, dropout=0.0, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval().requires_grad_(False)


SONG = dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
FAMILIES = {
    'edm-ddpmpp': ('EDMPrecond', SONG),
    've-ncsnpp': ('VEPrecond', dict(SONG, embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
                                    resample_filter=[1, 3, 3, 1])),
    'vp-ddpmpp': ('VPPrecond', SONG),
    'iddpm-adm': ('iDDPMPrecond', dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2],
                                       num_blocks=1, attn_resolutions=[4])),
}


@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('trust', [False, True])
def test_recompile_round_trips_official_layout(family, trust, tmp_path):
    cls, kwargs = FAMILIES[family]
    net = family_net(cls, **kwargs)
    src, dest = tmp_path / 'official.pkl', tmp_path / 'ckpts' / 'rebuilt.pkl'
    src.write_bytes(pickle.dumps(dict(ema=net, loss_fn=None)))
    res = run_recompile([f'--pkl_dir={src}', f'--dest={dest}'] + (['--trust-pickle'] if trust else []))
    assert res.exit_code == 0, res.output
    checks = [line.split(':')[0] for line in res.output.splitlines() if line.startswith('Check ')]
    assert checks == ['Check finite output', 'Check deterministic', 'Check state round trip',
                      'Check forward-mode AD'] + (['Check legacy match'] if trust else [])
    assert f'Saved {dest}' in res.output and cls in res.output
    loaded = persistence.load_network(str(dest))['ema']
    assert type(loaded) is getattr(networks, cls) and loaded.init_kwargs == net.init_kwargs
    x, sigma = torch.randn(2, 2, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, torch.eye(3)[:2]), net(x, sigma, torch.eye(3)[:2]))


def test_recompile_refuses_a_broken_network(tmp_path):
    from conftest import error_line
    net = family_net('EDMPrecond', **SONG)
    with torch.no_grad():
        net.model.map_layer0.bias[0] = float('nan')
    src, dest = tmp_path / 'nan.pkl', tmp_path / 'out.pkl'
    src.write_bytes(pickle.dumps(dict(ema=net)))
    line = error_line(run_recompile([f'--pkl_dir={src}', f'--dest={dest}']))
    assert 'finite output' in line and 'not written' in line
    assert not dest.exists() and os.listdir(tmp_path) == ['nan.pkl']  # nothing left behind


def test_recompile_detects_legacy_mismatch(tmp_path, monkeypatch):
    # Embedded source that computes something else: only the legacy (trusted) path runs it, and the check sees it.
    from conftest import error_line
    with open(networks.__file__, encoding='utf-8') as f:
        src_text = f.read()
    changed = src_text.replace('c_noise = sigma.log() / 4', 'c_noise = sigma.log() / 5')
    assert changed != src_text
    for cls in vars(networks).values():
        if isinstance(cls, type) and persistence.is_persistent(cls):
            monkeypatch.setattr(cls, '_orig_module_src', changed)
    data = pickle.dumps(dict(ema=family_net('EDMPrecond', **SONG)))
    monkeypatch.undo()
    src, dest = tmp_path / 'other.pkl', tmp_path / 'out.pkl'
    src.write_bytes(data)
    assert run_recompile([f'--pkl_dir={src}', f'--dest={dest}']).exit_code == 0  # safe path: our classes
    line = error_line(run_recompile([f'--pkl_dir={src}', f'--dest={tmp_path / "out2.pkl"}', '--trust-pickle']))
    assert 'legacy match' in line and not (tmp_path / 'out2.pkl').exists()
