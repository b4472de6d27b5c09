"""What the sampling commands need to know about a loaded DDPM / LatentDiffusion model.

- its kind of conditioning (none, class label, text, or something the commands do not drive),
- sizes: the first stage's downsampling factor ``f`` (pixel size = ``f`` x latent size) and the
  UNet's own downsampling, which the latent size must be a multiple of. Any such size works, also
  larger than trained: the UNet is convolutional (LDM Sec. 4.3.2, "convolutional sampling"),
- the way from images to model space and back (``encode_to_latent`` / ``decode_samples``; the
  identity for pixel-space DDPMs).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldm.cli.load_model import SampleError

TEXT_KEYS = ("caption", "txt", "text", "prompt", "prompts")
KIND_NAMES = {"none": "unconditional", "class": "class-conditional", "text": "text-conditional",
              "other": "conditioned on non-text, non-label data"}


def conditioning_kind(model) -> str:
    """``none`` | ``class`` | ``text`` | ``other`` (e.g. image / concat conditioning)."""
    cond_model = getattr(model, "cond_stage_model", None)
    if cond_model is None:
        return "none"
    if getattr(model, "cond_is_first_stage", False):
        return "other"
    if callable(getattr(cond_model, "labels", None)) and hasattr(cond_model, "n_classes"):
        return "class"
    from ldm.modules.conditioners import BERTEmbedder, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder

    if isinstance(cond_model, BERTEmbedder):
        return "text" if cond_model.use_tknz_fn else "other"
    if isinstance(cond_model, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
        return "text"
    if str(getattr(model, "cond_stage_key", "")).lower() in TEXT_KEYS:
        return "text"
    return "other"


def describe(model) -> str:
    if getattr(model, "is_stack", False):
        stack = model.cond_stage_model
        entries = ", ".join(f"{key} -> {slot}" for key, slot in zip(stack.input_keys, stack.output_keys))
        return f"conditioned by a ConditionerStack ({entries})"
    kind = conditioning_kind(model)
    cond_model = getattr(model, "cond_stage_model", None)
    what = KIND_NAMES[kind]
    if cond_model is not None:
        what += f" ({type(cond_model).__name__} on {getattr(model, 'cond_stage_key', '?')!r})"
    return what


def valid_classes(model) -> list[int]:
    """The class indices a user may ask for: every embedding row except the null class."""
    embedder = model.cond_stage_model
    null = getattr(embedder, "null_class_index", None)
    embedding = getattr(embedder, "embedding", None)
    rows = int(embedding.num_embeddings) if embedding is not None else int(embedder.n_classes)
    return [i for i in range(rows) if i != null]


def check_classes(model, classes: Sequence[int]) -> list[int]:
    allowed = valid_classes(model)
    bad = [c for c in classes if c not in allowed]
    if bad:
        null = getattr(model.cond_stage_model, "null_class_index", None)
        extra = f"; {null} is the null (unconditional) class" if null is not None and null in bad else ""
        raise SampleError(f"class index {bad[0]} is out of range: this model knows classes 0..{max(allowed)}{extra}")
    return list(classes)


def first_stage_factor(model) -> int:
    """Pixels per latent cell along each side (1 for pixel-space models)."""
    first = getattr(model, "first_stage_model", None)
    if first is None:
        return 1
    encoder = getattr(first, "encoder", None)
    if encoder is not None and hasattr(encoder, "num_resolutions"):
        return 2 ** (int(encoder.num_resolutions) - 1)
    if not hasattr(first, "encoder") and not any(True for _ in first.parameters()):
        return 1  # identity first stage
    with torch.no_grad():  # measure: decode a tiny latent
        z = torch.zeros(1, model.channels, 4, 4, device=model.device)
        return int(model.decode_first_stage(z).shape[-1]) // 4


def unet_multiple(model) -> int:
    """The latent side must be a multiple of this (the UNet halves it ``len(channel_mult) - 1`` times)."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    mult = getattr(unet, "channel_mult", None)
    return 2 ** (len(mult) - 1) if mult else 1


def trained_pixel_size(model) -> tuple[int, int]:
    size = model.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    f = first_stage_factor(model)
    return int(h) * f, int(w) * f


def latent_shape(model, height: int, width: int) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` for a pixel size, or a clear error if the size does not fit the model."""
    f = first_stage_factor(model)
    step = f * unet_multiple(model)
    for name, value in (("--H", height), ("--W", width)):
        if value < step or value % step:
            raise SampleError(f"{name} {value} must be a positive multiple of {step} for this model (first-stage "
                              f"factor {f} x UNet downsampling {step // f}); e.g. {max(step, value // step * step)}")
    return int(model.channels), height // f, width // f


def round_to_multiple(model, height: int, width: int) -> tuple[int, int]:
    """The largest valid pixel size not above ``height x width`` (at least one multiple)."""
    step = first_stage_factor(model) * unet_multiple(model)
    return max(step, height // step * step), max(step, width // step * step)


def image_channels(model) -> int:
    first = getattr(model, "first_stage_model", None)
    conv_in = getattr(getattr(first, "encoder", None), "conv_in", None)
    if conv_in is not None:
        return int(conv_in.in_channels)
    return int(model.channels)


@torch.no_grad()
def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> model space (the scaled posterior mean for latent models)."""
    if hasattr(model, "encode_to_latent"):
        return model.encode_to_latent(images, sample=False)
    return images


def downsample_mask(regenerate: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask (1 = regenerate) at latent resolution: a latent cell is regenerated if any of
    its pixels is, so the kept latent region never reaches into the hole."""
    if factor == 1:
        return regenerate
    return torch.nn.functional.max_pool2d(regenerate, kernel_size=factor, stride=factor)


def grid_rows(n_total: int, per_condition: int, n_conditions: int) -> int:
    """Images per grid row: one row per condition when there are several, else a near-square grid."""
    if n_conditions > 1:
        return per_condition
    return max(1, math.ceil(math.sqrt(n_total)))
