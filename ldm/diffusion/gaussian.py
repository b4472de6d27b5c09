"""Forward process, prediction conversions and the forward posterior (DDPM Sec. 2-3).

With ``a = alpha-bar_t`` (0-based ``t``, see :mod:`ldm.diffusion.schedule`):

- forward marginal (DDPM Eq. 4): ``x_t = sqrt(a) x0 + sqrt(1-a) eps``
- x0 from eps (DDPM Eq. 15): ``x0 = (x_t - sqrt(1-a) eps) / sqrt(a)``
- velocity (Salimans & Ho): ``v = sqrt(a) eps - sqrt(1-a) x0``, hence
  ``x0 = sqrt(a) x_t - sqrt(1-a) v`` and ``eps = sqrt(1-a) x_t + sqrt(a) v``
- posterior (DDPM Eq. 6-7): ``q(x_{t-1}|x_t, x0) = N(coef1 x0 + coef2 x_t, beta-tilde_t)``
"""
from __future__ import annotations

import torch

from .schedule import DiffusionSchedule, extract

PARAMETERIZATIONS = ("eps", "x0", "v")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
    return parameterization


def q_sample(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x0)`` (DDPM Eq. 4). ``noise`` defaults to ``randn_like(x0)``."""
    if noise is None:
        noise = torch.randn_like(x0)
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0_from_eps(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                        eps: torch.Tensor) -> torch.Tensor:
    """DDPM Eq. (15): ``x0 = x_t / sqrt(a) - sqrt(1/a - 1) eps``."""
    return extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_x0(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                        x0: torch.Tensor) -> torch.Tensor:
    """Invert DDPM Eq. (4) for the noise: ``eps = (x_t - sqrt(a) x0) / sqrt(1-a)``."""
    return (x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def predict_v(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
              eps: torch.Tensor) -> torch.Tensor:
    """The v-target ``v = sqrt(a) eps - sqrt(1-a) x0``."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * eps - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def predict_x0_from_v(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor:
    """``x0 = sqrt(a) x_t - sqrt(1-a) v``."""
    return extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def predict_eps_from_v(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                       v: torch.Tensor) -> torch.Tensor:
    """``eps = sqrt(1-a) x_t + sqrt(a) v``."""
    return extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + extract(
        schedule.sqrt_alphas_cumprod, t, x_t) * v


def training_target(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor, parameterization: str) -> torch.Tensor:
    """What the network regresses for a parameterisation: ``eps`` -> noise, ``x0`` -> x0, ``v`` -> v."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    return predict_v(schedule, x0, t, noise)


def x0_eps_from_output(model_output: torch.Tensor, x_t: torch.Tensor, alpha, sigma,
                       parameterization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, eps_hat)`` from a model output, with ``alpha = sqrt(a)`` and ``sigma = sqrt(1-a)``
    given as floats or broadcastable tensors (samplers pass per-step floats)."""
    if parameterization == "eps":
        return (x_t - sigma * model_output) / alpha, model_output
    if parameterization == "x0":
        return model_output, (x_t - alpha * model_output) / sigma
    if parameterization == "v":
        return alpha * x_t - sigma * model_output, sigma * x_t + alpha * model_output
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


def output_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, parameterization: str) -> torch.Tensor:
    """The model output that encodes ``(x0, eps)`` in a parameterisation (inverse of the above)."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


def to_x0_eps(schedule: DiffusionSchedule, model_output: torch.Tensor, x_t: torch.Tensor,
              t: torch.Tensor, parameterization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output in any parameterisation into ``(x0_hat, eps_hat)``."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return predict_x0_from_eps(schedule, x_t, t, model_output), model_output
    if parameterization == "x0":
        return model_output, predict_eps_from_x0(schedule, x_t, t, model_output)
    return (predict_x0_from_v(schedule, x_t, t, model_output),
            predict_eps_from_v(schedule, x_t, t, model_output))


def q_posterior(schedule: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x0)`` (DDPM Eq. 6-7)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(
        schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t)
    logvar = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, logvar
