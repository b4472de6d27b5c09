"""Guidance as wrappers around a denoiser ``denoise(x_t, t, cond)``; samplers never know.

- :func:`classifier_free_guidance` (Ho & Salimans): one forward at double batch with the
  condition and the null condition stacked, ``out = u + scale (c - u)``; optional guidance
  rescale (Lin et al. 2023, Sec. 3.4).
- :func:`gradient_guidance` (LDM Appx C Eq. 16-17): a differentiable log-likelihood of the
  (decoded) x0 estimate steers the eps prediction.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..diffusion.gaussian import check_parameterization, output_from_x0_eps, x0_eps_from_output
from ..diffusion.schedule import DiffusionSchedule, as_schedule, extract


def condition_batch_size(cond) -> int | None:
    """The batch size of a condition: of its first tensor (a dict's or list's, searched in order), or None."""
    if isinstance(cond, torch.Tensor):
        return cond.shape[0]
    if isinstance(cond, dict):
        for v in cond.values():
            b = condition_batch_size(v)
            if b is not None:
                return b
    if isinstance(cond, (list, tuple)):
        for v in cond:
            b = condition_batch_size(v)
            if b is not None:
                return b
    return None


def stack_conditions(cond, null_cond, batch: int):
    """Stack ``cond`` over ``null_cond`` along the batch for tensors, dicts and lists of tensors.

    A null condition with batch 1 is broadcast to ``batch`` rows. Structures must match.
    """
    if isinstance(cond, torch.Tensor):
        if not isinstance(null_cond, torch.Tensor):
            raise TypeError(f"condition is a tensor but the null condition is {type(null_cond).__name__}")
        null = null_cond.to(device=cond.device, dtype=cond.dtype)
        if null.shape[0] == 1 and cond.shape[0] != 1:
            null = null.expand(cond.shape[0], *null.shape[1:])
        if null.shape != cond.shape:
            raise ValueError(f"null condition shape {tuple(null.shape)} does not match condition {tuple(cond.shape)}")
        return torch.cat([cond, null], dim=0)
    if isinstance(cond, dict):
        if not isinstance(null_cond, dict) or set(cond) != set(null_cond):
            raise ValueError(f"null condition keys {sorted(null_cond) if isinstance(null_cond, dict) else null_cond!r} "
                             f"do not match condition keys {sorted(cond)}")
        return {key: stack_conditions(cond[key], null_cond[key], batch) for key in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(null_cond, (list, tuple)) or len(null_cond) != len(cond):
            raise ValueError("list condition and null condition must have the same length")
        return type(cond)(stack_conditions(c, n, batch) for c, n in zip(cond, null_cond))
    if cond is None and null_cond is None:
        return None
    raise TypeError(f"cannot stack a condition of type {type(cond).__name__}")


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the guided output's per-sample std to the conditional one, mixed by ``rescale``
    (Lin et al. 2023, Alg. 2)."""
    dims = tuple(range(1, guided.ndim))
    std_cond = cond_out.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return rescale * rescaled + (1.0 - rescale) * guided


def classifier_free_guidance(denoise: Callable, null_cond: Any, scale: float, rescale: float = 0.0,
                             learned_variance: bool = False) -> Callable:
    """A denoiser computing ``u + scale (c - u)`` from ONE forward on ``[cond; null]``.

    ``scale == 1`` calls the conditional model alone. ``learned_variance=True`` guides only the
    first half of the channels and keeps the conditional variance values.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    scale = float(scale)

    def guided(x: torch.Tensor, t: torch.Tensor, cond):
        if scale == 1.0:
            return denoise(x, t, cond)
        batch = x.shape[0]
        both = denoise(torch.cat([x, x]), torch.cat([t, t]), stack_conditions(cond, null_cond, batch))
        cond_out, uncond_out = both[:batch], both[batch:]
        extra = None
        if learned_variance:
            cond_out, extra = cond_out.chunk(2, dim=1)
            uncond_out, _ = uncond_out.chunk(2, dim=1)
        out = uncond_out + scale * (cond_out - uncond_out)
        if rescale > 0.0:
            out = rescale_guidance(out, cond_out, rescale)
        return out if extra is None else torch.cat([out, extra], dim=1)

    guided.scale = scale
    return guided


def gradient_guidance(denoise: Callable, log_likelihood_fn: Callable[[torch.Tensor], torch.Tensor],
                      schedule: DiffusionSchedule | torch.Tensor, decode: Callable | None = None,
                      scale: float = 1.0, parameterization: str = "eps",
                      through_model: bool = True) -> Callable:
    """Post-hoc guidance by a differentiable log-likelihood (LDM Appx C Eq. 16-17).

    ``eps_hat = eps - sqrt(1 - a_t) * scale * grad_{x_t} log p(y | D(x0_hat(x_t)))``, where
    ``D`` is ``decode`` (identity if None) and ``log_likelihood_fn(image) -> [B]`` (or a scalar)
    is e.g. Eq. (17) ``-0.5 ||y - T(D(z0))||^2`` for super-resolution. The minus sign follows
    from eps = -sqrt(1 - a) * score: adding grad log p(y|x_t) to the score lowers eps (LDM writes
    Eq. 16 with its own sign convention). ``through_model=False`` holds the eps estimate
    constant and differentiates only DDPM Eq. (15), x0 = (x_t - sqrt(1-a) eps)/sqrt(a), so the
    gradient needs no backward pass through the network (cheaper, cruder).
    The wrapper returns the corrected output in the model's own parameterisation.
    """
    schedule = as_schedule(schedule)
    check_parameterization(parameterization)

    def guided(x: torch.Tensor, t: torch.Tensor, cond):
        alpha = extract(schedule.sqrt_alphas_cumprod, t, x)
        sigma = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            if through_model:
                x0, eps = x0_eps_from_output(denoise(x_in, t, cond), x_in, alpha, sigma, parameterization)
            else:
                with torch.no_grad():
                    _, eps = x0_eps_from_output(denoise(x, t, cond), x, alpha, sigma, parameterization)
                x0, _ = x0_eps_from_output(eps, x_in, alpha, sigma, "eps")
            image = decode(x0) if decode is not None else x0
            log_lik = log_likelihood_fn(image).sum()
            grad, = torch.autograd.grad(log_lik, x_in)
        eps = eps.detach() - sigma * float(scale) * grad
        x0, _ = x0_eps_from_output(eps, x, alpha, sigma, "eps")
        return output_from_x0_eps(x0, eps, alpha, sigma, parameterization)

    return guided
