"""ODE/SDE solvers in sigma space, the k-diffusion family (Karras et al. 2022; Lu et al. 2022).

Each solver is one function ``sample_X(denoiser, x, sigmas, cond=None, *, ..., generator=None,
callback=None) -> x`` that starts from ``x`` at ``sigmas[0]`` (variance-exploding: ``x = x0 +
sigmas[0] eps``) and walks the descending ``sigmas`` (last entry 0, see :mod:`ldm.samplers.sigmas`).
``denoiser(x, sigma, cond) -> x0`` is all they see (:mod:`ldm.samplers.denoiser`); ``sigma`` is
passed as a ``[B]`` tensor. The probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. Eq. 3 with ``s(t) = 1``, ``sigma(t) = t``). ``callback(i, sigma, x, denoised)`` runs
after every step (``sigma = sigmas[i]``, ``x`` now at ``sigmas[i+1]``); a tensor it returns replaces ``x``.
Noise comes from ``generator`` (a CPU generator gives the same noise on any device), one ``randn`` of ``x``'s
shape per noisy step.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import randn


def _call(denoiser, x: torch.Tensor, sigma: float, cond) -> torch.Tensor:
    return denoiser(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64, device=x.device), cond)


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. Eq. 3 / Alg. 1 line 4)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step: deterministic to ``sigma_down``, then noise of
    std ``sigma_up`` with ``sigma_down^2 + sigma_up^2 = sigma_to^2``;
    ``sigma_up = min(sigma_to, eta sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2))``
    (the DDPM posterior std in sigma space for ``eta = 1``)."""
    if sigma_to == 0.0 or eta == 0.0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def _churn(x, sigma, n, churn, s_tmin, s_tmax, s_noise, generator):
    """Karras et al. Alg. 2 lines 4-6: raise the noise level to ``sigma_hat = sigma (1 + gamma)``,
    ``gamma = min(churn / n, sqrt(2) - 1)`` inside ``[s_tmin, s_tmax]``."""
    gamma = min(churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0.0:
        return x, sigma
    sigma_hat = sigma * (1.0 + gamma)
    return x + _noise(x, generator) * s_noise * math.sqrt(sigma_hat**2 - sigma**2), sigma_hat


def _after_step(callback, i, sigma, x, denoised):
    """Run ``callback(i, sigma, x, denoised)``; a returned tensor replaces ``x`` (inpainting uses this)."""
    if callback is None:
        return x
    replaced = callback(i, sigma, x, denoised)
    return x if replaced is None else replaced


def _floats(sigmas) -> list[float]:
    return [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64)]


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, cond=None, *, churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = math.inf, s_noise: float = 1.0, generator=None, callback: Callable | None = None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 2 without the 2nd-order
    correction; ``churn > 0`` adds its stochastic noise injection)."""
    s = _floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, s[i], n, churn, s_tmin, s_tmax, s_noise, generator)
        denoised = _call(denoiser, x, sigma_hat, cond)
        x = x + to_d(x, sigma_hat, denoised) * (s[i + 1] - sigma_hat)
        x = _after_step(callback, i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, cond=None, *, churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = math.inf, s_noise: float = 1.0, generator=None, callback: Callable | None = None):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1; Alg. 2 with ``churn > 0``): an Euler step,
    then the trapezoidal correction with the derivative at the end point; Euler on the last step
    (``sigma_next = 0``). Two model calls per step but the last."""
    s = _floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, s[i], n, churn, s_tmin, s_tmax, s_noise, generator)
        denoised = _call(denoiser, x, sigma_hat, cond)
        d = to_d(x, sigma_hat, denoised)
        dt = s[i + 1] - sigma_hat
        if s[i + 1] == 0.0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s[i + 1], _call(denoiser, x_2, s[i + 1], cond))
            x = x + (d + d_2) / 2 * dt
        x = _after_step(callback, i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, cond=None, *, eta: float = 1.0, s_noise: float = 1.0,
                           generator=None, callback: Callable | None = None):
    """Ancestral sampling with Euler steps ("Euler a"): an Euler step to ``sigma_down``, then fresh noise
    of std ``sigma_up`` (:func:`ancestral_step`); ``eta = 0`` is :func:`sample_euler`."""
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        if sigma_up > 0.0:
            x = x + _noise(x, generator) * s_noise * sigma_up
        x = _after_step(callback, i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, cond=None, *, generator=None, callback: Callable | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2) in ``t = -log sigma`` (= log-SNR):
    ``x' = (sigma'/sigma) x - expm1(-h) D_i`` with ``h = t' - t``, ``D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``,
    ``r = h_{i-1}/h``; 1st order (DDIM) on the first step and on the step to ``sigma = 0``. Expanding
    ``D_i`` gives ``x' = (sigma'/sigma) x + g x0_i + (g / 2r) (x0_i - x0_{i-1})``, ``g = -expm1(-h)``:
    :func:`sample_dpmpp_2m_sde` with ``eta = 0``, which is what runs."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, cond, eta=0.0, generator=generator, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, cond=None, *, eta: float = 1.0, s_noise: float = 1.0,
                        generator=None, callback: Callable | None = None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", Sec. 5 / Eq. for SDE-DPM-Solver++2M,
    midpoint form): with ``h = t' - t`` and ``eta_h = eta h``,
    ``x' = (sigma'/sigma) e^{-eta_h} x + (1 - e^{-h-eta_h}) x0 + 0.5 (1 - e^{-h-eta_h}) (x0 - x0_prev) / r
    + sigma' sqrt(1 - e^{-2 eta_h}) s_noise z``; ``eta = 0`` is the ODE solver's midpoint variant."""
    s = _floats(sigmas)
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        if s[i + 1] == 0.0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            gain = -math.expm1(-h - eta_h)
            x = (s[i + 1] / s[i]) * math.exp(-eta_h) * x + gain * denoised
            if old_denoised is not None:
                x = x + 0.5 * gain * (h / h_last) * (denoised - old_denoised)
            if eta > 0.0:
                x = x + _noise(x, generator) * s[i + 1] * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise
            h_last = h
        old_denoised = denoised
        x = _after_step(callback, i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, cond=None, *, eta: float = 1.0, s_noise: float = 1.0,
                              generator=None, callback: Callable | None = None):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Alg. 1, singlestep 2nd order with
    ``r = 1/2``): a DPM-Solver++ step to ``sigma_down`` through the midpoint in ``t = -log sigma``,
    then noise of std ``sigma_up`` (:func:`ancestral_step`); Euler on the step to ``sigma = 0``."""
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0.0:
            x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        else:
            h = math.log(s[i]) - math.log(sigma_down)
            sigma_mid = math.exp(-(-math.log(s[i]) + 0.5 * h))
            x_2 = (sigma_mid / s[i]) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = _call(denoiser, x_2, sigma_mid, cond)
            x = (sigma_down / s[i]) * x - math.expm1(-h) * denoised_2
        if sigma_up > 0.0:
            x = x + _noise(x, generator) * s_noise * sigma_up
        x = _after_step(callback, i, s[i], x, denoised)
    return x


