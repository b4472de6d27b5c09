"""What the sampling commands need to know about a loaded DDPM / LatentDiffusion model, as the
model states it (:mod:`ldm.models.diffusion_sampling` and :mod:`ldm.models.condition_stage`), turned
into the command's words (flag names, ``SampleError``):

- its kind of conditioning (``model.condition_kind()``: none, class label, text, or something the
  commands do not drive),
- sizes: the first stage's downsampling factor ``model.first_stage_factor`` (pixel size = ``f`` x
  latent size) and ``model.unet_downsampling``, which the latent size must be a multiple of. Any such
  size works, also larger than trained: the UNet is convolutional (LDM Sec. 4.3.2),
- the way from images to model space and back (``model.encode_images`` / ``decode_samples``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldm.cli.load_model import SampleError

KIND_NAMES = {"none": "unconditional", "class": "class-conditional", "text": "text-conditional",
              "other": "conditioned on non-text, non-label data"}


def conditioning_kind(model) -> str:
    """``none`` | ``class`` | ``text`` | ``other`` (e.g. image / concat conditioning)."""
    return model.condition_kind()


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
    return model.class_labels()


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
    return int(model.first_stage_factor)


def trained_pixel_size(model) -> tuple[int, int]:
    return model.trained_image_size


def latent_shape(model, height: int, width: int) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` for a pixel size, or a clear error if the size does not fit the model."""
    f, step = model.first_stage_factor, model.size_multiple
    for name, value in (("--H", height), ("--W", width)):
        if value < step or value % step:
            raise SampleError(f"{name} {value} must be a positive multiple of {step} for this model (first-stage "
                              f"factor {f} x UNet downsampling {step // f}); e.g. {max(step, value // step * step)}")
    return model.latent_shape(height, width)


def round_to_multiple(model, height: int, width: int) -> tuple[int, int]:
    """The largest valid pixel size not above ``height x width`` (at least one multiple)."""
    step = model.size_multiple
    return max(step, height // step * step), max(step, width // step * step)


def image_channels(model) -> int:
    return model.image_channels


def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> model space (the scaled posterior mean for latent models)."""
    return model.encode_images(images)


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
