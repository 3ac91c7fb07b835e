"""Throughput and peak memory of sampling, training and FID feature extraction, per precision and fast path.

Writes docs/throughput.md with four tables:

1. `generate.py` as whole processes on the full-size CIFAR-10 DDPM++ network (VPPrecond + SongUNet, 55.7M
   parameters, random weights), `--seeds=0-7 --batch=8 --steps=4` (NFE 7), one row per precision, runs
   alternating between them: wall time, sampling time (from the moment the script starts sampling to "Done."),
   images/s, seconds per network evaluation of the batch, peak resident memory.
2. Training images/s per optimizer step (the real training loop, CIFAR-10 DDPM++ configuration of train.py) per
   precision, and with torch's loop Adam against the fused Adam the loop chooses.
3. `fid.py ref` feature extraction as a whole process: images/s and peak memory (stand-in detector, see
   benchmarks/fid_memory.py: the Inception weights need a download).
4. The quality cost of each reduced precision: the same seeds sampled in fp32 and in reduced precision, for the
   bundled demo model and for the full-size random-weight network; mean and max absolute difference of the 8-bit
   pixels and the fraction of 8-bit values that change.

Linux only (peak memory is read from /proc/self/status).

    python benchmarks/throughput.py                       # CPU; CUDA too where available
    python benchmarks/throughput.py --runs=5 --compile    # more runs; add --compile rows (compiling is slow)
    python benchmarks/throughput.py --threads=1           # one thread everywhere (a machine shared with others)
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import click
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dnnlib  # noqa: E402 pylint: disable=wrong-import-position
from samplers import demo, generation  # noqa: E402 pylint: disable=wrong-import-position
from samplers.edm import edm_sampler  # noqa: E402 pylint: disable=wrong-import-position
from torch_utils import misc, persistence  # noqa: E402 pylint: disable=wrong-import-position
from torch_utils import precision as fast  # noqa: E402 pylint: disable=wrong-import-position
from training import config, networks, training_loop  # noqa: E402 pylint: disable=wrong-import-position
from training.demo_data import write_dataset  # noqa: E402 pylint: disable=wrong-import-position

WORK = os.path.join(ROOT, 'benchmarks', '_work', 'throughput')
CIFAR_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, dropout=0.13,
                    **config.ARCHS['ddpmpp'])

# ----------------------------------------------------------------------------
# The full-size network.


def randomize(net, seed=0):
    """Random weights in every layer (torch_utils.misc.randomize_parameters), so that the output matters."""
    return misc.randomize_parameters(net, torch.Generator().manual_seed(seed))


def cifar_checkpoint():
    """benchmarks/_work/throughput/cifar10-ddpmpp-random.pkl (made once)."""
    path = os.path.join(WORK, 'cifar10-ddpmpp-random.pkl')
    if not os.path.isfile(path):
        os.makedirs(WORK, exist_ok=True)
        with torch.device('meta'):
            net = networks.VPPrecond(**CIFAR_DDPMPP)
        net = randomize(net.to_empty(device='cpu')).eval().requires_grad_(False)
        persistence.save_pickle(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), path)
    return path

# ----------------------------------------------------------------------------
# Whole processes.


# Runs a script and prints its peak resident memory at exit: the kernel's high-water mark of the process's own
# memory (VmHWM, Linux). Not ru_maxrss, which a spawned process starts from the RSS of the process that started it.
LAUNCHER = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    with open('/proc/self/status') as f:
        print('PEAK_RSS_KB', [line.split()[1] for line in f if line.startswith('VmHWM')][0], flush=True)
"""


def _high_water(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            return int([line.split()[1] for line in f if line.startswith('VmHWM')][0]) * 1024
    except (OSError, IndexError):
        return None


def run_process(args, marks=()):
    """Run `python args...` unbuffered; returns (wall s, {mark: (seconds since start, peak RSS bytes so far)},
    peak RSS bytes of the whole run). A mark is a text the process prints (polled every 20 ms)."""
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, '-c', LAUNCHER] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    os.set_blocking(proc.stdout.fileno(), False)
    seen, buffer = {}, b''
    while True:
        done = proc.poll() is not None
        buffer += proc.stdout.read() or b''
        for mark in marks:
            if mark not in seen and mark.encode() in buffer:
                seen[mark] = (time.time() - start, _high_water(proc.pid))
        if done:
            break
        time.sleep(0.02)
    wall = time.time() - start
    text = buffer.decode(errors='replace')
    if proc.returncode != 0 or 'PEAK_RSS_KB' not in text:
        raise click.ClickException(f'{" ".join(args)} failed: {text[-2000:]}')
    peak = int(text.split('PEAK_RSS_KB')[-1].split()[0]) * 1024
    for mark in marks:
        seen.setdefault(mark, (wall, peak))
    return wall, seen, peak


