"""DDIM (Song et al. 2021, as used by LDM): the non-Markovian sampler with stochasticity ``eta``.

Step from level ``a`` to ``a'`` with x0_hat, eps_hat from the model:
``sigma = eta * sqrt((1-a')/(1-a)) * sqrt(1 - a/a')``,
``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``.
``eta = 0`` is the deterministic probability-flow ODE discretisation, ``eta = 1`` matches
ancestral DDPM's variance. :meth:`DDIMSampler.encode` runs the ODE backwards (x0 -> x_T).
"""
from __future__ import annotations

import math

import torch

from ..diffusion.gaussian import q_sample_at, x0_eps_from_output
from .base import Sampler, randn


def ddim_update(x0: torch.Tensor, eps: torch.Tensor, a_next: float, sigma: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z`` (shared by DDIM and PLMS)."""
    direction = math.sqrt(max(1.0 - a_next - sigma**2, 0.0))
    x_next = math.sqrt(a_next) * x0 + direction * eps
    if sigma > 0.0:
        x_next = x_next + sigma * randn(x0.shape, generator, x0.device, x0.dtype)
    return x_next


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, schedule, parameterization: str = "eps", steps: int = 50, eta: float = 0.0, **options):
        super().__init__(schedule, parameterization, steps=steps, **options)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)

    def sigma(self, k: int) -> float:
        a, a_next = self.levels[k], self.levels[k + 1]
        if self.eta == 0.0:
            return 0.0
        return self.eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)

    def step(self, denoise, x, k, cond, state, generator):
        x0, eps = self.predict(denoise, x, k, cond)
        return ddim_update(x0, eps, self.levels[k + 1], self.sigma(k), generator), x0

    @torch.no_grad()
    def encode(self, denoise, x0: torch.Tensor, cond=None, strength: float = 1.0,
               callback=None) -> torch.Tensor:
        """Deterministic DDIM inversion: integrate the eta=0 ODE from x0 up to the noise level
        at which :meth:`sample` with the same ``strength`` starts; ``sample(x_T=encoded,
        strength=strength)`` then decodes it.

        Each step from level ``a`` to the next-higher ``a'`` evaluates the model at the target
        timestep (the original's convention, mirroring the decoding step it inverts).
        """
        start = self.start_index(strength)
        x = x0
        # ascending: from the final level up to levels[start]
        for k in range(self.num_steps - 1, start - 1, -1):
            a_cur, a_next = self.levels[k + 1], self.levels[k]
            prediction, _ = self.model_output(denoise, x, k, cond)
            _, eps = x0_eps_from_output(prediction, x, math.sqrt(a_next), math.sqrt(1 - a_next),
                                        self.parameterization)
            x0_hat, _ = x0_eps_from_output(eps, x, math.sqrt(a_cur), math.sqrt(1 - a_cur), "eps")
            x = q_sample_at(x0_hat, math.sqrt(a_next), math.sqrt(1 - a_next), eps)
            if callback is not None:
                callback(k, self.sample_timesteps[k], x, x0_hat)
        return x
