"""From train.py's options to the keyword arguments of `training_loop` (EDM's train.py logic, NVlabs/edm).

Everything here validates and raises `ConfigError` with one line that says what is wrong and what to use instead;
train.py turns it into a click error. Formulations are looked up in `PRECONDS` (name -> preconditioner class, loss
class and their fixed arguments), so new ones (FDM, PFGM++, CLD) are registry entries plus their own options.
"""

import os
import re

import dnnlib
from dnnlib.cli import one_line
from training.cld import CLD

# ----------------------------------------------------------------------------
# Registries.

# Architecture presets (EDM train.py): network keyword arguments; --cbase/--cres override the widths.
ARCHS = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm': dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}

# Formulations (EDM Table 1; FDM, Wu et al. 2023): --precond name -> preconditioner, loss, fixed keyword arguments
# of each, and the research options the formulation takes (`options`: 'fdm' = --fdm_multiplier, 'pfgmpp' =
# --pfgmpp/--aug_dim, 'stf' = --stf/--rbatch; --warmup_ite works with every loss).
PRECONDS = {
    'vp': dict(network='training.networks.VPPrecond', loss='training.loss.VPLoss', network_kwargs={}, loss_kwargs={},
               options=()),
    've': dict(network='training.networks.VEPrecond', loss='training.loss.VELoss', network_kwargs={}, loss_kwargs={},
               options=('pfgmpp',)),
    'edm': dict(network='training.networks.EDMPrecond', loss='training.loss.EDMLoss', network_kwargs={},
                loss_kwargs={}, options=('pfgmpp', 'stf')),
    'fdm_edm': dict(network='training.networks.FDM_EDMPrecond', loss='training.loss.EDMLoss', network_kwargs={},
                    loss_kwargs={}, options=('fdm',)),
    'fdm_vp': dict(network='training.networks.FDM_VPPrecond', loss='training.loss.VPLoss', network_kwargs={},
                   loss_kwargs={}, options=('fdm',)),
    'fdm_ve': dict(network='training.networks.FDM_VEPrecond', loss='training.loss.VELoss', network_kwargs={},
                   loss_kwargs={}, options=('fdm',)),
    # CLD in gDDIM's noise parameterisation (docs/cld_gddim.md): the U-Net gets 2C channels. The process's
    # parameters (gDDIM's CIFAR-10 setting) are written out, so that snapshots and training options carry them.
    'cld': dict(network='training.cld.CLDPrecond', loss='training.cld.CLDLoss', network_kwargs=CLD().params(),
                loss_kwargs=CLD().params(), options=()),
}
FDM_MULTIPLIER = 2.0    # FDM train.py's default --fdm_multiplier.
PFGMPP_AUG_DIM = 128    # PFGM++ train.py's default --aug_dim.
STF_RBATCH = 4096       # PFGM++ train.py's default --rbatch.

# Augmentation used with --augment=P (EDM train.py): 9 augment labels.
AUGMENT_KWARGS = dict(class_name='training.augment.AugmentPipe', xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                      translate_frac=1)
AUGMENT_DIM = 9


class ConfigError(ValueError):
    """An invalid combination of options; the message is one line meant for the user."""

# ----------------------------------------------------------------------------


def _supporting(option):
    return '|'.join(name for name, entry in PRECONDS.items() if option in entry.get('options', ()))


def check_precond(name):
    """Validate a --precond value; returns it or raises ConfigError naming the supported choices."""
    supported = ', '.join(PRECONDS)
    if name in PRECONDS:
        return name
    if name == 'sigma':
        raise ConfigError('--precond=sigma is a research option whose meaning was never published; '
                          f'supported: {supported}')
    raise ConfigError(f'--precond={name} is unknown; supported: {supported}')


