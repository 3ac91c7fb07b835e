"""Time schedules: the noise levels t_0 > t_1 > ... > t_{N-1} that a solver visits.

`num_steps` counts timestamps (N), with no trailing zero (the GITS toolbox's meaning), so a schedule has
N - 1 steps. "Time" is the noise level sigma itself (EDM's VE parameterisation x = y + sigma * n).

By default the schedules are built in float32 with the same arithmetic as the GITS toolbox, so that they
reproduce its numbers including its float32 artefacts (the first polynomial entry is 79.99998, the last
`time_uniform` entry is 0.0020132 instead of 0.002). Pass `dtype=torch.float64` for a clean schedule.
"""

import torch

SCHEDULE_TYPES = ('polynomial', 'logsnr', 'time_uniform', 'discrete')

# VP-SDE time of the last point of the `time_uniform` grid (epsilon_s of Song et al. 2021 / EDM's VP setting).
TIME_UNIFORM_EPS = 1e-3

# ----------------------------------------------------------------------------


def vp_fit(sigma_min, sigma_max, eps_s=TIME_UNIFORM_EPS, dtype=torch.float32):
    """(beta_d, beta_min) of the VP-SDE whose sigma(t) runs from sigma_min at t=eps_s to sigma_max at t=1.

    The refitted VP constants of EDM's ablation sampler (Karras et al. 2022, VP row of Table 1 with sigma(eps_s) =
    sigma_min, sigma(1) = sigma_max). Computed in `dtype` (float32 in the toolbox, which gives
    beta_d = 17.53785, beta_min = -0.0047158 for (0.002, 80)).
    """
    l_min = torch.log(torch.tensor(sigma_min, dtype=dtype) ** 2 + 1)
    l_max = torch.log(torch.tensor(sigma_max, dtype=dtype) ** 2 + 1)
    beta_d = 2 * (l_min / eps_s - l_max) / (eps_s - 1)  # solves sigma(eps_s) = sigma_min, sigma(1) = sigma_max
    beta_min = l_max - 0.5 * beta_d  # for the VP sigma(t) of EDM Table 1
    return beta_d, beta_min


def vp_sigma(t, beta_d, beta_min):
    """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP schedule)."""
    return (torch.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1) ** 0.5


def vp_sigma_inv(sigma, beta_d, beta_min):
    """Inverse of `vp_sigma`: t = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d (EDM Table 1)."""
    return ((beta_min ** 2 + 2 * beta_d * torch.log(sigma ** 2 + 1)).sqrt() - beta_min) / beta_d


def clip_sigma_range(net, sigma_min, sigma_max):
    """Clip (sigma_min, sigma_max) to the range the net supports, as EDM's samplers do."""
    if net is not None:
        sigma_min = max(float(sigma_min), float(net.sigma_min))
        sigma_max = min(float(sigma_max), float(net.sigma_max))
    return float(sigma_min), float(sigma_max)


