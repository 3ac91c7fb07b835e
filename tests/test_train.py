"""train.py and the training loop on a tiny dataset: files, learning, exact resume, one-line errors."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import train
from torch_utils import persistence
from training.demo_data import write_dataset
from training.loss import EDMLoss

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=8', '--workers=0', '--augment=0', '--dropout=0',
        '--lr=2e-3', '--lr-rampup=0', '--ema=0.0001', '--seed=1']


@persistence.persistent_class
class UniformNoiseLoss(EDMLoss):
    """EDM's loss with uniform noise of variance sigma^2; records the steps it is told and the step of each call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.told, self.calls, self.noise_draws = [], [], 0

    def set_step(self, step):
        super().set_step(step)
        self.told.append(step)

    def noise(self, y, sigma, rng):
        self.noise_draws += 1
        return (rng.rand(y.shape, device=y.device) * 2 - 1) * (3 ** 0.5) * sigma

    def __call__(self, net, images, labels=None, augment_pipe=None, rng=None):
        self.calls.append(self.step)
        return super().__call__(net, images, labels, augment_pipe=augment_pipe, rng=rng)

    def state_dict(self):
        return dict(told=list(self.told), calls=list(self.calls), noise_draws=self.noise_draws)

    def load_state_dict(self, state):
        self.told, self.calls, self.noise_draws = list(state['told']), list(state['calls']), state['noise_draws']


def tiny_images(n=32, classes=4, seed=0):
    """8x8 grayscale images: class k is a bright bar on rows 2k, 2k+1, plus mild noise."""
    rnd = np.random.RandomState(seed)
    labels = np.arange(n) % classes
    images = rnd.randint(0, 40, size=[n, 8, 8])
    for img, k in zip(images, labels):
        img[2 * k:2 * k + 2, 1:7] = 220
    return images.astype(np.uint8), labels


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp('data')
    images, labels = tiny_images()
    return dict(cond=write_dataset(images, str(folder / 'tiny.zip'), labels),
                uncond=write_dataset(images, str(folder / 'plain.zip')))


def run_train(*args):
    result = CliRunner().invoke(train.main, [str(a) for a in args], catch_exceptions=False)
    return result


def steps(n, batch=8):
    return f'--duration={n * batch / 1e6}'


def load_state(run_dir, kimg=0):
    return torch.load(os.path.join(run_dir, f'training-state-{kimg:06d}.pt'), map_location='cpu', weights_only=True)


def build_net(run_dir, state_key=None):
    """The run's network, freshly initialised from its seed, or loaded from its final training state."""
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        opts = json.load(f)
    torch.manual_seed(opts['seed'])
    net = dnnlib.construct_class_by_name(**opts['network_kwargs'], img_resolution=8, img_channels=1, label_dim=4)
    if state_key is not None:
        net.load_state_dict(load_state(run_dir)[state_key])
    return net.eval()


def eval_loss(net, data_path):
    from training.dataset import ImageFolderDataset
    ds = ImageFolderDataset(data_path, use_labels=True)
    images = torch.tensor(np.stack([ds[i][0] for i in range(len(ds))])).float() / 127.5 - 1
    labels = torch.tensor(np.stack([ds[i][1] for i in range(len(ds))]))
    torch.manual_seed(123)
    with torch.no_grad():
        return float(sum(EDMLoss()(net, images, labels).mean() for _ in range(8)) / 8)


def only_run_dir(outdir):
    (name,) = os.listdir(outdir)
    return os.path.join(outdir, name)

# ----------------------------------------------------------------------------


