"""Checkpoint pickles: official layout, safe loading that never runs embedded code, recompileNN."""
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

from torch_utils import persistence
from training import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    with pytest.raises(RuntimeError, match='embedded code executed'):
        persistence.load_network(str(path), trust_pickle=True)


def test_unknown_global_is_refused(tmp_path):
    path = tmp_path / 'bad.pkl'
    path.write_bytes(pickle.dumps(dict(ema=small_net(), payload=os.system)))
    with pytest.raises(pickle.UnpicklingError, match=r'"(posix|nt)\.system"') as e:
        persistence.load_network(str(path))
    assert '\n' not in str(e.value) and '--trust-pickle' in str(e.value)


def test_unknown_persistent_class_is_refused():
    class Stub:
        def __reduce__(self):
            return persistence._reconstruct_persistent_obj, (dict(type='class', version=6, module_src='',
                                                                   class_name='MysteryNet', state={}),)
    with pytest.raises(pickle.UnpicklingError, match='MysteryNet'):
        persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=Stub()))))


def test_load_network_rejects_non_checkpoints(tmp_path):
    path = tmp_path / 'list.pkl'
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(pickle.UnpicklingError, match='not a network checkpoint'):
        persistence.load_network(str(path))


@pytest.mark.slow
def test_recompile_cli(evil_pickle, tmp_path):
    net, data = evil_pickle
    src = tmp_path / 'official.pkl'
    src.write_bytes(data)
    dest = tmp_path / 'ckpts' / 'rebuilt.pkl'
    res = subprocess.run([sys.executable, 'recompileNN.py', f'--pkl_dir=file://{src}', f'--dest={dest}'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'difference' in res.stdout
    rebuilt = dest.read_bytes()
    assert b'EMBEDDED CODE RAN' not in rebuilt and b'class SongUNet' in rebuilt
    assert torch.equal(outputs(net), outputs(persistence.load_network(str(dest), trust_pickle=True)['ema']))


def test_pickle_cannot_tamper_with_loader_globals(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2; BUILD (None, {'__defaults__': ({'neg': True},)}); then {'ema': 0}.
    # With shared objects this would make every later tensor load in the process return negated values.
    attack = (b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__}X\x03\x00\x00\x00neg'
              b'\x88s\x85s\x86b0}X\x03\x00\x00\x00emaK\x00s.')
    assert persistence.load_pickle(io.BytesIO(attack)) == {'ema': 0}
    net = small_net()
    loaded = persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=net))))['ema']
    assert torch.equal(outputs(net), outputs(loaded))
    buf = io.BytesIO()
    torch.save({'w': torch.tensor([1.0, 2.0])}, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)['w'].tolist() == [1.0, 2.0]
    (tmp_path / 'attack.pkl').write_bytes(attack)
    with pytest.raises(pickle.UnpicklingError, match='not a network checkpoint'):
        persistence.load_network(str(tmp_path / 'attack.pkl'))


def test_protocol_2_pickles_load():
    net = small_net()
    loaded = persistence.load_pickle(io.BytesIO(pickle.dumps(dict(ema=net, tags={'a'}), protocol=2)))
    assert loaded['tags'] == {'a'}
    assert torch.equal(outputs(net), outputs(loaded['ema']))
