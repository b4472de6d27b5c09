"""Consuming cached batches: the latent sample ``z = mean + std * eps`` (the KL posterior sample of
LDM Sec. 3.1); whether a batch carries latent moments is the contract of :mod:`ldm.data.contracts`."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ldm.data.contracts import cached_moments, has_cached_latents  # noqa: F401  (re-exported)
from ldm.data.latent_cache.format import MEAN_KEY


def sample_cached_latent(batch: Mapping, n: int | None = None, device: str | torch.device | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The unscaled latent sample ``z = mean + std * eps`` of a cached batch (multiply by the model's
    ``scale_factor`` before diffusion). Raises KeyError for a batch without cached latents."""
    moments = cached_moments(batch, n, device)
    if moments is None:
        raise KeyError(f"batch has no {MEAN_KEY!r}: not a latent-cache batch (keys: {sorted(batch)})")
    mean, std = moments
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise
