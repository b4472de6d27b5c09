"""Variational bound terms and bits/dim (DDPM Eq. 5, 8, 12, 13; with learned variances, Improved DDPM Sec. 3.1).

DDPM Eq. (5) splits the negative ELBO into
``L_T = KL(q(x_T|x0) || N(0, I))`` (the prior term), ``L_{t-1} = KL(q(x_{t-1}|x_t,x0) ||
p(x_{t-1}|x_t))`` for ``t > 1`` and the decoder term ``L_0 = -log p(x0|x1)`` (Eq. 13). With
0-based timesteps, index ``t = 0`` holds the decoder term and ``t >= 1`` the KL terms.
Every ``*_bpd`` value is in bits per dimension: nats averaged over the non-batch dimensions,
divided by ln 2.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .gaussian import q_posterior, q_sample
from .reverse import check_variance_type, fixed_large_log_variance, p_mean_variance
from .schedule import DiffusionSchedule, extract

LN2 = math.log(2.0)
#: half the width of one 8-bit bin on [-1, 1] (bins are 2/255 wide, DDPM Eq. 13)
HALF_BIN = 1.0 / 255.0


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    logvar1, logvar2 = (torch.as_tensor(x, dtype=tensor.dtype, device=tensor.device) for x in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_diff_ndtr(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, accurate in both tails."""
    # Reflect so both arguments sit in the lower tail, where Phi is computed without cancellation.
    flip = (upper + lower) > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    # log(e^a - e^b) = a + log(1 - e^(b-a))
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-12)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data under a discretised Gaussian (DDPM Eq. 13).

    ``x`` lies on the 8-bit grid mapped to [-1, 1]; each value owns the bin
    ``[x - 1/255, x + 1/255]``, except that the lowest bin extends to -inf and the highest to
    +inf. ``log_scales`` is the log standard deviation (0.5 * log variance).
    """
    if x.shape != means.shape:
        raise ValueError(f"x {tuple(x.shape)} and means {tuple(means.shape)} must have the same shape")
    inv_std = torch.exp(-log_scales)
    upper = torch.where(x > 1 - HALF_BIN, torch.full_like(x, math.inf), (x - means + HALF_BIN) * inv_std)
    lower = torch.where(x < -1 + HALF_BIN, torch.full_like(x, -math.inf), (x - means - HALF_BIN) * inv_std)
    # At the open edges one of the CDFs is exactly 0 or 1.
    log_upper_only = torch.special.log_ndtr(upper)          # lower = -inf
    log_lower_only = torch.special.log_ndtr(-lower)         # upper = +inf
    both_finite = torch.isfinite(upper) & torch.isfinite(lower)
    safe_upper = torch.where(both_finite, upper, torch.ones_like(upper))
    safe_lower = torch.where(both_finite, lower, torch.zeros_like(lower))
    log_mid = _log_diff_ndtr(safe_upper, safe_lower)
    out = torch.where(torch.isinf(lower), log_upper_only, torch.where(torch.isinf(upper), log_lower_only, log_mid))
    return out


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def prior_bpd(schedule: DiffusionSchedule, x0: torch.Tensor) -> torch.Tensor:
    """``L_T = KL(q(x_T|x0) || N(0, I))`` in bits/dim, per sample (DDPM Eq. 5, first term)."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    logvar = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
    return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / LN2


def vlb_terms(schedule: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              model_mean: torch.Tensor, model_log_variance: torch.Tensor) -> torch.Tensor:
    """Per-sample VLB term in bits/dim: the decoder NLL where ``t == 0`` (DDPM Eq. 13), else
    ``KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))`` (DDPM Eq. 5).

    For the hybrid loss (Improved DDPM Sec. 3.1, stop-gradient on the mean) pass a detached ``model_mean`` so only the
    variance learns from this term.
    """
    true_mean, _, true_logvar = q_posterior(schedule, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_log_variance)) / LN2
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)) / LN2
    return torch.where(t == 0, decoder_nll, kl)


def elbo_mse_weights(schedule: DiffusionSchedule, parameterization: str = "eps",
                     variance_type: str = "fixed_small") -> torch.Tensor:
    """Per-timestep weights w_t with ``L_{t-1} = w_t * ||target - prediction||^2`` (nats per element).

    From DDPM Eq. (8): ``L = ||mu-tilde - mu_theta||^2 / (2 sigma^2)``. The mean error is
    ``coef1 * (x0 - x0_hat)`` and ``x0 - x0_hat`` is ``sqrt((1-a)/a) (eps_hat - eps)`` (eps) or
    ``sqrt(1-a) (v_hat - v)`` (v), giving
    eps: ``beta^2 / (2 sigma^2 alpha (1 - a))`` (DDPM Eq. 12); x0: ``coef1^2 / (2 sigma^2)``;
    v: ``coef1^2 (1 - a) / (2 sigma^2)``. sigma^2 = 0 at t=0 (fixed_small), where the term is
    really the decoder likelihood; as in the original, w_0 is set to w_1 there.
    """
    check_variance_type(variance_type)
    if variance_type == "fixed_small":
        sigma2 = schedule.posterior_variance
    elif variance_type == "fixed_large":
        sigma2 = torch.exp(fixed_large_log_variance(schedule))
    else:
        raise ValueError("elbo_mse_weights needs a fixed variance (fixed_small or fixed_large)")
    ac = schedule.alphas_cumprod
    coef1_sq = schedule.posterior_mean_coef1 ** 2
    if parameterization == "eps":
        w = schedule.betas ** 2 / (2 * sigma2 * schedule.alphas * (1 - ac))
    elif parameterization == "x0":
        w = coef1_sq / (2 * sigma2)
    elif parameterization == "v":
        w = coef1_sq * (1 - ac) / (2 * sigma2)
    else:
        raise ValueError(f"unknown parameterization {parameterization!r}")
    w = w.clone()
    w[0] = w[1]
    return w


Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


@torch.no_grad()
def bits_per_dim(denoise: Denoiser, schedule: DiffusionSchedule, x0: torch.Tensor, cond=None,
                 parameterization: str = "eps", variance_type: str = "fixed_small",
                 clip_denoised: bool = False, generator: torch.Generator | None = None) -> dict:
    """Negative ELBO of ``x0`` in bits/dim, summed over every timestep (DDPM Eq. 5).

    Runs the denoiser once per timestep (T forwards per batch), so evaluate on modest batches.
    Returns per-sample tensors: ``total_bpd`` [B], ``prior_bpd`` [B], ``vb`` [B, T] (term per
    0-based t), ``x0_mse`` [B, T] and ``eps_mse`` [B, T]. ``x0`` must be 8-bit data in [-1, 1].
    """
    B, T = x0.shape[0], schedule.num_timesteps
    vb, x0_mse, eps_mse = [], [], []
    for step in range(T):
        t = torch.full((B,), step, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) \
            if generator is not None else torch.randn_like(x0)
        x_t = q_sample(schedule, x0, t, noise)
        out = p_mean_variance(schedule, denoise(x_t, t, cond), x_t, t, parameterization,
                              variance_type, clip_denoised)
        vb.append(vlb_terms(schedule, x0, x_t, t, out["mean"], out["log_variance"]))
        x0_mse.append(mean_flat((out["pred_x0"] - x0) ** 2))
        eps_mse.append(mean_flat((out["pred_eps"] - noise) ** 2))
    vb_t = torch.stack(vb, dim=1)
    prior = prior_bpd(schedule, x0)
    return {"total_bpd": vb_t.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb_t,
            "x0_mse": torch.stack(x0_mse, dim=1), "eps_mse": torch.stack(eps_mse, dim=1)}