_GAUSS_NODES, _GAUSS_WEIGHTS = (torch.tensor(v, dtype=torch.float64) for v in (
    [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526],
    [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538]))


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """The linear multistep weights ``c_j = int_{sigma_i}^{sigma_{i+1}} prod_{k != j} (s - sigma_{i-k}) /
    (sigma_{i-j} - sigma_{i-k}) ds`` for ``j = 0 .. order-1`` (Lagrange interpolation of the last
    ``order`` derivatives, integrated exactly by 4-point Gauss-Legendre: the integrand has degree < 4)."""
    if order > 4:
        raise ValueError(f"lms order must be <= 4, got {order}")
    a, b = sigmas[i], sigmas[i + 1]
    nodes = (b - a) / 2 * _GAUSS_NODES + (a + b) / 2
    coeffs = []
    for j in range(order):
        basis = torch.ones_like(nodes)
        for k in range(order):
            if k != j:
                basis = basis * (nodes - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        coeffs.append(float((b - a) / 2 * (_GAUSS_WEIGHTS * basis).sum()))
    return coeffs


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, cond=None, *, order: int = 4, generator=None, callback: Callable | None = None):
    """Linear multistep (Adams-Bashforth in ``sigma``, as k-diffusion's ``sample_lms``): the derivatives
    ``(x - D)/sigma`` of the last ``order`` steps, combined with :func:`lms_coefficients`."""
    s = _floats(sigmas)
    history: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        history.append(to_d(x, s[i], denoised))
        del history[:-order]
        coeffs = lms_coefficients(s, i, min(i + 1, order))
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history)))
        x = _after_step(callback, i, s[i], x, denoised)
    return x


K_SAMPLERS = {
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2s_a": sample_dpmpp_2s_ancestral,
    "lms": sample_lms,
}
#: the options each solver takes besides the denoiser, x, sigmas and cond
K_SAMPLER_OPTIONS = {
    "euler": ("churn", "s_tmin", "s_tmax", "s_noise"),
    "heun": ("churn", "s_tmin", "s_tmax", "s_noise"),
    "euler_a": ("eta", "s_noise"),
    "dpmpp_2m": (),
    "dpmpp_2m_sde": ("eta", "s_noise"),
    "dpmpp_2s_a": ("eta", "s_noise"),
    "lms": ("order",),
}