def test_short_run_learns_and_writes_the_official_files(data, tmp_path):
    res = run_train(f'--outdir={tmp_path}', f'--data={data["cond"]}', '--cond=1', *TINY, '--lr=5e-3', steps(40),
                    '--tick=0.08', '--snap=2', '--dump=2')
    assert res.exit_code == 0, res.output
    run_dir = only_run_dir(tmp_path)
    assert os.path.basename(run_dir) == '00000-tiny-cond-ddpmpp-edm-gpus1-batch8-fp32'
    assert sorted(os.listdir(run_dir)) == ['log.txt', 'network-snapshot-000000.pkl', 'stats.jsonl',
                                           'training-state-000000.pt', 'training_options.json']
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        ticks = [json.loads(line) for line in f]
    assert [t['Progress/tick']['mean'] for t in ticks] == [0, 1, 2, 3, 4]   # Tick 0 after step 1, then every 10.
    assert ticks[-1]['Progress/kimg']['mean'] == pytest.approx(0.32)
    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    assert 'tick 4' in log and 'img/s' in log

    snapshot = persistence.load_network(os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    assert sorted(snapshot) == ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']
    assert type(snapshot['ema']).__name__ == 'EDMPrecond' and type(snapshot['loss_fn']).__name__ == 'EDMLoss'
    assert snapshot['augment_pipe'] is None and type(snapshot['dataset_kwargs']) is dict
    assert snapshot['dataset_kwargs']['resolution'] == 8 and snapshot['dataset_kwargs']['max_size'] == 32
    state = load_state(run_dir)
    assert state['cur_nimg'] == 320
    ema = build_net(run_dir, 'ema')
    for name, tensor in snapshot['ema'].state_dict().items():
        torch.testing.assert_close(tensor, ema.state_dict()[name], rtol=0, atol=0)

    # The loss at fixed noise levels and noise falls well below that of the initial network.
    before, after = eval_loss(build_net(run_dir), data['cond']), eval_loss(ema, data['cond'])
    assert after < 0.7 * before, (before, after)    # Measured: 1.66 -> 0.86.


def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    # Augmentation, dropout, lr and EMA ramp-ups all on, so every random stream and schedule must continue.
    common = [f'--data={data["cond"]}', '--cond=1', *TINY, '--augment=0.5', '--dropout=0.2', '--lr-rampup=0.00004',
              '--ema=0.001', '--tick=1', '--snap=1', '--dump=1']
    assert run_train(f'--outdir={tmp_path / "full"}', *common, steps(6)).exit_code == 0
    assert run_train(f'--outdir={tmp_path / "part"}', *common, steps(3)).exit_code == 0
    state_file = os.path.join(only_run_dir(tmp_path / 'part'), 'training-state-000000.pt')
    assert torch.load(state_file, weights_only=True)['cur_nimg'] == 24
    res = run_train(f'--outdir={tmp_path / "part"}', *common, steps(6), f'--resume={state_file}')
    assert res.exit_code == 0, res.output
    resumed_dir = os.path.join(tmp_path / 'part', sorted(os.listdir(tmp_path / 'part'))[-1])
    full, resumed = load_state(only_run_dir(tmp_path / 'full')), load_state(resumed_dir)
    assert full['cur_nimg'] == resumed['cur_nimg'] == 48
    for key in ('net', 'ema'):
        for name, tensor in full[key].items():
            torch.testing.assert_close(resumed[key][name], tensor, rtol=1e-6, atol=1e-6, msg=f'{key}.{name}')
    for a, b in zip(full['optimizer']['state'].values(), resumed['optimizer']['state'].values()):
        torch.testing.assert_close(a['exp_avg_sq'], b['exp_avg_sq'], rtol=1e-6, atol=1e-12)


@pytest.fixture
def uniform_precond(monkeypatch):
    """--precond=uniform: EDM's preconditioner with UniformNoiseLoss (a new formulation is a registry entry)."""
    from training import config
    monkeypatch.setitem(config.PRECONDS, 'uniform', dict(network='training.networks.EDMPrecond',
                                                         loss=f'{__name__}.UniformNoiseLoss', network_kwargs={},
                                                         loss_kwargs=dict(P_std=1.2)))
    return '--precond=uniform'


def test_loss_hooks_count_optimizer_steps_and_survive_resume(data, tmp_path, uniform_precond):
    common = [f'--data={data["cond"]}', '--cond=1', *TINY, uniform_precond, '--tick=1', '--snap=1', '--dump=1']
    # Two accumulation rounds per step: the loss is called twice per step but told each step once.
    assert run_train(f'--outdir={tmp_path / "full"}', *common, '--batch-gpu=4', steps(5)).exit_code == 0
    full = load_state(only_run_dir(tmp_path / 'full'))
    assert full['cur_step'] == 5 and full['loss']['told'] == [0, 1, 2, 3, 4]
    assert full['loss']['calls'] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and full['loss']['noise_draws'] == 10
    # Interrupted after 2 steps, resumed with one round per step: the counts continue.
    assert run_train(f'--outdir={tmp_path / "part"}', *common, '--batch-gpu=4', steps(2)).exit_code == 0
    state_file = os.path.join(only_run_dir(tmp_path / 'part'), 'training-state-000000.pt')
    res = run_train(f'--outdir={tmp_path / "part"}', *common, steps(5), f'--resume={state_file}')
    assert res.exit_code == 0, res.output
    resumed_dir = os.path.join(tmp_path / 'part', sorted(os.listdir(tmp_path / 'part'))[-1])
    resumed = load_state(resumed_dir)
    assert resumed['cur_step'] == 5 and resumed['loss']['told'] == [0, 1, 2, 3, 4]
    assert resumed['loss']['calls'] == [0, 0, 1, 1, 2, 3, 4] and resumed['loss']['noise_draws'] == 7
    # The snapshot's loss is the test's own class, found by the safe loader through the registry.
    loss_fn = persistence.load_network(os.path.join(resumed_dir, 'network-snapshot-000000.pkl'))['loss_fn']
    assert type(loss_fn) is UniformNoiseLoss and loss_fn.init_kwargs == dict(P_std=1.2)
    assert loss_fn.told == [0, 1, 2, 3, 4]


def test_overridden_noise_drives_training(data, tmp_path, uniform_precond):
    common = [f'--data={data["cond"]}', '--cond=1', *TINY, '--per-sample-rng=1', steps(2)]
    assert run_train(f'--outdir={tmp_path / "gauss"}', *common, '--precond=edm').exit_code == 0
    assert run_train(f'--outdir={tmp_path / "uniform"}', *common, uniform_precond).exit_code == 0
    gauss, uniform = load_state(only_run_dir(tmp_path / 'gauss')), load_state(only_run_dir(tmp_path / 'uniform'))
    assert uniform['loss']['noise_draws'] == 2 and gauss['loss'] == {}
    # Same data, sigma and initial weights; only the perturbation differs, and so does the update.
    diff = max(float((gauss['net'][k] - uniform['net'][k]).abs().max()) for k in gauss['net'])
    assert diff > 1e-4, diff     # Measured: 7e-3 (Adam's first steps move each weight by about lr).


def test_resumed_fine_tune_keeps_its_ema_schedule(data, tmp_path):
    # A fine-tune has no EMA ramp-up; the resumed run (which cannot repeat --transfer) must continue without one.
    res = run_train(f'--outdir={tmp_path / "src"}', f'--data={data["cond"]}', '--cond=1', *TINY, steps(1))
    assert res.exit_code == 0, res.output
    source = os.path.join(only_run_dir(tmp_path / 'src'), 'network-snapshot-000000.pkl')
    common = [f'--data={data["cond"]}', '--cond=1', *TINY, '--ema=0.001', '--tick=1', '--snap=1', '--dump=1']
    assert run_train(f'--outdir={tmp_path / "full"}', *common, steps(4), f'--transfer={source}').exit_code == 0
    assert run_train(f'--outdir={tmp_path / "part"}', *common, steps(2), f'--transfer={source}').exit_code == 0
    state_file = os.path.join(only_run_dir(tmp_path / 'part'), 'training-state-000000.pt')
    res = run_train(f'--outdir={tmp_path / "part"}', *common, steps(4), f'--resume={state_file}')
    assert res.exit_code == 0, res.output
    resumed_dir = os.path.join(tmp_path / 'part', sorted(os.listdir(tmp_path / 'part'))[-1])
    full, resumed = load_state(only_run_dir(tmp_path / 'full')), load_state(resumed_dir)
    for name, tensor in full['ema'].items():
        torch.testing.assert_close(resumed['ema'][name], tensor, rtol=1e-6, atol=1e-6, msg=name)


def test_pretrain_alias_and_named_run_dir(data, tmp_path):
    assert run_train(f'--outdir={tmp_path / "a"}', f'--data={data["cond"]}', '--cond=1', *TINY, steps(2)).exit_code == 0
    source = os.path.join(only_run_dir(tmp_path / 'a'), 'network-snapshot-000000.pkl')
    # With the default 10 Mimg ramp-up the first step has lr 0 (EDM), so the new run's EMA is the source's weights.
    res = run_train(f'--outdir={tmp_path / "b"}', '--name=finetune', f'--data={data["cond"]}', '--cond=1', *TINY,
                    '--lr-rampup=10', steps(1), f'--pretrain={source}')
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / 'b') == ['finetune']
    with open(tmp_path / 'b' / 'finetune' / 'training_options.json') as f:
        assert json.load(f)['transfer'] == source
    src = persistence.load_network(source)['ema'].state_dict()
    new = persistence.load_network(str(tmp_path / 'b' / 'finetune' / 'network-snapshot-000000.pkl'))['ema'].state_dict()
    for name in src:
        torch.testing.assert_close(new[name], src[name], rtol=0, atol=0)
    res = run_train(f'--outdir={tmp_path / "b"}', '--name=finetune', f'--data={data["cond"]}', '--cond=1', *TINY,
                    steps(1))
    assert res.exit_code != 0 and 'already exists' in res.output


