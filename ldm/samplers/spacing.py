"""Which of the T training timesteps a sampler visits (0-based, ascending).

- ``uniform``: the original DDIM convention ``range(0, T, T // S) + 1`` (so T=1000, S=50 gives
  1, 21, ..., 981). When S does not divide T this yields a few more than S steps, exactly as
  the original; when ``T // S == 1`` it is the full chain ``0 .. T-1``.
- ``quad``: ``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1`` (original), duplicates removed.
- ``linspace``: ``round(linspace(0, T-1, S))``, exactly S steps including 0 and T-1.
- ``trailing``: ``round(arange(T, 0, -T/S)) - 1`` (Lin et al. 2023), exactly S steps ending at T-1.
- ``logsnr``: S steps evenly spaced in log-SNR lambda = log(sqrt(a)/sqrt(1-a)) between the
  first and last timestep, rounded to the nearest timestep (needs ``alphas_cumprod``); near
  t = 0 two targets can round to the same timestep, so this may give slightly fewer than S.
"""
from __future__ import annotations

import math
import operator

import torch

from ..diffusion.gaussian import log_snr

SPACINGS = ("uniform", "quad", "linspace", "trailing", "logsnr")


def make_timesteps(num_timesteps: int, steps: int, spacing: str = "uniform",
                   alphas_cumprod: torch.Tensor | None = None) -> list[int]:
    """Ascending list of distinct 0-based timesteps for a sampler with ``steps`` steps."""
    T = int(num_timesteps)
    try:
        steps = operator.index(steps)   # ints and numpy integers, not floats or strings
    except TypeError:
        raise ValueError(f"steps must be a positive int, got {steps!r}") from None
    if isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if steps > T:
        raise ValueError(f"steps={steps} exceeds the {T} training timesteps")
    if spacing == "uniform":
        stride = T // steps
        if stride == 1:
            return list(range(T))
        ts = [min(t + 1, T - 1) for t in range(0, T, stride)]
    elif spacing == "quad":
        ts = [min(int(v) + 1, T - 1) for v in torch.linspace(0, math.sqrt(T * 0.8), steps, dtype=torch.float64) ** 2]
    elif spacing == "linspace":
        ts = [int(round(v)) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()]
    elif spacing == "trailing":
        ts = [int(round(T - i * T / steps)) - 1 for i in range(steps)]
    elif spacing == "logsnr":
        if alphas_cumprod is None:
            raise ValueError("spacing='logsnr' needs alphas_cumprod")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        lam = log_snr(ac)
        finite = torch.isfinite(lam)
        lo = float(lam[finite].min())  # zero terminal SNR: the last step (lambda = -inf) is added below
        targets = torch.linspace(float(lam[0]), lo, steps - int(not bool(finite[-1])), dtype=torch.float64)
        lam = torch.where(finite, lam, torch.full_like(lam, -math.inf))
        ts = [int(torch.argmin((lam - v).abs())) for v in targets]
        if not bool(finite[-1]):
            ts.append(T - 1)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    return sorted(set(ts))
