"""The model's reverse step ``p(x_{t-1} | x_t) = N(mu_theta, sigma_t^2)`` (DDPM Eq. 11, Alg. 2).

The mean is the posterior mean (DDPM Eq. 7) evaluated at the model's x0 estimate, which equals
DDPM Eq. (11) for an eps-model when x0 is not clipped. Variance choices (``variance_type``):

- ``fixed_small``: sigma^2 = beta-tilde_t (posterior variance; log clipped at t=0).
- ``fixed_large``: sigma^2 = beta_t, with beta-tilde_1 in place of beta_0 at t=0 as in the DDPM
  reference code, so the t=0 decoder keeps a sensible variance (no noise is added at t=0).
- ``learned``: the model returns 2C channels, the last C being log sigma^2 directly.
- ``learned_range``: the model returns 2C channels, the last C a value v in [-1, 1];
  log sigma^2 = f log beta_t + (1 - f) log beta-tilde_t (Improved DDPM, Nichol & Dhariwal 2021, Eq. 15)
  with f = (v + 1)/2, the reference code's map of the model output to [0, 1].
"""
from __future__ import annotations

import torch

from .gaussian import interpolate_log_variance, q_posterior, to_x0_eps
from .schedule import DiffusionSchedule, extract

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")


def check_variance_type(variance_type: str) -> str:
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
    return variance_type


def fixed_large_log_variance(schedule: DiffusionSchedule) -> torch.Tensor:
    """log beta_t per step, with beta-tilde at index 1 used at t=0 (DDPM reference code)."""
    return torch.log(torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]))


def learned_range_log_variance(schedule: DiffusionSchedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Interpolate log variance between beta-tilde_t and beta_t (Improved DDPM Eq. 15).

    ``v`` is the raw network output in [-1, 1]; ``frac = (v + 1)/2``;
    ``log sigma^2 = frac * log(beta_t) + (1 - frac) * posterior_log_variance_clipped[t]``.
    """
    return interpolate_log_variance(v, extract(torch.log(schedule.betas), t, v),
                                    extract(schedule.posterior_log_variance_clipped, t, v))


def threshold_x0(x0: torch.Tensor, clip_denoised: bool = False,
                 dynamic_threshold: float | None = None) -> torch.Tensor:
    """Optionally clip the x0 estimate to [-1, 1] or apply dynamic thresholding.

    Dynamic thresholding (Saharia et al., Imagen): per sample, ``s`` = the ``dynamic_threshold``
    quantile of ``|x0|``, at least 1; x0 is clamped to ``[-s, s]`` and divided by ``s``.
    """
    if dynamic_threshold is not None:
        if not 0.0 < float(dynamic_threshold) <= 1.0:
            raise ValueError(f"dynamic_threshold is a quantile in (0, 1], got {dynamic_threshold}")
        flat = x0.detach().reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, float(dynamic_threshold), dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s
    if clip_denoised:
        return x0.clamp(-1.0, 1.0)
    return x0


def split_variance_output(model_output: torch.Tensor, variance_type: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a learned-variance model's 2C-channel output into (prediction, variance values)."""
    check_variance_type(variance_type)
    if variance_type in ("learned", "learned_range"):
        if model_output.shape[1] % 2:
            raise ValueError(
                f"variance_type={variance_type!r} needs a model returning 2C channels, got {model_output.shape[1]}")
        prediction, var_values = model_output.chunk(2, dim=1)
        return prediction, var_values
    return model_output, None


def p_mean_variance(schedule: DiffusionSchedule, model_output: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor, parameterization: str = "eps", variance_type: str = "fixed_small",
                    clip_denoised: bool = False, dynamic_threshold: float | None = None) -> dict:
    """Mean and (log) variance of ``p(x_{t-1}|x_t)`` from a model output.

    Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_x0`` (after optional
    clipping) and ``pred_eps`` (the model's own noise estimate).
    """
    prediction, var_values = split_variance_output(model_output, variance_type)
    pred_x0, pred_eps = to_x0_eps(schedule, prediction, x_t, t, parameterization)
    pred_x0 = threshold_x0(pred_x0, clip_denoised, dynamic_threshold)
    mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
    if variance_type == "fixed_small":
        log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    elif variance_type == "fixed_large":
        log_variance = extract(fixed_large_log_variance(schedule), t, x_t).expand_as(x_t)
    elif variance_type == "learned":
        log_variance = var_values
    else:
        log_variance = learned_range_log_variance(schedule, var_values, t)
    return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance,
            "pred_x0": pred_x0, "pred_eps": pred_eps}
