"""Forward process, the parameterisation conversion and the forward posterior (DDPM Sec. 2-3).

This module is the one home of each equation; the T-step tables of
:class:`~ldm.diffusion.schedule.DiffusionSchedule`, the training code and every sampler call it.
With ``a = alpha-bar_t`` (0-based ``t``, see :mod:`ldm.diffusion.schedule`), ``alpha = sqrt(a)``
and ``sigma = sqrt(1 - a)``:

- forward marginal (DDPM Eq. 4; LDM Eq. 1-2 train on it in latent space):
  ``x_t = alpha x0 + sigma eps`` -- :func:`q_sample_at` (:func:`q_sample` indexes the table)
- the parameterisation conversion (:func:`x0_eps_from_output` and its inverse
  :func:`output_from_x0_eps`): eps (DDPM Eq. 11 / 15: ``x0 = (x_t - sigma eps)/alpha``),
  x0, and velocity (Salimans & Ho) ``v = alpha eps - sigma x0``, hence
  ``x0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v``
- posterior between any two levels ``a < a_prev`` (DDPM Eq. 6-7 with ``beta = 1 - a/a_prev``;
  DDIM Eq. 16 with eta = 1 is the same chain): :func:`posterior_coefficients`
- log-SNR ``lambda = log(alpha/sigma)`` and the variance-exploding noise level
  ``sigma_VE = sigma/alpha = exp(-lambda)`` (DDIM Eq. 12 in ``x/alpha`` coordinates is the Euler step in
  ``sigma_VE``): :func:`log_snr`, :func:`sigma_ve`, :func:`vp_from_sigma_ve`
"""
from __future__ import annotations

import math

import torch

from .schedule import DiffusionSchedule, extract

PARAMETERIZATIONS = ("eps", "x0", "v")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
    return parameterization


def _sqrt(value):
    return value.sqrt() if isinstance(value, torch.Tensor) else math.sqrt(value)


def _alpha_sigma(schedule: DiffusionSchedule, t: torch.Tensor, like: torch.Tensor):
    return extract(schedule.sqrt_alphas_cumprod, t, like), extract(schedule.sqrt_one_minus_alphas_cumprod, t, like)


# ---------------------------------------------------------------------------- forward process
def q_sample_at(x0: torch.Tensor, alpha, sigma, noise: torch.Tensor) -> torch.Tensor:
    """DDPM Eq. (4) at a given level: ``alpha x0 + sigma noise`` (floats or broadcastable tensors;
    ``alpha = 1`` gives the variance-exploding ``x0 + sigma noise``)."""
    return alpha * x0 + sigma * noise


def q_sample(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x0)`` (DDPM Eq. 4). ``noise`` defaults to ``randn_like(x0)``."""
    if noise is None:
        noise = torch.randn_like(x0)
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return q_sample_at(x0, alpha, sigma, noise)


# ---------------------------------------------------------------------------- noise levels
def log_snr(alpha_cumprod):
    """``lambda = log(alpha/sigma) = (log a - log(1 - a)) / 2`` for a float or tensor ``a``, with the
    limits ``+inf`` at ``a = 1`` and ``-inf`` at ``a = 0``."""
    if isinstance(alpha_cumprod, torch.Tensor):
        return 0.5 * (torch.log(alpha_cumprod) - torch.log1p(-alpha_cumprod))
    a = float(alpha_cumprod)
    if a <= 0.0:
        return -math.inf
    if a >= 1.0:
        return math.inf
    return 0.5 * (math.log(a) - math.log1p(-a))


def sigma_ve(alpha_cumprod):
    """The variance-exploding noise level ``sigma/alpha = sqrt((1 - a)/a) = exp(-lambda)``: with
    ``x = x_t / alpha`` the forward process is ``x = x0 + sigma_ve eps`` (Karras et al. 2022, Sec. 2)."""
    return _sqrt((1 - alpha_cumprod) / alpha_cumprod)


def vp_from_sigma_ve(sigma):
    """``(alpha, sigma_vp) = (1, sigma) / sqrt(1 + sigma^2)``: the variance-preserving level of a
    variance-exploding ``sigma`` (``a = 1 / (1 + sigma^2)``); ``x_t = alpha x``."""
    scale = 1 / _sqrt(1 + sigma * sigma)
    return scale, sigma * scale


# ---------------------------------------------------------------------------- parameterisation
def x0_eps_from_output(model_output: torch.Tensor, x_t: torch.Tensor, alpha, sigma,
                       parameterization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, eps_hat)`` from a model output in any parameterisation, with ``alpha = sqrt(a)`` and
    ``sigma = sqrt(1-a)`` given as floats or broadcastable tensors -- the one conversion
    (eps: DDPM Eq. 11 / 15 inverted; x0; v: Salimans & Ho)."""
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
    """:func:`x0_eps_from_output` at the table's timesteps ``t``."""
    check_parameterization(parameterization)
    alpha, sigma = _alpha_sigma(schedule, t, x_t)
    return x0_eps_from_output(model_output, x_t, alpha, sigma, parameterization)


