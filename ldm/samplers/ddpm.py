"""Ancestral DDPM sampling (DDPM Alg. 2; LDM Appx B Eq. 10-12), on any subsequence of timesteps.

A step from level ``a`` (timestep t_k) to ``a'`` (the next visited level) uses the posterior
q(x' | x, x0) of the two-level chain (DDPM Eq. 6-7 with beta = 1 - a/a'):
``mean = sqrt(a') beta/(1-a) x0_hat + sqrt(a/a') (1-a')/(1-a) x``,
``beta-tilde = beta (1-a')/(1-a)``. With every timestep visited (the default) this is exactly
DDPM Alg. 2; with fewer it is the respaced chain of Improved DDPM. Variance: ``fixed_small``
(beta-tilde), ``fixed_large`` (beta), ``learned`` (log variance from the model's extra
channels) or ``learned_range`` (Improved DDPM Eq. 15). No noise on the last step.
"""
from __future__ import annotations

import math

import torch

from ..diffusion.gaussian import interpolate_log_variance, posterior_coefficients
from .base import Sampler, randn


class DDPMSampler(Sampler):
    name = "ddpm"

    def __init__(self, schedule, parameterization: str = "eps", steps: int | None = None,
                 variance_type: str = "fixed_small", **options):
        super().__init__(schedule, parameterization, steps=steps, variance_type=variance_type, **options)

    def transition(self, k: int) -> dict:
        """Posterior coefficients of the step from level k to level k+1 (python floats, DDPM Eq. 7)."""
        a, a_next = self.levels[k], self.levels[k + 1]
        coef_x0, coef_xt, variance = posterior_coefficients(a, a_next)
        return {"coef_x0": coef_x0, "coef_xt": coef_xt, "beta": 1.0 - a / a_next, "posterior_variance": variance}

    def log_variance(self, c: dict, var_values: torch.Tensor | None):
        if self.variance_type == "fixed_small":
            return math.log(c["posterior_variance"])
        if self.variance_type == "fixed_large":
            return math.log(c["beta"])
        if self.variance_type == "learned":
            return var_values
        return interpolate_log_variance(var_values, math.log(c["beta"]), math.log(c["posterior_variance"]))

    def step(self, denoise, x, k, cond, state, generator):
        prediction, var_values = self.model_output(denoise, x, k, cond)
        x0, _ = self.to_x0_eps(prediction, x, k)
        c = self.transition(k)
        mean = c["coef_x0"] * x0 + c["coef_xt"] * x
        if k == self.num_steps - 1 or c["posterior_variance"] <= 0.0:
            return mean, x0
        log_var = self.log_variance(c, var_values)
        std = torch.exp(0.5 * log_var) if isinstance(log_var, torch.Tensor) else math.exp(0.5 * log_var)
        return mean + std * randn(x.shape, generator, x.device, x.dtype), x0
