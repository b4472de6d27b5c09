"""Pieces of the stage-2 training loss, kept apart from the LightningModules so they can be
tested on their own. All losses are computed in float32 whatever the autocast dtype.

- :func:`elementwise_loss`: ``l2`` (DDPM Eq. 14, L_simple) or ``l1`` per element.
- :func:`min_snr_weight`: Min-SNR-gamma loss weighting (Hang et al. 2023) for every
  parameterisation.
- :func:`offset_noise`: noise with a per-channel constant added (offset noise).
- :func:`hybrid_vlb_term`: the VLB part of Improved DDPM's hybrid loss
  ``L_hybrid = L_simple + lambda * L_vlb`` with a stop-gradient on the mean (Improved DDPM,
  Nichol & Dhariwal 2021, Eq. 16 and Sec. 3.1), for learned (``learned``) or learned-range
  (``learned_range``, Eq. 15) variances.
"""
from __future__ import annotations

import torch

from ldm.diffusion import DiffusionSchedule, extract, p_mean_variance, vlb_terms

LOSS_TYPES = ("l2", "l1")


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Unreduced loss in float32: ``(target - prediction)^2`` (``l2``) or ``|target - prediction|`` (``l1``)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    diff = target.float() - prediction.float()
    if loss_type == "l2":
        return diff.square()
    if loss_type == "l1":
        return diff.abs()
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def min_snr_weight(snr: torch.Tensor, gamma: float, parameterization: str) -> torch.Tensor:
    """Min-SNR-gamma weights per sample, given ``snr = a / (1 - a)`` at each sample's timestep.

    The x0-space loss is weighted by ``min(SNR, gamma)``. Expressed for the loss the network
    actually regresses: x0 -> ``min(SNR, gamma)``; eps (x0 error = eps error / sqrt(SNR)) ->
    ``min(SNR, gamma) / SNR = min(1, gamma / SNR)``; v (x0 error = v error / sqrt(SNR + 1)) ->
    ``min(SNR, gamma) / (SNR + 1)``. Finite at SNR = 0 (zero-terminal-SNR schedules).
    """
    if gamma is None or gamma <= 0:
        raise ValueError(f"min_snr_gamma must be a positive number, got {gamma!r}")
    snr = snr.float()
    clipped = snr.clamp(max=gamma)
    if parameterization == "x0":
        return clipped
    if parameterization == "eps":
        return (gamma / snr).clamp(max=1.0)  # gamma / 0 = inf -> 1
    if parameterization == "v":
        return clipped / (snr + 1)
    raise ValueError(f"unknown parameterization {parameterization!r}")


def offset_noise(shape, strength: float, *, like: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise plus ``strength`` times a per-(sample, channel) normal offset, which
    lets the model change the mean brightness of an image (the "offset noise" trick)."""
    noise = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    if strength:
        offset = torch.randn(shape[:2], generator=generator, device=like.device, dtype=like.dtype)
        noise = noise + strength * offset.reshape(*shape[:2], *([1] * (len(shape) - 2)))
    return noise


def hybrid_vlb_term(schedule: DiffusionSchedule, prediction: torch.Tensor, variance_values: torch.Tensor,
                    x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, parameterization: str,
                    variance_type: str) -> torch.Tensor:
    """Per-sample ``T * L_t`` in bits/dim, an unbiased estimate of the whole bound ``L_vlb``.

    The mean is built from ``prediction.detach()`` (the stop-gradient of Improved DDPM Sec. 3.1),
    so only the variance output learns from this term; the mean is trained by
    ``L_simple`` alone. ``L_t`` is the KL of DDPM Eq. (5) for ``t > 0`` and the discretised
    decoder NLL (DDPM Eq. 13) at ``t = 0``. Scaling by ``T`` makes ``lambda = 1e-3`` the
    Improved-DDPM setting whatever the number of timesteps.
    """
    if variance_type not in ("learned", "learned_range"):
        raise ValueError(f"the hybrid loss needs a learned variance, got variance_type={variance_type!r}")
    frozen_mean_output = torch.cat([prediction.detach().float(), variance_values.float()], dim=1)
    out = p_mean_variance(schedule, frozen_mean_output, x_t.float(), t, parameterization, variance_type)
    terms = vlb_terms(schedule, x0.float(), x_t.float(), t, out["mean"], out["log_variance"])
    return schedule.num_timesteps * terms


def snr_at(schedule: DiffusionSchedule, t: torch.Tensor) -> torch.Tensor:
    """Per-sample SNR ``a / (1 - a)`` (float32) at 0-based timesteps ``t``."""
    return extract(schedule.snr, t, (t.shape[0],), dtype=torch.float32)
