"""Beta schedules and the per-timestep constants of a Gaussian diffusion.

Timestep convention (the one place it is stated): **timesteps are 0-based**. Index ``t`` in
``0 .. T-1`` is the paper's step ``t + 1`` (DDPM counts ``1 .. T``). So ``betas[0]`` is
DDPM's beta_1, ``alphas_cumprod[t]`` is alpha-bar_{t+1}, and ``alphas_cumprod_prev[0] = 1``
stands for alpha-bar_0 (no noise). Every function in :mod:`ldm.diffusion` and
:mod:`ldm.samplers` takes ``t`` in this convention.

All constants are float64 tensors on the CPU; :func:`extract` gathers and casts them to the
dtype/device of the tensor they are combined with.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
#: the forward-process constants of :class:`DiffusionSchedule` that checkpoints hold as buffers, in the original
#: order (the x4 upscaler's noise augmentation registers these) ...
FORWARD_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                   "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                   "sqrt_recipm1_alphas_cumprod")
#: ... and all of them, the forward posterior's (DDPM Eq. 6-7) included (a DDPM registers these)
SCHEDULE_BUFFERS = FORWARD_BUFFERS + ("posterior_variance", "posterior_log_variance_clipped",
                                      "posterior_mean_coef1", "posterior_mean_coef2")


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """Return ``n_timestep`` betas (float64) for a named schedule.

    - ``linear``: linear in sqrt(beta), ``linspace(sqrt(start), sqrt(end), T) ** 2`` -- the
      LDM "linear" schedule (DDPM's own schedule is linear in beta; that is ``sqrt_linear``
      here, a historical name kept for config compatibility).
    - ``cosine``: Nichol & Dhariwal, alpha-bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2) normalised
      by its value at 0, ``beta_t = 1 - alpha-bar(t+1)/alpha-bar(t)`` clipped to 0.999.
    - ``sqrt_linear``: ``linspace(start, end, T)``.
    - ``sqrt``: ``linspace(start, end, T) ** 0.5``.
    """
    if not isinstance(n_timestep, int) or n_timestep < 1:
        raise ValueError(f"n_timestep must be a positive int, got {n_timestep!r}")
    f64 = torch.float64
    if schedule == "linear":
        betas = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), n_timestep, dtype=f64) ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=f64) / n_timestep
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_bar = f / f[0]
        betas = (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(min=0.0, max=0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=f64)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=f64) ** 0.5
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {BETA_SCHEDULES}")
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha-bar) so the last step has zero SNR (Lin et al. 2023, Alg. 1).

    sqrt(alpha-bar) keeps its first value and becomes exactly 0 at ``t = T-1``, so the last
    beta is 1. With zero terminal SNR an eps-predictor cannot recover x0 at the last step;
    use ``v`` (or ``x0``) parameterisation.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    if not first > last:
        raise ValueError("rescale_zero_terminal_snr needs a decreasing alpha-bar (T >= 2)")
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_bar = sqrt_ab**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True, eq=False)
class DiffusionSchedule:
    """The per-timestep constants of DDPM (Eq. 4, 6-7), float64, indexed by 0-based ``t``."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha-bar / (1 - alpha-bar) per timestep."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t) per timestep (:func:`ldm.diffusion.gaussian.log_snr`)."""
        from .gaussian import log_snr

        return log_snr(self.alphas_cumprod)

    @property
    def sigmas(self) -> torch.Tensor:
        """The variance-exploding noise level sqrt((1 - a)/a) per timestep (ascending in t)."""
        from .gaussian import sigma_ve

        return sigma_ve(self.alphas_cumprod)

    @classmethod
    def from_betas(cls, betas: torch.Tensor | Sequence[float]) -> DiffusionSchedule:
        """Derive every constant from the betas (DDPM Eq. 4 and the posterior Eq. 6-7)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().flatten()
        if betas.numel() < 2:
            raise ValueError("a diffusion schedule needs at least 2 timesteps")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        from .gaussian import posterior_coefficients  # the one home of DDPM Eq. (7)

        alphas = 1 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        coef1, coef2, posterior_variance = posterior_coefficients(ac, ac_prev, beta=betas)
        # posterior_variance[0] == 0; the log is clipped by repeating the t=1 value
        # (Improved DDPM), so the t=0 decoder keeps a finite variance.
        posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        return cls(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - ac).sqrt(),
            log_one_minus_alphas_cumprod=torch.log(1 - ac),
            sqrt_recip_alphas_cumprod=(1 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1 / ac - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=coef1,
            posterior_mean_coef2=coef2,
        )

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor | Sequence[float]) -> DiffusionSchedule:
        """Rebuild the schedule from alpha-bar (e.g. a checkpoint's ``alphas_cumprod`` buffer)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 2 or not bool(((ac >= 0) & (ac < 1)).all()) or not bool((ac[1:] <= ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be non-increasing values in [0, 1)")
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return cls.from_betas(1 - ac / prev)

    @classmethod
    def from_config(
        cls,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        given_betas: Sequence[float] | None = None,
        zero_terminal_snr: bool = False,
    ) -> DiffusionSchedule:
        """Build from the original DDPM ``register_schedule`` arguments (same names)."""
        if given_betas is not None:
            betas = torch.as_tensor(given_betas, dtype=torch.float64)
        else:
            betas = make_beta_schedule(beta_schedule, int(timesteps), linear_start, linear_end, cosine_s)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls.from_betas(betas)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def as_schedule(schedule_or_alphas_cumprod) -> DiffusionSchedule:
    """Accept a :class:`DiffusionSchedule` or an ``alphas_cumprod`` tensor/sequence."""
    if isinstance(schedule_or_alphas_cumprod, DiffusionSchedule):
        return schedule_or_alphas_cumprod
    return DiffusionSchedule.from_alphas_cumprod(schedule_or_alphas_cumprod)


def extract(a: torch.Tensor, t: torch.Tensor, x_shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gather ``a[t]`` and reshape to ``[B, 1, 1, ...]`` broadcastable to ``x_shape``.

    ``x_shape`` may be a shape or the tensor itself; given a tensor, the result takes its dtype
    (and ``t``'s device). Given a bare shape the result has ``dtype`` or the default float dtype,
    so float64 schedule constants never silently promote float32 activations.
    """
    if isinstance(x_shape, torch.Tensor):
        dtype = dtype or x_shape.dtype
        x_shape = x_shape.shape
    dtype = dtype or torch.get_default_dtype()
    t = torch.as_tensor(t)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"timesteps must be an integer tensor, got {t.dtype}")
    if t.ndim == 0:
        t = t.reshape(1)
    out = a.to(dtype=dtype).to(device=t.device)[t.long()]
    return out.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))
