"""Diagonal Gaussian posterior q(z|x) of the KL-regularised autoencoder (LDM Sec. 3.1, Sec. G).

The encoder outputs ``2c`` channels: mean and log-variance. The KL regulariser (LDM Eq. (25),
``L_reg``) is ``KL(q(z|x) || N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²)`` summed over C, H, W.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class DiagonalGaussianDistribution:
    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.shape[1] % 2:
            raise ValueError("DiagonalGaussianDistribution needs an even channel count (mean, logvar), "
                             f"got {parameters.shape[1]}")
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)  # keeps exp() finite, as in the original
        self.deterministic = deterministic
        if deterministic:
            self.logvar = torch.zeros_like(self.mean)  # unused; std/var below are exactly zero
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """KL(self || other) per sample; ``other=None`` is the standard normal N(0, I)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=list(dims))
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=list(dims),
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """−log q(sample) per sample: ½ Σ (log 2π + log σ² + (x − μ)² / σ²)."""
        if self.deterministic:
            return torch.zeros(sample.shape[0], device=sample.device, dtype=sample.dtype)
        return 0.5 * torch.sum(np.log(2.0 * np.pi) + self.logvar + (sample - self.mean).pow(2) / self.var,
                               dim=list(dims))
