"""Stable Diffusion 2.x's image-conditioned latent diffusion models (original target names
``ldm.models.diffusion.ddpm.LatentInpaintDiffusion`` / ``LatentUpscaleDiffusion``).

Both add a ``concat`` condition to the text condition of :class:`LatentDiffusion` (LDM Sec. 3.3,
concatenation to the UNet input):

* :class:`LatentInpaintDiffusion` (``conditioning_key: hybrid``): UNet input ``[z_t, m, E(x ⊙ (1 - m))]``,
  the mask ``m`` (1 = region to fill, ``batch["mask"]``) resized to the latent size and the scaled latent
  of the masked image (``batch["masked_image"]``): 4 + 1 + 4 = 9 channels.
* :class:`LatentUpscaleDiffusion` (``conditioning_key: hybrid-adm``, the x4 upscaler): UNet input
  ``[z_t, x_low,s]``, the low-resolution image (``batch[low_scale_key]``, pixel space, at the latent
  size) noised to level ``s`` by ``low_scale_config`` (:class:`ImageConcatWithNoiseAugmentation`),
  and ``s`` as the UNet's class label ``y``.

Classifier-free guidance keeps the image condition and drops only the text (the null condition is
``{concat: same, crossattn: null text}``), as the original samplers do.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ldm.models.first_stage import freeze
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.util import instantiate_from_config

INPAINT_FINETUNE_KEYS = ("model.diffusion_model.input_blocks.0.0.weight",
                         "model_ema.diffusion_modelinput_blocks00weight")


class _TextPlusImageCondition(LatentDiffusion):
    """Shared part: ckpt loading after the extra modules exist, and the image-keeping null condition."""

    @staticmethod
    def _split_ckpt_args(kwargs: dict) -> tuple[dict, dict]:
        """(kwargs without the checkpoint and LoRA arguments, those arguments): the checkpoint is loaded
        only once the subclass's own modules exist, and the adapters are injected after it."""
        ckpt = {k: kwargs.pop(k) for k in ("ckpt_path", "ignore_keys", "load_only_unet", "trust_checkpoint", "lora")
                if k in kwargs}
        return kwargs, ckpt

    def _load_deferred(self, ckpt: dict) -> None:
        if ckpt.get("ckpt_path") is not None:
            self.init_from_ckpt(ckpt["ckpt_path"], ignore_keys=ckpt.get("ignore_keys", ()),
                                only_model=ckpt.get("load_only_unet", False),
                                trust_checkpoint=ckpt.get("trust_checkpoint", False))
            self.restarted_from_ckpt = True
        if ckpt.get("lora") is not None:
            from ldm.lora import apply_lora

            apply_lora(self, ckpt["lora"])

    def image_condition(self, batch: Mapping, n: int | None) -> dict:
        raise NotImplementedError

    # what a sampling caller needs to know (``ldm.cli.sample_spatial``)
    def text_input_key(self) -> str:
        """The batch key of the caption (cross-attention)."""
        return self.cond_stage_key

    def spatial_inputs(self) -> list[tuple[str, int, float]]:
        """``(batch key, channels, input pixels per latent cell)`` of each spatial input."""
        raise NotImplementedError

    def condition_from_batch(self, batch: Mapping, n: int | None = None, drop: bool | None = None):
        text = super().condition_from_batch(batch, n, drop)
        return {"crossattn": text, **self.image_condition(batch, n)}

    def sampling_conditions(self, batch_size=None, inputs=None, conditioning=None, negative=None,
                            null_conditioning=None):
        batch_size, cond, null = super().sampling_conditions(batch_size, inputs, conditioning, negative,
                                                             null_conditioning)
        if isinstance(cond, Mapping) and isinstance(null, torch.Tensor):
            null = {**cond, "crossattn": null}
        return batch_size, cond, null


