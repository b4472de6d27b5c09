"""Noise-level schedules for the samplers in sigma space (:mod:`ldm.samplers.k_samplers`).

Every schedule is a descending float64 tensor ``sigma_0 > ... > sigma_{n-1} > sigma_n = 0`` of
variance-exploding noise levels (``x = x0 + sigma eps``, ``sigma = sqrt((1 - a)/a)``), ``n`` steps:

- ``karras``: Karras et al. 2022, Eq. (5): ``sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``,
  ``rho = 7``, between the model's ``sigma_min`` (t = 0) and ``sigma_max`` (t = T-1);
- ``exponential``: evenly spaced in ``log sigma`` (= evenly spaced in log-SNR) between the same ends;
- ``discrete``: the training grid's sigmas at the timesteps of :func:`~ldm.samplers.spacing.make_timesteps`
  (``spacing`` as for DDIM: ``uniform``, ``linspace``, ``trailing``, ``logsnr``, ``quad``).
"""
from __future__ import annotations

import math

import torch

from ..diffusion.schedule import DiffusionSchedule
from .spacing import make_timesteps

SIGMA_SCHEDULES = ("karras", "exponential", "discrete")


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (0.0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max} "
                         "(a zero-terminal-SNR schedule has sigma_max = inf: use a DDIM/DDPM sampler)")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, Eq. (5), then 0 (``steps + 1`` values)."""
    _check_range(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """``exp(linspace(log sigma_max, log sigma_min, steps))``, then 0."""
    _check_range(steps, sigma_min, sigma_max)
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp())


def discrete_sigmas(schedule: DiffusionSchedule, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """The training grid's sigmas at the visited timesteps (descending), then 0."""
    ts = make_timesteps(schedule.num_timesteps, steps, spacing, schedule.alphas_cumprod)
    sigmas = schedule.sigmas[torch.tensor(list(reversed(ts)))]
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("the schedule reaches sigma = inf (zero terminal SNR): use a DDIM/DDPM sampler")
    return _with_zero(sigmas)


def make_sigmas(name: str, schedule: DiffusionSchedule, steps: int, rho: float = 7.0, spacing: str = "uniform",
                sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """A named schedule for ``schedule`` (``sigma_min`` / ``sigma_max`` default to the model's range)."""
    if name == "discrete":
        return discrete_sigmas(schedule, steps, spacing)
    table = schedule.sigmas
    lo = float(table[0]) if sigma_min is None else float(sigma_min)
    hi = float(table[-1]) if sigma_max is None else float(sigma_max)
    if name == "karras":
        return karras_sigmas(steps, lo, hi, rho)
    if name == "exponential":
        return exponential_sigmas(steps, lo, hi)
    raise ValueError(f"unknown sigma schedule {name!r}; choose one of {SIGMA_SCHEDULES}")
