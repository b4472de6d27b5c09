"""The spatially conditioned sampling modes: ``superres``, ``mask2img`` and ``inpaint`` with an
inpainting model (LDM Sec. 4.3.2-4.5), for :mod:`ldm.cli.sample`.

A model's *concat inputs* are the batch keys its ``concat`` condition is built from: the
``cond_stage_key`` of a single spatial conditioner (``SpatialRescaler``, ``torch.nn.Identity`` as in
``bsr_sr``, or ``__is_first_stage__`` as in ``inpainting_big``), the ``concat`` entries of a
:class:`~ldm.modules.conditioners.stack.ConditionerStack`, and ``concat_mask_key``. Each input is
described by its channel count and its size per latent cell:

* ``superres --input low.png``: the one 3-channel input gets the image at its own size; the output
  is ``input size / (input px per latent cell) * f``;
* ``mask2img --input mask.png``: a 1-channel input gets the mask in {0, 1} (white = shape), a
  C-channel input (semantic maps) the one-hot encoding of the PNG's label indices;
* ``inpaint --image x.png --mask m.png``: 3-channel inputs get the masked image
  ``x * (1 - m)``, 1-channel inputs the mask (1 = fill). The model fills the hole itself; no
  latent replacement (that path stays for models without concat inputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ldm.cli.load_model import SampleError

SPATIAL_MODES = ("superres", "mask2img")


@dataclass
class ConcatInput:
    key: str
    channels: int
    per_latent: float  # input pixels per latent cell along a side


def concat_inputs(model) -> list[ConcatInput]:
    """The model's concat inputs, as it states them (``model.spatial_inputs()``; empty for models
    without spatial conditioning)."""
    return [ConcatInput(*entry) for entry in model.spatial_inputs()]


def has_concat_inputs(model) -> bool:
    return bool(concat_inputs(model))


def _single(inputs: list[ConcatInput], mode: str, want, what: str) -> ConcatInput:
    matching = [i for i in inputs if want(i)]
    if len(inputs) != 1 or not matching:
        have = ", ".join(f"{i.key!r} ({i.channels} ch)" for i in inputs) or "none"
        raise SampleError(f"mode {mode!r} needs a model with one {what} concat input; "
                          f"this model's concat inputs: {have}")
    return matching[0]


def _label_map(path: str, height: int, width: int, channels: int) -> torch.Tensor:
    """A PNG of label indices (mode L/P) as a one-hot ``1×C×H×W`` map."""
    import numpy as np
    from PIL import Image

    from ldm.cli.sampling_io import _open_image

    image = _open_image(path, "--input")
    image = image if image.mode in ("L", "P", "I") else image.convert("L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.NEAREST)
    labels = torch.from_numpy(np.asarray(image, dtype=np.int64))
    if labels.max() >= channels:
        raise SampleError(f"--input {path}: label {int(labels.max())} outside the model's {channels} classes")
    return nn.functional.one_hot(labels, channels).permute(2, 0, 1)[None].float()


def spatial_condition(args, model) -> tuple[dict, tuple[int, int], dict]:
    """(raw inputs for one sample ``{key: 1×C×h×w}``, pixel size, pixels for paste-back) of a
    spatial mode; the raw inputs become the batch handed to ``model.sampling_conditions``."""
    from ldm.cli.sampling_io import image_size, load_image, load_mask
    from ldm.cli.sampling_model import latent_shape, round_to_multiple, trained_pixel_size

    inputs = concat_inputs(model)
    f = model.first_stage_factor
    if args.mode == "superres":
        entry = _single(inputs, "superres", lambda i: i.channels == 3, "3-channel (low-res image)")
        h, w = image_size(args.input, "--input")
        height, width = round(h / entry.per_latent * f), round(w / entry.per_latent * f)
        latent_shape(model, height, width)
        lr = load_image(args.input, round(height / f * entry.per_latent), round(width / f * entry.per_latent),
                        3, "--input")
        return {entry.key: lr}, (height, width), {}
    if args.mode == "mask2img":
        entry = _single(inputs, "mask2img", lambda i: i.channels != 3, "mask / semantic-map")
        if args.H is None and args.W is None:
            default = round_to_multiple(model, *(round(s / entry.per_latent * f)
                                                 for s in image_size(args.input, "--input")))
        else:
            default = trained_pixel_size(model)
        height, width = args.H or default[0], args.W or default[1]
        latent_shape(model, height, width)
        ih, iw = round(height / f * entry.per_latent), round(width / f * entry.per_latent)
        value = load_mask(args.input, ih, iw, "--input") if entry.channels == 1 else \
            _label_map(args.input, ih, iw, entry.channels)
        return {entry.key: value}, (height, width), {}
    # inpaint with an inpainting model
    height, width = args.H or round_to_multiple(model, *image_size(args.init_img))[0], \
        args.W or round_to_multiple(model, *image_size(args.init_img))[1]
    latent_shape(model, height, width)
    raw, images = {}, {}
    for entry in inputs:
        ih, iw = round(height / f * entry.per_latent), round(width / f * entry.per_latent)
        mask = load_mask(args.mask, ih, iw)
        if entry.channels == 1:
            raw[entry.key] = mask
        else:
            from ldm.models.conditioning import masked_image

            raw[entry.key] = masked_image(load_image(args.init_img, ih, iw, entry.channels), mask)
    images["init"] = load_image(args.init_img, height, width, 3)
    images["regenerate"] = load_mask(args.mask, height, width)
    if not any(e.channels == 1 for e in inputs):
        raise SampleError("this model's concat inputs hold no mask (1 channel): use an inpainting model, or a model "
                          "without concat inputs for mask replacement")
    return raw, (height, width), images


def repeat_inputs(raw: dict, n: int, device, extra: dict | None = None, model=None) -> dict:
    """The one-sample raw inputs repeated to ``n`` rows on ``device`` (+ the further entries the model
    needs, + ``extra`` entries, e.g. captions)."""
    out = {k: v.to(device).expand(n, *v.shape[1:]) for k, v in raw.items()}
    if model is not None:
        out.update(model.extra_sampling_inputs(n))
    out.update(extra or {})
    return out


def text_input_key(model) -> str | None:
    """The input key of the caption entry of a model with spatial inputs (a hybrid model), else None."""
    return model.text_input_key()


def text_inputs(model, captions) -> dict:
    """``{text key: captions}`` for a hybrid model's stack, ``{}`` otherwise."""
    key = text_input_key(model)
    if key is None:
        return {}
    if any(c is None for c in captions):
        raise SampleError(f"this model also reads captions ({key!r}): pass --prompt \"...\"")
    return {key: list(captions)}