def predict_x0_from_eps(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                        eps: torch.Tensor) -> torch.Tensor:
    """DDPM Eq. (15): ``x0 = (x_t - sqrt(1-a) eps) / sqrt(a)``."""
    return to_x0_eps(schedule, eps, x_t, t, "eps")[0]


def predict_eps_from_x0(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                        x0: torch.Tensor) -> torch.Tensor:
    """Invert DDPM Eq. (4) for the noise: ``eps = (x_t - sqrt(a) x0) / sqrt(1-a)``."""
    return to_x0_eps(schedule, x0, x_t, t, "x0")[1]


def predict_x0_from_v(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor:
    """``x0 = sqrt(a) x_t - sqrt(1-a) v``."""
    return to_x0_eps(schedule, v, x_t, t, "v")[0]


def predict_eps_from_v(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor,
                       v: torch.Tensor) -> torch.Tensor:
    """``eps = sqrt(1-a) x_t + sqrt(a) v``."""
    return to_x0_eps(schedule, v, x_t, t, "v")[1]


def predict_v(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
              eps: torch.Tensor) -> torch.Tensor:
    """The v-target ``v = sqrt(a) eps - sqrt(1-a) x0``."""
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return output_from_x0_eps(x0, eps, alpha, sigma, "v")


def training_target(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor, parameterization: str) -> torch.Tensor:
    """What the network regresses for a parameterisation: ``eps`` -> noise, ``x0`` -> x0, ``v`` -> v."""
    check_parameterization(parameterization)
    if parameterization == "v":
        return predict_v(schedule, x0, t, noise)
    return noise if parameterization == "eps" else x0


# ---------------------------------------------------------------------------- posterior
def posterior_coefficients(a, a_prev, beta=None) -> tuple:
    """``(coef_x0, coef_xt, variance)`` of ``q(x_prev | x, x0) = N(coef_x0 x0 + coef_xt x, variance)``
    between the noise levels ``a`` (of ``x``) and ``a_prev > a`` (DDPM Eq. 6-7; the two-level chain has
    ``beta = 1 - a/a_prev``, the respaced chain of Improved DDPM and DDIM Eq. 16 with eta = 1):

    ``coef_x0 = sqrt(a_prev) beta / (1 - a)``, ``coef_xt = sqrt(1 - beta) (1 - a_prev) / (1 - a)``,
    ``variance = beta (1 - a_prev) / (1 - a)`` (beta-tilde). Floats or tensors; pass ``beta`` when it
    is known exactly (the T-step table passes its betas).
    """
    if beta is None:
        ratio = a / a_prev
        beta = 1 - ratio
    else:
        ratio = 1 - beta
    coef_x0 = beta * _sqrt(a_prev) / (1 - a)
    coef_xt = (1 - a_prev) * _sqrt(ratio) / (1 - a)
    variance = beta * (1 - a_prev) / (1 - a)
    return coef_x0, coef_xt, variance


def interpolate_log_variance(v, log_beta, log_beta_tilde):
    """Improved-DDPM Eq. (15): ``log sigma^2 = f log beta + (1 - f) log beta-tilde`` with
    ``f = (v + 1)/2`` from the network's extra channels ``v`` in [-1, 1] (the reference code's map to [0, 1])."""
    frac = (v + 1) / 2
    return frac * log_beta + (1 - frac) * log_beta_tilde


def q_posterior(schedule: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x0)`` (DDPM Eq. 6-7)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(
        schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t)
    logvar = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, logvar