def test_dry_run_creates_nothing(data, tmp_path):
    res = run_train(f'--outdir={tmp_path / "out"}', f'--data={data["cond"]}', '--cond=1', *TINY, '--dry-run')
    assert res.exit_code == 0 and 'Dry run' in res.output
    assert not os.path.exists(tmp_path / 'out')


ERRORS = [
    ([], '--data is required'),
    (['--cond=1', '--data={uncond}'], '--cond=1 needs class labels'),
    (['--data={cond}', '--cres=1,2,2,2,2'], 'resolution 8 does not fit the network'),
    (['--data={cond}', '--batch=12', '--batch-gpu=8'], 'not divisible by --batch-gpu=8'),
    (['--data={cond}', '--resume={tmp}/training-state-000000.pt'], 'no such file'),
    (['--data={cond}', '--resume={tmp}/state.pt'], 'expected a file named training-state-NNNNNN.pt'),
    (['--data={cond}', '--resume={tmp}/training-state-000000.pt', '--transfer=x.pkl'], 'cannot be combined'),
    (['--data={tmp}/missing.zip'], 'no such file or directory'),
    (['--data={cond}', '--precond=sigma'], 'never published; supported: vp, ve, edm'),
    (['--data={cond}', '--precond=edm', '--fdm_multiplier=2'], '--fdm_multiplier applies to the FDM preconditioners'),
    (['--data={cond}', '--precond=vp', '--pfgmpp=1'], '--pfgmpp=1 supports --precond=ve|edm'),
    (['--data={cond}', '--precond=ve', '--stf=1'], '--stf (stable target field) is implemented for --precond=edm'),
    (['--data={cond}', '--dm_length=10'], 'meaning was never published'),
    (['--data={cond}', '--transfer={tmp}/none.pkl'], 'cannot load the network'),
    (['--data={cond}', '--cres=0,1'], "'0,1': 0 is too small: every entry must be at least 1"),
    (['--data={cond}', '--cres=1,x'], '"x" is not a non-negative integer (expected a comma-separated list like 1,2,2)'),
    (['--data={cond}', '--cres=0-3'], 'not a non-negative integer (expected a comma-separated list'),
    (['--data={hostile_labels}', '--cond=1'], 'is 1000000000000, expected a class index in 0..65535'),
]