def get_schedule(num_steps, sigma_min, sigma_max, schedule_type='polynomial', schedule_rho=7, net=None,
                 device=None, dtype=torch.float32):
    """Return `num_steps` decreasing noise levels from sigma_max to sigma_min (no trailing zero).

    schedule_type:
      - 'polynomial': EDM's rho-spaced levels (Karras et al. 2022, eq. 5); rho defaults to 7.
      - 'logsnr': uniform in lambda = -ln(sigma) (DPM-Solver, Lu et al. 2022, Sec. 3.3); rho is ignored.
      - 'time_uniform': uniform in tau^(1/rho) for the VP-SDE time tau in [1e-3, 1] fitted to
        (sigma_min, sigma_max) (DEIS, Zhang & Chen 2023); rho=1 is uniform, rho=2 is DEIS's quadratic.
        In float32 its last point is 0.0020132 for sigma_min=0.002 (kept from the toolbox).
      - 'discrete': uses the network's own time variable: `net.sigma_inv(sigma)` and `net.sigma(t)` (VP and
        iDDPM-like preconditioners, LDM/SD wrappers); s_i is rho-spaced between sigma_inv(sigma_max) and
        sigma_inv(sigma_min), t_i = net.sigma(s_i).

    sigma_min/sigma_max are used as given; `samplers.sample` clips them to the net's range before calling this.
    """
    num_steps = int(num_steps)
    if num_steps < 2:
        raise ValueError(f'num_steps counts timestamps and must be at least 2 (got {num_steps})')
    if schedule_type not in SCHEDULE_TYPES:
        raise ValueError(f'unknown schedule_type {schedule_type!r}; choose one of {", ".join(SCHEDULE_TYPES)}')
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f'need 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})')
    rho = schedule_rho
    u = torch.arange(num_steps, dtype=dtype) / (num_steps - 1)  # u_i = i / (N - 1)

    if schedule_type == 'polynomial':
        # Karras et al. 2022, eq. 5: t_i = (s_max^(1/rho) + u_i (s_min^(1/rho) - s_max^(1/rho)))^rho.
        t_steps = (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

    elif schedule_type == 'logsnr':
        # Lu et al. 2022 (DPM-Solver), Sec. 3.3: lambda_i uniform between -ln(s_max) and -ln(s_min), t = e^-lambda.
        lambda_min = -torch.log(torch.tensor(sigma_max, dtype=dtype))
        lambda_max = -torch.log(torch.tensor(sigma_min, dtype=dtype))
        t_steps = torch.exp(-torch.linspace(float(lambda_min), float(lambda_max), num_steps, dtype=dtype))

    elif schedule_type == 'time_uniform':
        # Zhang & Chen 2023 (DEIS), Sec. 5: tau_i = (1 + u_i (eps^(1/rho) - 1))^rho, t_i = sigma_VP(tau_i).
        beta_d, beta_min = vp_fit(sigma_min, sigma_max, dtype=dtype)
        tau = (1 + u * (TIME_UNIFORM_EPS ** (1 / rho) - 1)) ** rho
        t_steps = vp_sigma(tau, beta_d, beta_min)

    else:  # 'discrete'
        if net is None or not callable(getattr(net, 'sigma', None)) or not callable(getattr(net, 'sigma_inv', None)):
            name = 'net=None' if net is None else type(net).__name__
            raise ValueError(f"schedule_type='discrete' needs a net with sigma(t) and sigma_inv(sigma) "
                             f"(VP/iDDPM-style preconditioners); {name} has none, use 'polynomial', 'logsnr' or "
                             f"'time_uniform'")
        s_min = torch.as_tensor(net.sigma_inv(torch.tensor(sigma_min, dtype=dtype))).to(dtype).cpu()
        s_max = torch.as_tensor(net.sigma_inv(torch.tensor(sigma_max, dtype=dtype))).to(dtype).cpu()
        # Rho-spacing in the net's time: s_i = (s_max^(1/rho) + u_i (s_min^(1/rho) - s_max^(1/rho)))^rho.
        # (The toolbox omits the 1/rho power on s_max; identical whenever s_max = 1, which holds for VP/LDM/SD.)
        s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t_steps = torch.as_tensor(net.sigma(s.to(device) if device is not None else s)).to(dtype)

    return t_steps.to(device=device, dtype=dtype)


def edm_schedule(net, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7, device=None):
    """Noise levels t_0 > ... > t_{N-1} followed by t_N = 0, in float64 (EDM eq. 5), rounded by the net.

    EDM's meaning of num_steps: noise levels before the final zero (not the timestamps of `get_schedule`)."""
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    # EDM eq. 5: t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho.
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
               * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([torch.as_tensor(net.round_sigma(t_steps), dtype=torch.float64),
                      torch.zeros_like(t_steps[:1])])



def gddim_schedule(num_steps, t_max=1.0, t_min=1e-3, ts_order=2, device=None, dtype=torch.float64):
    """gDDIM's time grid for CLD (Zhang et al. 2023; times of the CLD process, not noise levels):
    t_k = (t_max^(1/p) + k / (N - 1) (t_min^(1/p) - t_max^(1/p)))^p, k = 0..N-1, p = ts_order.

    `num_steps` = N timestamps (N - 1 steps); with the final denoising step NFE = N (gDDIM's nfe=50 is N = 50).
    """
    if int(num_steps) < 2:
        raise ValueError(f'num_steps must be at least 2 (got {num_steps})')
    if not 0 < t_min < t_max:
        raise ValueError(f'need 0 < t_min < t_max (got t_min={t_min}, t_max={t_max})')
    k = torch.arange(int(num_steps), dtype=torch.float64) / (int(num_steps) - 1)
    p = float(ts_order)
    t = (t_max ** (1 / p) + k * (t_min ** (1 / p) - t_max ** (1 / p))) ** p
    t[0], t[-1] = t_max, t_min
    return t.to(device=device, dtype=dtype)


def as_schedule(t_steps, device=None, dtype=torch.float32):
    """An explicit schedule (list or tensor) as a 1-D decreasing tensor; checks its shape and order."""
    t = torch.as_tensor(t_steps, dtype=dtype, device=device).flatten() if not isinstance(t_steps, torch.Tensor) \
        else t_steps.detach().to(device=device, dtype=dtype).flatten()
    if t.numel() < 2:
        raise ValueError(f't_steps needs at least 2 noise levels (got {t.numel()})')
    if not bool(torch.all(t[1:] < t[:-1])) or not bool(t[-1] > 0):
        raise ValueError(f't_steps must be strictly decreasing and positive (got {t.tolist()})')
    return t


def schedule_fingerprint(t_steps, decimals=4):
    """The schedule as a list of floats rounded for printing/JSON (as the toolbox prints 4 decimals)."""
    return [round(float(v), decimals) for v in torch.as_tensor(t_steps).flatten()]


__all__ = ['SCHEDULE_TYPES', 'get_schedule', 'gddim_schedule', 'vp_fit', 'vp_sigma', 'vp_sigma_inv', 'clip_sigma_range',
           'as_schedule', 'schedule_fingerprint']
