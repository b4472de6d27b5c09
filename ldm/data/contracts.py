"""What the models may know about the data: the declared contracts between ``ldm.data`` and ``ldm.models``.

The models never import a dataset, a cache or a loader; they read batches through the names here
(the import rule of ``tests/test_import_rules.py``):

* a *latent batch* (what :class:`~ldm.data.latent_cache.LatentCacheDataset` yields, LDM Sec. 3.2:
  ``z = E(x)`` computed ahead of time) carries the first stage's unscaled latent moments under
  :data:`LATENT_MEAN_KEY` / :data:`LATENT_STD_KEY` instead of an image; :func:`cached_moments` reads
  them (``std`` is zero, and may be absent, for deterministic first stages);
* a dataset that was built by one particular first stage states it with
  :class:`FirstStageBound` (``verify_first_stage(first_stage)`` raises if it is another one);
  :func:`check_first_stage` calls it where a dataset has it;
* an inpainting batch's masked image is :func:`masked_image` of the image and its mask.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["LATENT_MEAN_KEY", "LATENT_STD_KEY", "FirstStageBound", "cached_moments", "check_first_stage",
           "has_cached_latents", "masked_image"]

#: batch key of the cached latent mean ``[B, C, h, w]`` (unscaled: before the model's ``scale_factor``)
LATENT_MEAN_KEY = "latent_mean"
#: batch key of the cached latent standard deviation (same shape; absent or zero: deterministic)
LATENT_STD_KEY = "latent_std"


@runtime_checkable
class FirstStageBound(Protocol):
    """A dataset whose items were computed by one first stage (a latent cache)."""

    def verify_first_stage(self, first_stage: Any) -> None:
        """Raise unless ``first_stage`` (a module, or the sha256 of its state dict) built this dataset."""


def check_first_stage(dataset: Any, first_stage: Any) -> None:
    """``dataset.verify_first_stage(first_stage)`` for a :class:`FirstStageBound` dataset; nothing otherwise."""
    if dataset is not None and first_stage is not None and isinstance(dataset, FirstStageBound):
        dataset.verify_first_stage(first_stage)


def has_cached_latents(batch: Mapping) -> bool:
    """Whether a batch carries cached latent moments instead of images."""
    return isinstance(batch, Mapping) and LATENT_MEAN_KEY in batch


def cached_moments(batch: Mapping, n: int | None = None, device: str | torch.device | None = None):
    """``(mean, std)`` float tensors from a latent batch (first ``n`` rows), or None for an image batch."""
    if not has_cached_latents(batch):
        return None
    mean = batch[LATENT_MEAN_KEY][:n].float()
    std = batch[LATENT_STD_KEY][:n].float() if LATENT_STD_KEY in batch else torch.zeros_like(mean)
    return (mean, std) if device is None else (mean.to(device), std.to(device))


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting model's input image: ``image * (1 - mask)`` with ``mask`` 1 on the region to
    fill (the fill becomes 0, mid-grey in [-1, 1]; LDM Sec. 4.5 / the original inpainting script)."""
    return image * (1.0 - mask.to(image.dtype))