@pytest.mark.parametrize('args,message', ERRORS)
def test_one_line_errors(data, tmp_path, args, message):
    if any('{hostile_labels}' in a for a in args):
        source = write_dataset(tiny_images(4)[0], str(tmp_path / 'good.zip'), labels=[0, 1, 2, 3])
        data = dict(data, hostile_labels=str(tmp_path / 'hostile.zip'))
        with zipfile.ZipFile(source) as good, zipfile.ZipFile(data['hostile_labels'], 'w') as z:
            for name in good.namelist():
                z.writestr(name, good.read(name) if name != 'dataset.json' else json.dumps(
                    {'labels': [[f'00000/img{i:08d}.png', 10 ** 12] for i in range(4)]}))
    args = [a.format(tmp=tmp_path, **data) for a in args]
    res = run_train(f'--outdir={tmp_path / "out"}', *TINY, *args)
    assert res.exit_code != 0
    error_lines = [line for line in res.output.splitlines() if line.startswith('Error')]
    assert len(error_lines) == 1 and message in error_lines[0], res.output
    assert 'Traceback' not in res.output
    assert not os.path.exists(tmp_path / 'out')


def test_incompatible_resume_and_transfer_are_refused(data, tmp_path):
    assert run_train(f'--outdir={tmp_path / "a"}', f'--data={data["cond"]}', '--cond=1', *TINY, steps(1)).exit_code == 0
    run_dir = only_run_dir(tmp_path / 'a')
    state = os.path.join(run_dir, 'training-state-000000.pt')
    res = run_train(f'--outdir={tmp_path / "b"}', f'--data={data["cond"]}', '--cond=1', *TINY, '--cbase=16',
                    f'--resume={state}')
    assert res.exit_code != 0 and 'incompatible run: network option model_channels was 8, now 16' in res.output
    res = run_train(f'--outdir={tmp_path / "b"}', f'--data={data["cond"]}', '--cond=1', *TINY, '--precond=vp',
                    f'--resume={state}')
    assert res.exit_code != 0 and 'check --precond' in res.output
    res = run_train(f'--outdir={tmp_path / "b"}', f'--data={data["uncond"]}', *TINY,
                    f'--transfer={os.path.join(run_dir, "network-snapshot-000000.pkl")}')
    assert res.exit_code != 0 and 'the network has label_dim=4, but the dataset needs 0' in res.output
    res = run_train(f'--outdir={tmp_path / "b"}', f'--data={data["cond"]}', '--cond=1', *TINY, '--cbase=16',
                    f'--pretrain={os.path.join(run_dir, "network-snapshot-000000.pkl")}')
    assert res.exit_code != 0 and 'has shape [8, 4] in the checkpoint but [16, 4]' in res.output, res.output
    with open(tmp_path / 'training-state-000001.pt', 'wb') as f:
        f.write(b'not a state')
    res = run_train(f'--outdir={tmp_path / "b"}', f'--data={data["cond"]}', '--cond=1', *TINY,
                    f'--resume={tmp_path / "training-state-000001.pt"}')
    assert res.exit_code != 0 and 'not a training state' in res.output
    assert not os.path.exists(tmp_path / 'b')