def build(*, data, cond=False, arch='ddpmpp', precond='edm', duration=200, batch=512, batch_gpu=None, cbase=None,
          cres=None, lr=10e-4, lr_rampup=10, ema=0.5, dropout=0.13, augment=0.12, xflip=False, fp16=False, ls=1,
          bench=True, cache=True, workers=1, tick=50, snap=50, dump=500, seed=0, transfer=None, resume=None,
          per_sample_rng=False, warmup_ite=None, fdm_multiplier=None, pfgmpp=False, aug_dim=None, stf=False,
          rbatch=None, precision='fp32', compile_net=False, tf32=False, world_size=1):
    """The training_loop keyword arguments for these options (EDM train.py); no file is touched."""
    check_precond(precond)
    if precision not in ('fp32', 'bf16', 'fp16'):
        raise ConfigError(f'--precision={precision} is unknown; supported: fp32, bf16, fp16')
    if fp16 and precision != 'fp32':
        raise ConfigError(f'--fp16=1 (EDM\'s fp16 U-Net) and --precision={precision} (autocast) both set the '
                          'precision; use one of them')
    options = PRECONDS[precond].get('options', ())
    if fdm_multiplier is not None and 'fdm' not in options:
        raise ConfigError(f'--fdm_multiplier applies to the FDM preconditioners (--precond={_supporting("fdm")}), '
                          f'not to --precond={precond}')
    if pfgmpp and 'pfgmpp' not in options:
        raise ConfigError(f'--pfgmpp=1 supports --precond={_supporting("pfgmpp")} (the PFGM++ code never wired '
                          f'--precond={precond}); use --pfgmpp=0 with it')
    if stf and 'stf' not in options:
        raise ConfigError(f'--stf (stable target field) is implemented for --precond={_supporting("stf")} only')
    if warmup_ite is not None and warmup_ite < 0:
        raise ConfigError(f'--warmup_ite={warmup_ite} must be positive (0 = no warm-up)')
    if arch not in ARCHS:
        raise ConfigError(f'--arch={arch} is unknown; supported: {", ".join(ARCHS)}')
    if transfer is not None and resume is not None:
        raise ConfigError('--transfer/--pretrain and --resume cannot be combined (resume continues its own run)')
    if cres is not None and (len(cres) == 0 or any(int(m) < 1 for m in cres)):
        raise ConfigError(f'--cres={",".join(str(m) for m in cres)}: every channel multiplier must be at least 1')
    if cbase is not None and cbase < 1:
        raise ConfigError(f'--cbase={cbase} must be at least 1')
    if batch < 1 or (batch_gpu is not None and batch_gpu < 1):
        raise ConfigError('--batch and --batch-gpu must be positive')
    if batch % world_size:
        raise ConfigError(f'--batch={batch} is not divisible by the number of processes ({world_size})')
    per_process = batch // world_size
    batch_gpu = per_process if batch_gpu is None else min(batch_gpu, per_process)
    if per_process % batch_gpu:
        raise ConfigError(f'--batch={batch} is not divisible by --batch-gpu={batch_gpu} x {world_size} process(es); '
                          f'choose --batch-gpu dividing {per_process}')
    if duration <= 0:
        raise ConfigError('--duration must be positive')
    if tick <= 0 or snap < 1 or dump < 1:
        raise ConfigError('--tick must be positive and --snap, --dump at least 1')
    if not 0 <= augment <= 1:
        raise ConfigError(f'--augment={augment} must be a probability in [0, 1]')
    if ls <= 0:
        raise ConfigError(f'--ls={ls} must be positive')

    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=cond,
                                       xflip=xflip, cache=cache)
    c.data_loader_kwargs = dnnlib.EasyDict(num_workers=workers, prefetch_factor=2)
    c.network_kwargs = dnnlib.EasyDict(class_name=PRECONDS[precond]['network'], **PRECONDS[precond]['network_kwargs'])
    c.network_kwargs.update(ARCHS[arch])
    if cbase is not None:
        c.network_kwargs.model_channels = cbase
    if cres is not None:
        c.network_kwargs.channel_mult = list(cres)
    c.network_kwargs.update(dropout=dropout, use_fp16=fp16)
    c.loss_kwargs = dnnlib.EasyDict(class_name=PRECONDS[precond]['loss'], **PRECONDS[precond]['loss_kwargs'])
    if 'fdm' in options:        # FDM train.py: the multiplier goes to every FDM preconditioner (VE-FDM ignores it).
        c.network_kwargs.fdm_multiplier = FDM_MULTIPLIER if fdm_multiplier is None else fdm_multiplier
    if warmup_ite:              # FDM's loss-weight warm-up, in optimizer steps.
        c.loss_kwargs.warmup_ite = warmup_ite
    if pfgmpp:                  # PFGM++: the network records D, the loss draws the kernel in N + D dimensions.
        D = PFGMPP_AUG_DIM if aug_dim is None else aug_dim
        c.network_kwargs.update(pfgmpp=True, D=D)
        c.loss_kwargs.update(pfgmpp=True, D=D)
    if stf:
        c.loss_kwargs.update(stf=True, rbatch=STF_RBATCH if rbatch is None else rbatch)
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=lr, betas=[0.9, 0.999], eps=1e-8)
    c.augment_kwargs = None
    if augment:
        c.augment_kwargs = dnnlib.EasyDict(AUGMENT_KWARGS, p=augment)
        c.network_kwargs.augment_dim = AUGMENT_DIM
    c.total_kimg = duration * 1000                       # EDM: --duration in Mimg.
    c.ema_halflife_kimg = ema * 1000                     # EDM: --ema in Mimg.
    c.lr_rampup_kimg = lr_rampup * 1000                  # EDM's fixed 10 Mimg, an option here (as in FDM).
    c.update(batch_size=batch, batch_gpu=batch_gpu, loss_scaling=ls, cudnn_benchmark=bench, kimg_per_tick=tick,
             snapshot_ticks=snap, state_dump_ticks=dump, seed=seed, per_sample_rng=per_sample_rng,
             precision=precision, compile_net=compile_net, tf32=tf32)
    if transfer is not None:
        c.transfer = transfer
        c.ema_rampup_ratio = None                        # EDM: no EMA ramp-up when fine-tuning.
    if resume is not None:
        c.resume = resume
    return c