def bench_generate(device, variants, runs, outdir):
    """Whole `generate.py` processes, the variants alternating (A, B, A, B, ...)."""
    network = cifar_checkpoint()
    results = {name: [] for name, _ in variants}
    for i in range(runs):
        for name, extra in variants:
            args = ['generate.py', f'--network={network}', f'--outdir={os.path.join(outdir, name)}', '--seeds=0-7',
                    '--batch=8', '--steps=4', f'--device={device}'] + extra
            wall, marks, peak = run_process(args, marks=('Generating', 'Done.'))
            loaded = marks['Generating'][1] or peak  # The peak up to the start of sampling: imports and loading.
            results[name].append((wall, marks['Done.'][0] - marks['Generating'][0], loaded, peak))
            print(f'generate {name} run {i}: wall {wall:.1f} s, sampling {results[name][-1][1]:.1f} s, '
                  f'peak {loaded / 2 ** 20:.0f} MiB until sampling, {peak / 2 ** 20:.0f} MiB in all', flush=True)
    return results


def _fid_memory():
    # benchmarks/ is not a package (and its samplers.py would shadow the package of that name): load by path.
    import importlib.util
    spec = importlib.util.spec_from_file_location('fid_memory', os.path.join(ROOT, 'benchmarks', 'fid_memory.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_fid(device, outdir, num=2000):
    fid_memory = _fid_memory()
    StandInDetector, make_zip = fid_memory.StandInDetector, fid_memory.make_zip
    data = os.path.join(WORK, f'random-{num}-32x32.zip')
    os.makedirs(WORK, exist_ok=True)
    make_zip(data, num, 32)
    detector = os.path.join(WORK, 'detector-2048.pt')
    torch.jit.save(torch.jit.script(StandInDetector()), detector)
    args = ['fid.py', 'ref', f'--data={data}', f'--dest={os.path.join(outdir, "ref.npz")}', f'--detector={detector}',
            f'--device={device}', '--workers=1', '--batch=64', '--trust-detector']
    wall, marks, peak = run_process(args, marks=('Calculating',))
    return dict(num=num, wall=wall, extract=wall - marks['Calculating'][0], peak=peak)

# ----------------------------------------------------------------------------
# In-process measurements.


def bench_train(device, precision, batch, steps, workdir, adam=None):
    """Images/s of each training step after the first (CIFAR-10 DDPM++ configuration of train.py)."""
    rnd = np.random.RandomState(0)
    data = os.path.join(workdir, 'c.zip')
    if not os.path.isfile(data):
        write_dataset(rnd.randint(0, 256, size=[64, 32, 32, 3]).astype(np.uint8), data, labels=np.arange(64) % 10)
    c = config.build(data=data, cond=True, arch='ddpmpp', batch=batch, workers=0, tick=1e-9, seed=0,
                     precision=precision)
    config.check_dataset(c)
    if adam is not None:
        c.optimizer_kwargs.update(adam)
    run_dir = tempfile.mkdtemp(dir=workdir)
    c.update(snapshot_ticks=None, state_dump_ticks=None, run_dir=run_dir, device=device, max_steps=steps)
    training_loop.training_loop(**c)
    with open(os.path.join(run_dir, 'stats.jsonl'), encoding='utf-8') as f:
        ticks = [json.loads(line) for line in f]
    return np.array([t['Timing/img_per_sec']['mean'] for t in ticks[1:]])


def bench_adam(device, repeats=5):
    """Seconds per Adam step over the 55.7M parameters of the network: torch's loop, foreach and fused."""
    with torch.device('meta'):
        net = networks.VPPrecond(**CIFAR_DDPMPP)
    params = list(net.to_empty(device=device).parameters())
    for p in params:
        p.data.normal_()
        p.grad = torch.randn_like(p)
    times = {}
    for name, kwargs in (('loop (torch default on the CPU)', dict(foreach=False)), ('foreach', dict(foreach=True)),
                         ('fused', dict(fused=True))):
        try:
            opt = torch.optim.Adam(params, lr=1e-4, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            continue
        opt.step()  # State allocation.
        spent = []
        for _ in range(repeats):
            if device == 'cuda':
                torch.cuda.synchronize()
            begin = time.time()
            opt.step()
            if device == 'cuda':
                torch.cuda.synchronize()
            spent.append(time.time() - begin)
        times[name] = _median(spent)
        del opt
    return times


def sample_uint8(net, seeds, num_steps, device, precision):
    latents, labels, rnd = generation.draw_inputs(net, seeds, device)
    run = fast.wrap(net, precision, device, channels_last=False)
    with torch.no_grad():
        images = edm_sampler(run, latents, labels, randn_like=rnd.randn_like, num_steps=num_steps)
    return generation.to_uint8(images).astype(np.int16)


def quality(device, precisions):
    """Per model and reduced precision: mean/max |8-bit difference| against fp32 and the fraction changed."""
    models = [('demo (digits 16x16, 18 steps, seeds 0-31)', demo.BUNDLED, list(range(32)), 18),
              ('CIFAR-10 DDPM++ random weights (4 steps, seeds 0-7)', cifar_checkpoint(), list(range(8)), 4)]
    rows = []
    for name, path, seeds, steps in models:
        net = persistence.load_network(path)['ema'].eval().requires_grad_(False).to(device)
        exact = sample_uint8(net, seeds, steps, device, 'fp32')
        for precision in precisions:
            diff = np.abs(sample_uint8(net, seeds, steps, device, precision) - exact)
            rows.append((name, precision, diff.mean(), diff.max(), (diff > 0).mean(), (diff > 1).mean()))
            print(f'quality {name} {precision}: mean {diff.mean():.3f}, max {diff.max()}, changed '
                  f'{(diff > 0).mean():.4f}', flush=True)
        del net
    return rows

# ----------------------------------------------------------------------------


def _median(values):
    return float(np.median(values))


@click.command()
@click.option('--device', 'devices', help='Devices  [default: cpu, and cuda if available]', multiple=True)
@click.option('--runs', help='Runs of each generate.py variant (alternating)', type=click.IntRange(min=1), default=3,
              show_default=True)
@click.option('--train-steps', help='Training steps per variant (the first is warm-up)', type=click.IntRange(min=2),
              default=6, show_default=True)
@click.option('--train-batch', help='Training batch size', type=click.IntRange(min=1), default=4, show_default=True)
@click.option('--compile', 'with_compile', help='Add generate.py --compile rows', is_flag=True)
@click.option('--threads', help='CPU threads of every measurement  [default: torch\'s]', type=click.IntRange(min=1))
@click.option('--out', help='Markdown output', default=os.path.join(ROOT, 'docs', 'throughput.md'), show_default=True)
def main(devices, runs, train_steps, train_batch, with_compile, threads, out):
    """Measure throughput and memory per precision and fast path; write docs/throughput.md."""
    if threads:
        torch.set_num_threads(threads)
    devices = list(devices) or ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    load_start = os.getloadavg()[0]
    lines = ['# Throughput and memory', '',
             'Measured by `python benchmarks/throughput.py`. The network is the full-size CIFAR-10 DDPM++ '
             '(VPPrecond + SongUNet, 55.7M parameters) with random weights in every layer. `--precision=bf16`/`fp16` '
             'autocast the network call only (torch_utils/precision.py); fp32 is exact. Every measurement used '
             f'{_threads()} (`OMP_NUM_THREADS` for the processes).', '']
    quality_rows = []
    for device in devices:
        precisions = [p for p in ('bf16', 'fp16') if _runs_on(p, device)]
        variants = [('fp32', []), *[(p, [f'--precision={p}']) for p in precisions]]
        if with_compile:
            variants += [(f'{name}+compile', extra + ['--compile=1']) for name, extra in list(variants)]
        with tempfile.TemporaryDirectory() as tmp:
            gen = bench_generate(device, variants, runs, tmp)
            train_rows = [(f'{p}, fused Adam', bench_train(device, p, train_batch, train_steps, tmp))
                          for p in ['fp32'] + precisions]
            train_rows.append(('fp32, loop Adam (torch default)',
                               bench_train(device, 'fp32', train_batch, train_steps, tmp, adam=dict(foreach=False))))
            fid = bench_fid(device, tmp)
        adam = bench_adam(device)
        quality_rows += [(device, *row) for row in quality(device, precisions)]

        base = _median([r[0] for r in gen['fp32']])
        lines += [f'## {device}', '',
                  f'### generate.py: `--seeds=0-7 --batch=8 --steps=4 --device={device}` (NFE 7), whole processes',
                  '', f'{runs} runs per row, alternating between the rows; medians.', '',
                  '| variant | wall (s) | wall / fp32 | sampling (s) | images/s (sampling) | s per NFE (batch 8) '
                  '| peak RSS until sampling (MiB) | peak RSS of the run (MiB) |',
                  '|---|---:|---:|---:|---:|---:|---:|---:|']
        for name, rows in gen.items():
            wall, sampling, loaded, peak = (_median([r[i] for r in rows]) for i in range(4))
            lines.append(f'| {name} | {wall:.1f} | {wall / base:.2f} | {sampling:.1f} | {8 / sampling:.2f} | '
                         f'{sampling / 7:.2f} | {loaded / 2 ** 20:.0f} | {peak / 2 ** 20:.0f} |')
        lines += ['', 'Every run, wall time (s) / peak RSS until sampling / of the run (MiB): ' + '; '.join(
            f'{name}: ' + ', '.join(f'{r[0]:.1f} / {r[2] / 2 ** 20:.0f} / {r[3] / 2 ** 20:.0f}' for r in rows)
            for name, rows in gen.items()) + '. Peak RSS is the kernel\'s high-water mark of the process (VmHWM); '
            'until sampling it covers the imports and loading the checkpoint (torch_utils/persistence.py). For '
            'comparison, EDM\'s own `generate.py` peaks at 674 MiB with the same checkpoint and settings on this '
            'machine; the high-water mark of identical runs varies by tens of MiB (glibc heap reuse, '
            'docs/design.md).' + (' The `+compile` rows include compiling the network (inductor\'s on-disk cache '
                                  'is warm after the first run) in their wall and sampling times.'
                                  if with_compile else ''), '']
        lines += [f'### Training: CIFAR-10 DDPM++ configuration, batch {train_batch}, images/s per optimizer step', '',
                  '| variant | steps timed | images/s (median) | s/step |', '|---|---:|---:|---:|']
        for name, rates in train_rows:
            lines.append(f'| {name} | {len(rates)} | {_median(rates):.2f} | {train_batch / _median(rates):.2f} |')
        lines += ['', 'The Adam step alone (55.7M parameters, median of 5 steps):', '',
                  '| implementation | s/step |', '|---|---:|']
        lines += [f'| {name} | {t:.3f} |' for name, t in adam.items()]
        lines += ['', f'### fid.py ref: feature extraction, {fid["num"]} images of 32x32', '',
                  '| images | wall (s) | extraction (s) | images/s | peak RSS (MiB) |', '|---:|---:|---:|---:|---:|',
                  f'| {fid["num"]} | {fid["wall"]:.1f} | {fid["extract"]:.1f} | {fid["num"] / fid["extract"]:.0f} | '
                  f'{fid["peak"] / 2 ** 20:.0f} |', '',
                  'The detector is the stand-in of benchmarks/fid_memory.py (2048 features, no download): the rate '
                  'shows the data path, not Inception-v3.', '']

    lines += ['## Quality cost of reduced precision', '',
              'The same seeds sampled with EDM Algorithm 2 in fp32 and in reduced precision; differences of the '
              '8-bit pixel values (0-255).', '',
              '| device | model | precision | mean abs diff | max abs diff | 8-bit values changed | changed by more '
              'than 1 |', '|---|---|---|---:|---:|---:|---:|']
    for device, name, precision, mean, mx, changed, changed1 in quality_rows:
        lines.append(f'| {device} | {name} | {precision} | {mean:.3f} | {mx} | {100 * changed:.2f}% | '
                     f'{100 * changed1:.3f}% |')
    load_end = os.getloadavg()[0]
    lines += ['', f'Machine: {platform.machine()}, {os.cpu_count()} CPU cores '
              f'({"native bf16" if fast.cpu_has_native_bf16() else "no native bf16"}), torch {torch.__version__} '
              f'with {_threads()}, Python {platform.python_version()}'
              + (f', {torch.cuda.get_device_name()}' if 'cuda' in devices else '') + '. '
              f'1-minute load average {load_start:.1f} at the start and {load_end:.1f} at the end'
              + (f': the machine was shared with other jobs (more runnable processes than its {os.cpu_count()} '
                 'cores), so absolute times are slower than on an idle machine and ratios are noisy.'
                 if max(load_start, load_end) > os.cpu_count() else '.'), '']
    with dnnlib.util.atomic_path(out) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    print('\n'.join(lines))


def _threads():
    n = torch.get_num_threads()
    return f'{n} CPU thread{"s" if n > 1 else ""}'


def _runs_on(precision, device):
    try:
        fast.check(precision, device)  # Runs, perhaps slowly (then measured all the same).
        return True
    except fast.PrecisionError:
        return False


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
