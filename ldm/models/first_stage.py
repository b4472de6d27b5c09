"""The frozen first stage of a latent diffusion model (LDM Sec. 3.1-3.2): images to scaled latents
``z = scale_factor * E(x)`` and back, latents read from a latent batch (:mod:`ldm.data.contracts`),
and ``scale_by_std`` (LDM Sec. G: rescale the latent to unit standard deviation,
``scale_factor = 1 / std(z)``, estimated at the start of training from ``scale_by_std_batches``
batches summed over all ranks; a buffer, saved with the model and never re-estimated once loaded).

First stage: any module with ``latent_moments(x) -> (mean, std)`` and ``decode_latent(z)`` (KL, VQ
interface, identity); a latent is ``mean + std * eps``. One that states ``downsampling_factor`` and
``image_channels`` (the autoencoders do; :class:`~ldm.models.autoencoder.IdentityFirstStage` states f = 1)
tells the model its sizes; for any other one :attr:`FirstStage.first_stage_factor` is measured by decoding
and the image channels are the latent's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ldm.data.contracts import cached_moments
from ldm.util import ConfigError, instantiate_from_config


def check_loaded_scale_factor(value) -> None:
    """A checkpoint's ``scale_factor`` must be finite: a NaN one (estimated from bad data by an older
    version) would make every later step non-finite, and a loaded factor is never re-estimated."""
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(
            f"the checkpoint holds scale_factor={value}, which is not finite (it was estimated from NaN/Inf data); "
            "it cannot be resumed. To re-estimate it from clean data, start a new run from these weights: "
            "main.py -b CONFIG -t model.params.ckpt_path=CKPT 'model.params.ignore_keys=[scale_factor]'")


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no gradients (a frozen first stage or conditioner)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class FirstStage:
    """First-stage methods of :class:`~ldm.models.latent_diffusion.LatentDiffusion` (a mixin)."""

    def instantiate_first_stage(self, config) -> None:
        try:
            model = config if isinstance(config, nn.Module) else \
                instantiate_from_config(config, node="first_stage_config")
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith("first_stage_config") else
                              f"first_stage_config: {message}") from err
        if model is None:
            raise ConfigError("first_stage_config must build a first stage (use IdentityFirstStage for pixel space)")
        self.first_stage_model = freeze(model)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor):
        """The first stage's own ``encode`` (a posterior for KL, the pre-quantisation latent for VQ)."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior) -> torch.Tensor:
        """A scaled latent from :meth:`encode_first_stage`'s output (a sample of a posterior, or the
        tensor itself), or from a ``(mean, std)`` pair."""
        if isinstance(encoder_posterior, tuple) and len(encoder_posterior) == 2:
            return self._scaled_latent(*encoder_posterior, sample=True)
        if isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        elif callable(getattr(encoder_posterior, "sample", None)):
            z = encoder_posterior.sample()
        else:
            raise TypeError(f"cannot get a latent from a {type(encoder_posterior).__name__}")
        return self.scale_factor * z

    @torch.no_grad()
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled ``(mean, std)`` of the first-stage latent of images ``x``."""
        first = self.first_stage_model
        if hasattr(first, "latent_moments"):
            mean, std = first.latent_moments(x)
        else:  # a plain module with the original encode(): posterior or tensor
            enc = first.encode(x)
            mean = enc.mean if hasattr(enc, "mean") and isinstance(enc.mean, torch.Tensor) else enc
            std = enc.std if hasattr(enc, "std") and isinstance(enc.std, torch.Tensor) else torch.zeros_like(mean)
        return mean.float(), std.float()

    @torch.no_grad()
    def batch_latent_moments(self, batch: Mapping, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled latent ``(mean, std)`` of a batch: read from a latent-cache batch (``latent_mean`` /
        ``latent_std``, the contract of :mod:`ldm.data.contracts`; no encoder runs), else encoded from
        ``batch[first_stage_key]``."""
        moments = cached_moments(batch, n, self.device)
        if moments is not None:
            return moments
        x = self.image_from_batch(batch, self.first_stage_key)[:n].to(self.device)
        return self.latent_moments(x)

    def _scaled_latent(self, mean: torch.Tensor, std: torch.Tensor, sample: bool) -> torch.Tensor:
        """``scale_factor * (mean + std * eps)`` (or the scaled mean with ``sample=False``)."""
        return self.scale_factor * (mean + std * torch.randn_like(mean) if sample else mean)

    def latents_from_batch(self, batch: Mapping, n: int | None = None, sample: bool = True) -> torch.Tensor:
        """Scaled latents of a batch (images or cached latents)."""
        return self._scaled_latent(*self.batch_latent_moments(batch, n), sample)

    @torch.no_grad()
    def encode_to_latent(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Scaled latents of images ``x``."""
        return self._scaled_latent(*self.latent_moments(x), sample)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scale_factor
        first = self.first_stage_model
        return first.decode_latent(z) if hasattr(first, "decode_latent") else first.decode(z)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Images from scaled latents ``z`` (the first stage quantises first if it is a VQ model)."""
        return self._decode(z)

    def differentiable_decode_first_stage(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._decode(z)

    def decode_samples(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_first_stage(z).clamp(-1, 1)

    def _reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.reduce(value, reduce_op="sum")
        return value

    @torch.no_grad()
    def estimate_scale_factor(self, batches) -> float:
        """Set ``scale_factor = 1 / std(z)`` over the latents of ``batches`` (pooled over every
        element and, in distributed runs, every rank), as LDM Sec. G's rescaling."""
        if not self.scale_by_std:
            raise RuntimeError("estimate_scale_factor needs scale_by_std=True")
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        skipped = 0
        for batch in batches:
            mean, std = self.batch_latent_moments(batch)
            z = (mean + std * torch.randn_like(mean)).double()
            if not bool(torch.isfinite(z).all()):  # a NaN/Inf image (or latent) must not decide the scale
                skipped += 1
                continue
            count = torch.tensor(float(z.numel()), device=z.device, dtype=torch.float64)
            stats += torch.stack([z.sum(), z.square().sum(), count])
        if skipped:
            print(f"[{type(self).__name__}] scale_by_std: {skipped} batch(es) with non-finite latents ignored")
        stats = self._reduce_sum(stats)
        if stats[2] < 2:
            raise RuntimeError("scale_by_std: no finite latents to estimate the standard deviation from "
                               f"({skipped} batch(es) held non-finite values); check the data for NaN/Inf")
        mean = stats[0] / stats[2]
        var = (stats[1] - stats[2] * mean.square()) / (stats[2] - 1)
        value = float(1.0 / var.clamp_min(1e-12).sqrt())
        if not math.isfinite(value):
            raise RuntimeError(f"scale_by_std: the estimate is non-finite ({value}); check the data and the first "
                               "stage for NaN/Inf (the scale factor was left unchanged)")
        self.scale_factor.fill_(value)
        self._scale_factor_fitted = True
        return value

    # ------------------------------------------------------------------ facts
    @property
    def first_stage_factor(self) -> int:
        """Pixels per latent cell along each side (``f`` of LDM Sec. 3.1; 1 for pixel space)."""
        first = self.first_stage_model
        stated = getattr(first, "downsampling_factor", None)
        if stated is not None:
            return int(stated)
        if not hasattr(first, "encoder") and not any(True for _ in first.parameters()):
            return 1  # a parameter-free stand-in (e.g. torch.nn.Identity)
        with torch.no_grad():  # a first stage that does not say: measure by decoding a tiny latent
            z = torch.zeros(1, self.channels, 4, 4, device=self.device)
            return int(self.decode_first_stage(z).shape[-1]) // 4

    @property
    def image_channels(self) -> int:
        """Channels of the images the first stage encodes."""
        stated = getattr(self.first_stage_model, "image_channels", None)
        return int(stated) if stated is not None else int(self.channels)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model space: the scaled posterior mean."""
        return self.encode_to_latent(images, sample=False)