def check_dataset(c):
    """Open the dataset once to validate it against the options; fills in resolution and max_size (as EDM does).

    Returns the dataset's name.
    """
    path = c.dataset_kwargs.path
    if not os.path.exists(path):
        raise ConfigError(f'--data={path}: no such file or directory (make one with dataset_tool.py)')
    try:
        dataset = dnnlib.construct_class_by_name(**c.dataset_kwargs)
        label_dim = dataset.label_dim if c.dataset_kwargs.use_labels else 0
        resolution, channels, size = dataset.resolution, dataset.num_channels, len(dataset)
        has_labels = dataset.has_labels
    except (IOError, OSError, ValueError, AssertionError) as e:
        raise ConfigError(f'--data={path}: {one_line(e)}') from e
    if c.dataset_kwargs.use_labels and not has_labels:
        raise ConfigError(f'--cond=1 needs class labels, but {path} has none (no "labels" in dataset.json); '
                          'use --cond=0 or a labelled dataset')
    levels = len(c.network_kwargs.channel_mult)
    if resolution < 2 ** (levels - 1) or resolution & (resolution - 1):
        raise ConfigError(f'--data={path}: resolution {resolution} does not fit the network: it must be a power of two '
                          f'and at least {2 ** (levels - 1)} for {levels} levels (--cres)')
    c.dataset_kwargs.resolution = resolution
    c.dataset_kwargs.max_size = size
    c.dataset_info = dnnlib.EasyDict(resolution=resolution, channels=channels, label_dim=label_dim, size=size)
    return dataset.name


# ----------------------------------------------------------------------------
# Run directory.


def run_desc(dataset_name, cond, arch, precond, world_size, batch, fp16, desc=None, precision='fp32'):
    """EDM's run-directory description: {dataset}-{cond|uncond}-{arch}-{precond}-gpus{W}-batch{B}-{fp16|fp32}[-desc]
    (bf16 in place of fp32 for --precision=bf16)."""
    text = f'{dataset_name}-{"cond" if cond else "uncond"}-{arch}-{precond}-gpus{world_size}-batch{batch}-' \
           f'{"fp16" if fp16 else precision}'
    return text + (f'-{desc}' if desc else '')


def next_run_dir(outdir, description):
    """outdir/{id:05d}-{description}, id = 1 + the largest numeric prefix already in outdir (EDM's rule)."""
    ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            match = re.match(r'^\d+', name)
            if match and os.path.isdir(os.path.join(outdir, name)):
                ids.append(int(match.group()))
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{description}')


def choose_run_dir(outdir, description, name=None, nosubdir=False, resume=None):
    """Where the run writes: outdir itself (--nosubdir), outdir/NAME (--name) or the next numbered directory.

    A named directory must be new or empty, unless the run resumes from a state file inside it.
    """
    if nosubdir:
        return outdir
    if name is not None:
        if not name or name in ('.', '..') or os.sep in name or (os.altsep and os.altsep in name):
            raise ConfigError(f'--name={name!r} must be a plain directory name')
        run_dir = os.path.join(outdir, name)
        resuming_here = resume is not None and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(run_dir)
        if os.path.isdir(run_dir) and os.listdir(run_dir) and not resuming_here:
            raise ConfigError(f'run directory {run_dir} already exists and is not empty; choose another --name')
        return run_dir
    return next_run_dir(outdir, description)