class LatentInpaintDiffusion(_TextPlusImageCondition):
    """SD 2 inpainting. ``finetune_keys``: when a checkpoint's input convolution has fewer input
    channels than the UNet (e.g. initialising from a 4-channel text-to-image model), its first
    ``keep_finetune_dims`` channels are kept and the new ones start at zero."""

    def __init__(self, *args, finetune_keys: Sequence[str] | None = INPAINT_FINETUNE_KEYS,
                 concat_keys: Sequence[str] = ("mask", "masked_image"), masked_image_key: str = "masked_image",
                 keep_finetune_dims: int = 4, c_concat_log_start: int | None = None,
                 c_concat_log_end: int | None = None, **kwargs):
        kwargs, ckpt = self._split_ckpt_args(kwargs)
        super().__init__(*args, **kwargs)
        if masked_image_key not in concat_keys:
            raise ValueError(f"masked_image_key {masked_image_key!r} must be one of concat_keys {list(concat_keys)}")
        self.finetune_keys = tuple(finetune_keys or ())
        self.concat_keys = tuple(concat_keys)
        self.masked_image_key = masked_image_key
        self.keep_finetune_dims = int(keep_finetune_dims)
        self._load_deferred(ckpt)

    def image_condition(self, batch: Mapping, n: int | None) -> dict:
        # a posterior sample, as the original (and diffusers' inpainting pipeline) encode the masked image
        masked = self.encode_to_latent(self.image_from_batch(batch, self.masked_image_key)[:n].to(self.device))
        parts = []
        for key in self.concat_keys:
            if key == self.masked_image_key:
                parts.append(masked)
            else:
                mask = self.image_from_batch(batch, key)[:n].to(self.device)
                parts.append(F.interpolate(mask, size=masked.shape[-2:]).to(masked.dtype))
        return {"concat": torch.cat(parts, dim=1)}

    def spatial_inputs(self) -> list[tuple[str, int, float]]:
        f = self.first_stage_factor
        return [(key, 3 if key == self.masked_image_key else 1, float(f)) for key in self.concat_keys]

    def init_from_ckpt(self, path, ignore_keys: Sequence[str] = (), only_model: bool = False,
                       trust_checkpoint: bool = False):
        from ldm.checkpoint import load_state_dict

        state_dict = path if isinstance(path, Mapping) else load_state_dict(path, trust_checkpoint=trust_checkpoint)
        report = super().init_from_ckpt(self.pad_finetune_keys(state_dict), ignore_keys, only_model, trust_checkpoint)
        return report

    def prepare_state_dict(self, state_dict: Mapping) -> dict:
        return super().prepare_state_dict(self.pad_finetune_keys(state_dict))

    def pad_finetune_keys(self, state_dict: Mapping) -> dict:
        state_dict = dict(state_dict)
        own = self.state_dict()
        for key in self.finetune_keys:
            if key in state_dict and key in own and state_dict[key].shape[1] < own[key].shape[1]:
                keep = min(self.keep_finetune_dims, state_dict[key].shape[1])
                padded = torch.zeros_like(own[key], device=state_dict[key].device, dtype=state_dict[key].dtype)
                padded[:, :keep] = state_dict[key][:, :keep]
                state_dict[key] = padded
                print(f"[{type(self).__name__}] {key}: {keep} input channels from the checkpoint, "
                      f"{own[key].shape[1] - keep} new ones zero-initialised")
        return state_dict


class LatentUpscaleDiffusion(_TextPlusImageCondition):
    """The SD 2 x4 upscaler. The noise level comes from ``batch[noise_level_key]`` when the key is
    set and present (at sampling also ``batch["noise_level"]``: an int or a ``[B]`` tensor);
    otherwise it is drawn uniformly below ``max_noise_level`` (training)."""

    def __init__(self, *args, low_scale_config: Mapping, low_scale_key: str = "LR",
                 noise_level_key: str | None = None, **kwargs):
        kwargs, ckpt = self._split_ckpt_args(kwargs)
        super().__init__(*args, **kwargs)
        model = low_scale_config if isinstance(low_scale_config, torch.nn.Module) else \
            instantiate_from_config(low_scale_config, node="low_scale_config")
        self.low_scale_model = freeze(model)
        self.low_scale_key = low_scale_key
        self.noise_level_key = noise_level_key
        self._load_deferred(ckpt)

    sampling_noise_level = 20  # the noise level SD's x4 upscaler is usually sampled at

    def spatial_inputs(self) -> list[tuple[str, int, float]]:
        return [(self.low_scale_key, 3, 1.0)]  # the low-res image has the latent's size

    def extra_sampling_inputs(self, n: int) -> dict:
        return {self.noise_level_key or "noise_level": torch.full((n,), self.sampling_noise_level, dtype=torch.long)}

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "low_scale_model", None) is not None:
            self.low_scale_model.eval()
        return self

    def image_condition(self, batch: Mapping, n: int | None) -> dict:
        x_low = self.image_from_batch(batch, self.low_scale_key)[:n].to(self.device)
        key = self.noise_level_key or "noise_level"
        level = batch.get(key)
        if isinstance(level, torch.Tensor) and level.ndim:
            level = level[:n]
        noised, level = self.low_scale_model(x_low, level)
        return {"concat": noised, "vector": level}