@pytest.mark.slow
def test_published_research_command_fails_with_one_line(data, tmp_path):
    # The 2nd-order SDE sampler project's training command (commands.md), scaled down to the tiny dataset.
    cmd = [sys.executable, 'train.py', f'--outdir={tmp_path}', f'--data={data["cond"]}', '--cond=1', '--arch=adm',
           '--precond=sigma', '--duration=25', '--batch=1', '--lr=1e-4', '--ema=50', '--dropout=0.10', '--augment=0',
           '--fp16=1', '--ls=1', '--tick=200', '--dm_length=10', '--pretrain=edm-imagenet-64x64-cond-adm.pkl']
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and 'Traceback' not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and 'supported' in errors[0] and ('sigma' in errors[0] or 'dm_length' in errors[0])
    assert os.listdir(tmp_path) == []


def test_training_stats_intervals():
    from torch_utils import training_stats
    collector = training_stats.Collector(regex='Test/.*', keep_previous=True)
    training_stats.report('Test/a', torch.tensor([1.0, 2.0, 3.0]))
    training_stats.report0('Test/b', 5)
    training_stats.report('Other/c', 1)
    collector.update()
    assert collector.names() == ['Test/a', 'Test/b']
    assert (collector.num('Test/a'), collector.mean('Test/a')) == (3, 2.0)
    assert collector.std('Test/a') == pytest.approx(np.std([1, 2, 3]))
    assert collector['Test/b'] == 5
    training_stats.report('Test/a', [10.0])
    collector.update()
    # Only the new interval counts; a name without new values keeps its previous moments.
    assert (collector.num('Test/a'), collector.mean('Test/a')) == (1, 10.0)
    assert collector.mean('Test/b') == 5
    assert set(collector.as_dict()) == {'Test/a', 'Test/b'}


