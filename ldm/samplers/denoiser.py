"""Denoisers in sigma space: ``D(x, sigma, cond) -> x0`` with ``x = x0 + sigma eps``.

The samplers of :mod:`ldm.samplers.k_samplers` see only ``D``. :class:`DiscreteDenoiser` wraps a
discrete-time model ``model(x_t, t, cond)`` (output in ``eps`` / ``x0`` / ``v``) in the
variance-exploding view (Karras et al. 2022, Sec. 2 and Table 1 "VP"):
``x_t = x / sqrt(1 + sigma^2)`` (:func:`~ldm.diffusion.gaussian.vp_from_sigma_ve`), the model is
evaluated at the timestep whose sigma matches -- fractional, by linear interpolation of
``log sigma`` between the two neighbouring training steps (as k-diffusion and diffusers do) -- and
its output becomes ``x0`` through the one conversion :func:`~ldm.diffusion.gaussian.x0_eps_from_output`.

Guidance wraps a denoiser: :func:`~ldm.samplers.guidance.classifier_free_guidance` applies to
``D`` unchanged (it only stacks ``x``, the noise level and the condition; CFG on x0 equals CFG on
eps or v at a fixed ``(x, sigma)`` because the conversion is affine), and
:func:`gradient_guided_denoiser` is LDM Appx C Eq. (16) in sigma space.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..diffusion.gaussian import (
    check_parameterization,
    vp_from_sigma_ve,
    x0_eps_from_output,
)
from ..diffusion.reverse import check_variance_type, split_variance_output, threshold_x0
from ..diffusion.schedule import DiffusionSchedule, as_schedule

SigmaDenoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a ``[B]`` tensor on ``x``'s device, float64 for the timestep lookup."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


def _expand(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class DiscreteDenoiser:
    """``D(x, sigma, cond) -> x0`` for a model trained on the discrete grid of ``schedule``.

    ``model(x_t, t, cond)`` gets ``t`` as a LongTensor when every requested sigma lies on the grid
    (within 1e-4 of a step) or ``quantize=True`` (round to the nearest step), else as a float64 tensor
    of fractional timesteps. Learned-variance outputs (2C channels) are split and the variance dropped.
    ``clip_denoised`` / ``dynamic_threshold`` act on the x0 estimate as in the other samplers.
    """

    def __init__(self, model: Callable, schedule: DiffusionSchedule | torch.Tensor, parameterization: str = "eps",
                 variance_type: str = "fixed_small", clip_denoised: bool = False,
                 dynamic_threshold: float | None = None, quantize: bool = False):
        self.model = model
        self.schedule = as_schedule(schedule)
        self.parameterization = check_parameterization(parameterization)
        self.variance_type = check_variance_type(variance_type)
        self.clip_denoised = bool(clip_denoised)
        self.dynamic_threshold = dynamic_threshold
        self.quantize = bool(quantize)
        self.log_sigmas = self.schedule.sigmas.log()  # ascending in t

    @property
    def sigma_min(self) -> float:
        return float(self.schedule.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.schedule.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timesteps: ``log sigma`` interpolated linearly between neighbouring steps, clamped
        to ``[0, T-1]``."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64, device=sigma.device).clamp(min=1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, log_sigmas.numel() - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        return low.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_t` (log-linear interpolation of the table)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.log_sigmas.numel() - 1)
        log_sigmas = self.log_sigmas.to(t.device)
        low = t.floor().long().clamp(max=log_sigmas.numel() - 2)
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        t = self.sigma_to_t(sigma)
        rounded = t.round()
        if self.quantize or bool(((t - rounded).abs() < 1e-4).all()):
            return rounded.long()
        return t

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        sigma = _batch_sigma(sigma, x)
        alpha, sigma_vp = vp_from_sigma_ve(_expand(sigma, x))
        x_t = x * alpha
        out = self.model(x_t, self.timesteps(sigma), cond)
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"model returned batch {out.shape[0]} for input batch {x.shape[0]}")
        prediction, _ = split_variance_output(out, self.variance_type)
        x0, _ = x0_eps_from_output(prediction, x_t, alpha, sigma_vp, self.parameterization)
        return threshold_x0(x0, self.clip_denoised, self.dynamic_threshold)


def gradient_guided_denoiser(denoiser: SigmaDenoiser, log_likelihood_fn: Callable[[torch.Tensor], torch.Tensor],
                             decode: Callable | None = None, scale: float = 1.0,
                             through_model: bool = True) -> SigmaDenoiser:
    """Post-hoc guidance (LDM Appx C Eq. 16-17) in sigma space:
    ``D'(x, sigma) = D(x, sigma) + scale sigma^2 grad_x log p(y | decode(D(x, sigma)))``.

    This is :func:`~ldm.samplers.guidance.gradient_guidance`'s ``eps' = eps - sqrt(1-a) scale
    grad_{x_t} log p`` rewritten with ``x = x_t / sqrt(a)`` and ``x0 = x - sigma eps`` (Tweedie:
    ``D = x + sigma^2 score``). ``through_model=False`` differentiates only ``x0 = x - sigma eps`` with
    eps held fixed, i.e. takes the gradient at x0 (no backward pass through the network).
    """
    def guided(x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        sigma_b = _batch_sigma(sigma, x)
        with torch.enable_grad():
            if through_model:
                x_in = x.detach().requires_grad_(True)
                x0 = denoiser(x_in, sigma_b, cond)
            else:
                with torch.no_grad():
                    x0_fixed = denoiser(x, sigma_b, cond)
                x_in = x0_fixed.detach().requires_grad_(True)
                x0 = x_in
            image = decode(x0) if decode is not None else x0
            grad, = torch.autograd.grad(log_likelihood_fn(image).sum(), x_in)
        return x0.detach() + float(scale) * _expand(sigma_b, x) ** 2 * grad

    return guided
