"""First-stage LightningModules: the perceptual autoencoders of LDM Sec. 3.1 / Sec. G.

* :class:`AutoencoderKL` — KL-regularised (``z ~ q(z|x)``, tiny KL weight ~1e-6).
* :class:`VQModel` — VQ-regularised (quantiser inside the autoencoder).
* :class:`VQModelInterface` — the VQ model as stage 2 uses it: encode *without* quantising,
  quantise in ``decode`` (LDM Sec. 3.1: "absorbed by the decoder").
* :class:`IdentityFirstStage` — pixel-space diffusion (``f = 1``).

All share the first-stage interface of ``docs/architecture.md``: ``latent_moments(x) -> (mean, std)``
and ``decode_latent(z) -> x``, besides the original ``encode``/``decode``.

Training (LDM Eq. 25: the adversarial step, gradient accumulation, the non-finite guard) is
:class:`~ldm.models.autoencoder_training.AdversarialAutoencoder`, the base of the KL and VQ models.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.models.autoencoder_training import ADAM_BETAS, DEFAULT_LEARNING_RATE, AdversarialAutoencoder
from ldm.models.ema import EmaScope
from ldm.modules.autoencoder import DiagonalGaussianDistribution, VectorQuantizer

__all__ = ["ADAM_BETAS", "DEFAULT_LEARNING_RATE", "AdversarialAutoencoder", "AutoencoderKL", "IdentityFirstStage",
           "VQModel", "VQModelInterface"]


class AutoencoderKL(AdversarialAutoencoder):
    """KL-regularised autoencoder: ``E(x)`` gives the moments of q(z|x) (LDM Sec. 3.1)."""

    def __init__(self, ddconfig: dict, lossconfig: dict | None, embed_dim: int, ckpt_path: str | None = None,
                 ignore_keys: Iterable[str] = (), image_key: str = "image", colorize_nlabels: int | None = None,
                 monitor: str | None = None, base_learning_rate: float | None = None, learn_logvar: bool = False,
                 accumulate_grad_batches: int = 1, skip_nonfinite: bool = True, max_nonfinite_steps: int = 10,
                 **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"AutoencoderKL: unknown parameters {sorted(unused)}")
        self._setup_nonfinite_guard(skip_nonfinite, max_nonfinite_steps)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and log-variance)")
        self._setup_common(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, base_learning_rate,
                           accumulate_grad_batches)
        z_channels = ddconfig["z_channels"]
        self.embed_dim = embed_dim
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.learn_logvar = bool(learn_logvar)
        if hasattr(self.loss, "logvar"):
            self.loss.logvar.requires_grad_(self.learn_logvar)  # the original never optimised it
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # first-stage interface
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.encode(x)
        return posterior.mean, posterior.std

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    # training hooks
    def reconstruct(self, x, sample: bool):
        xrec, posterior = self(x, sample_posterior=sample)
        return xrec, posterior

    def ae_loss(self, x, xrec, posterior, split, last_layer):
        return self.loss(x, xrec, posterior, 0, self.gan_step, last_layer=last_layer, split=split)

    def extra_images(self, x, posterior) -> dict:
        return {"samples": self.decode(torch.randn_like(posterior.mean))}


class VQModel(EmaScope, AdversarialAutoencoder):
    """VQ-regularised autoencoder (LDM Sec. 3.1; VQGAN). ``quantizer_config`` passes extra
    :class:`VectorQuantizer` options (``legacy``, ``use_ema``, ``decay``, ``dead_code_threshold``, ...)."""

    def __init__(self, ddconfig: dict, lossconfig: dict | None, n_embed: int, embed_dim: int,
                 ckpt_path: str | None = None, ignore_keys: Iterable[str] = (), image_key: str = "image",
                 colorize_nlabels: int | None = None, monitor: str | None = None,
                 batch_resize_range: tuple[int, int] | None = None, scheduler_config: dict | None = None,
                 lr_g_factor: float = 1.0, remap: str | None = None, sane_index_shape: bool = False,
                 use_ema: bool = False, base_learning_rate: float | None = None, beta: float = 0.25,
                 quantizer_config: dict | None = None, accumulate_grad_batches: int = 1, skip_nonfinite: bool = True,
                 max_nonfinite_steps: int = 10, **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"{type(self).__name__}: unknown parameters {sorted(unused)}")
        self._setup_nonfinite_guard(skip_nonfinite, max_nonfinite_steps)
        self._setup_common(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, base_learning_rate,
                           accumulate_grad_batches)
        self.embed_dim, self.n_embed = embed_dim, n_embed
        z_channels = ddconfig["z_channels"]
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta, remap=remap, sane_index_shape=sane_index_shape,
                                        **(quantizer_config or {}))
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.batch_resize_range = batch_resize_range
        self.scheduler_config = scheduler_config
        self.lr_g_factor = float(lr_g_factor)
        self.use_ema = bool(use_ema)
        if self.use_ema:
            from ldm.modules.ema import LitEma

            self.model_ema = LitEma(self)
        self.register_buffer("_val_code_counts", torch.zeros(self.quantize.re_embed), persistent=False)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def ema_module(self) -> nn.Module:
        """The EMA (``use_ema``) averages every weight of the model."""
        return self

    def on_ae_step_end(self) -> None:
        if self.use_ema:
            self.model_ema(self)

    # original API
    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code: torch.Tensor, shape: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Indices → images; ``shape`` is (B, h, w, embed_dim) when ``code`` is flat."""
        if shape is None:
            if code.dim() != 3:
                raise ValueError("decode_code: pass indices shaped B×h×w or give shape=(B, h, w, embed_dim)")
            shape = (*code.shape, self.embed_dim)
        return self.decode(self.quantize.get_codebook_entry(code.reshape(-1), shape))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, info = self.encode(input)
        dec = self.decode(quant)
        return (dec, diff, info.indices) if return_pred_indices else (dec, diff)

    # first-stage interface: the pre-quantisation latent; decoding quantises
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode_to_prequant(x)
        return h, torch.zeros_like(h)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        quant, _, _ = self.quantize(z)
        return self.decode(quant)

    # training hooks
    def get_input(self, batch: dict, key: str) -> torch.Tensor:
        x = super().get_input(batch, key)
        if self.batch_resize_range is None or not self.training:
            return x
        lower, upper = self.batch_resize_range
        size = upper if self.gan_step <= 4 else int(np.random.choice(np.arange(lower, upper + 16, 16)))
        if size != x.shape[2]:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return x.detach()

    def reconstruct(self, x, sample: bool):
        quant, qloss, info = self.encode(x)
        return self.decode(quant), (qloss, info)

    def ae_loss(self, x, xrec, aux, split, last_layer):
        qloss, info = aux
        return self.loss(qloss, x, xrec, 0, self.gan_step, last_layer=last_layer, split=split,
                         predicted_indices=info.indices)

    def extra_logs(self, aux, split: str) -> dict:
        _, info = aux
        if split == "val":
            counts = torch.bincount(info.indices.reshape(-1), minlength=self._val_code_counts.numel())
            self._val_code_counts += counts.to(self._val_code_counts)
        return {f"{split}/perplexity": info.perplexity.detach(), f"{split}/codebook_usage": info.usage.detach()}

    def on_validation_epoch_start(self) -> None:
        self._val_code_counts.zero_()

    def validation_step(self, batch: dict, batch_idx: int):
        with self.ema_scope():
            return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        counts = self._val_code_counts
        if self._trainer is not None:
            counts = self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")
        if counts.sum() > 0:  # share of the codebook used over the whole validation set
            self.log("val/codebook_usage_epoch", (counts > 0).float().mean(), sync_dist=True)  # equal on all ranks


class VQModelInterface(VQModel):
    """A VQ model as the latent diffusion model uses it: ``encode`` stops before the quantiser,
    ``decode`` quantises (unless ``force_not_quantize``)."""

    def __init__(self, embed_dim: int, *args: Any, **kwargs: Any):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def reconstruct(self, x, sample: bool):
        quant, qloss, info = self.quantize(self.encode_to_prequant(x))
        return self.decoder(self.post_quant_conv(quant)), (qloss, info)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, info = self.quantize(self.encode_to_prequant(input))
        dec = self.decoder(self.post_quant_conv(quant))
        return (dec, diff, info.indices) if return_pred_indices else (dec, diff)


class IdentityFirstStage(nn.Module):
    """Pixel space as a "first stage" (f = 1): every map is the identity."""

    def __init__(self, *args: Any, vq_interface: bool = False, **kwargs: Any):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args, **kwargs):
        return (x, None, [None, None, None]) if self.vq_interface else x

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z

    downsampling_factor = 1  # f = 1: pixel space