PUBLISHED = [   # commands.md, with the dataset replaced by the tiny one; they must parse and validate (dry run).
    '--cond=1 --arch=ddpmpp',
    '--cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 --dropout=0.05 --augment=0.15',
    '--cond=1 --arch=adm --duration=2500 --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10 --augment=0 --fp16=1 '
    '--ls=100 --tick=200',
    '--cond=1 --arch=ncsnpp --precond=ve',
]


@pytest.mark.parametrize('options', PUBLISHED)
def test_published_edm_commands_validate(data, tmp_path, options):
    res = run_train(f'--outdir={tmp_path}', f'--data={data["cond"]}', *options.split(), '--dry-run')
    assert res.exit_code == 0, res.output
    assert 'Dry run' in res.output and os.listdir(tmp_path) == []


def test_outdir_that_cannot_hold_the_run(data, tmp_path):
    (tmp_path / 'file').write_text('x')
    for outdir, message in ((tmp_path / 'file', 'is a file, not a folder'),
                            (tmp_path / 'file' / 'sub', 'is a file, not a folder'),
                            ('/proc/edmkit-test', '/proc does not accept new entries')):
        res = run_train(f'--outdir={outdir}', f'--data={data["cond"]}', '--cond=1', *TINY, steps(1))
        errors = [line for line in res.output.splitlines() if line.startswith('Error')]
        assert res.exit_code == 2 and len(errors) == 1 and message in errors[0] and '--outdir' in errors[0], res.output


def test_boolean_options_take_values(data, tmp_path):
    for flags in (['--dry-run=True'], ['-n'], ['--dry-run=1', '--nosubdir=True']):
        res = run_train(f'--outdir={tmp_path / "out"}', f'--data={data["cond"]}', '--cond=1', *TINY, *flags)
        assert res.exit_code == 0 and 'Dry run' in res.output, res.output
        run_dir = res.output.split('Output directory:', 1)[1].split('\n', 1)[0].strip()
        assert (run_dir == str(tmp_path / 'out')) == ('--nosubdir=True' in flags)
    assert not os.path.exists(tmp_path / 'out')
    res = run_train(f'--outdir={tmp_path / "out"}', f'--data={data["cond"]}', '--cond=1', *TINY, '--dry-run=maybe')
    assert res.exit_code == 2 and "'maybe' is not a boolean" in res.output


def test_log_holds_the_options_printed_before_it_was_opened(data, tmp_path):
    res = run_train(f'--outdir={tmp_path}', f'--data={data["cond"]}', '--cond=1', *TINY, steps(1), '--name=run')
    assert res.exit_code == 0, res.output
    with open(tmp_path / 'run' / 'log.txt', encoding='utf-8') as f:
        log = f.read()
    start = res.output.index('Training options:')
    assert log.startswith('\nTraining options:') and res.output[start - 1:].startswith(log[:2000])
    assert 'Output directory:' in log and 'Creating output directory...' in log and 'Exiting...' in log


def test_usage_errors_shown_by_rank_zero_only(data, tmp_path):
    # A parsing error, and an invalid combination of options.
    for args in (['--cres=0,1'], ['--batch=12', '--batch-gpu=8']):
        for rank, count in (('0', 1), ('1', 0)):
            res = CliRunner().invoke(train.main, [f'--outdir={tmp_path}', f'--data={data["cond"]}', *TINY, *args,
                                                  '--dry-run'],
                                     env=dict(RANK=rank, WORLD_SIZE='1'))  # One process that calls itself rank 1.
            errors = [line for line in res.output.splitlines() if line.startswith('Error')]
            assert res.exit_code != 0 and len(errors) == count, res.output


def test_config_refuses_zero_channel_multipliers():
    from training import config
    for cres in ([0, 1], []):
        with pytest.raises(config.ConfigError, match='every channel multiplier must be at least 1'):
            config.build(data='d.zip', cres=cres)
    with pytest.raises(config.ConfigError, match='--cbase=0 must be at least 1'):
        config.build(data='d.zip', cbase=0)
