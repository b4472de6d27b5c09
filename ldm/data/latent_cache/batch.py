"""Consuming cached batches: whether a batch carries latent moments, and the latent sample
``z = mean + std * eps`` (the KL posterior sample of LDM Sec. 3.1). Light: imports only torch."""
from __future__ import annotations

from typing import Mapping

import torch

from ldm.data.latent_cache.format import MEAN_KEY, STD_KEY


def has_cached_latents(batch: Mapping) -> bool:
    """Whether a batch carries cached latent moments instead of images."""
    return isinstance(batch, Mapping) and MEAN_KEY in batch


def cached_moments(batch: Mapping, n: int | None = None, device: str | torch.device | None = None):
    """``(mean, std)`` float tensors from a cached batch (first ``n`` rows), or None for an image batch."""
    if not has_cached_latents(batch):
        return None
    mean = batch[MEAN_KEY][:n].float()
    std = batch[STD_KEY][:n].float() if STD_KEY in batch else torch.zeros_like(mean)
    return (mean, std) if device is None else (mean.to(device), std.to(device))


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
