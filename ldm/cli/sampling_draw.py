"""One batch of samples from a loaded model: sampler choice, guidance, img2img and inpainting.

The drawing itself is the model's one sampling path (``model.sample``, see
:mod:`ldm.models.diffusion_sampling`), which the Python API and the image logger use too: the
command builds the sampler once (``model.build_sampler``, from the flags over the YAML
``sampler_config``) and hands it to every batch, with

- text / class conditions and ``scale != 1``: classifier-free guidance
  (:func:`~ldm.samplers.classifier_free_guidance`, conditional and null condition in one forward);
- image-to-image (SDEdit-style): the encoded image is noised to the level of ``strength`` and
  denoised from there (``Sampler.sample(x_start=..., strength=...)``);
- inpainting: after every step the known region is replaced by the encoded image noised to the
  current level (``Sampler.sample(mask=keep, known=...)``, mask 1 = keep).

This module turns the model's errors into the command's (``SampleError`` naming the flags).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ldm.cli.load_model import SampleError


@dataclass
class SamplerSettings:
    name: str
    steps: int
    eta: float
    options: dict


def sampler_settings(model, name: str | None, steps: int | None, eta: float | None) -> SamplerSettings:
    """Flags over the model's ``sampler_config`` over the built-in defaults (DDIM, 50 steps, eta 0)."""
    return SamplerSettings(*model.sampler_settings(name, steps, eta))


def build_sampler(model, settings: SamplerSettings, progress: bool = False, sigmas: str | None = None):
    """The model's sampler for the settings; ``sigmas`` (karras | exponential | discrete) picks the noise
    schedule of a sigma-space sampler (euler, heun, dpmpp_2m, ...)."""
    try:
        return model.build_sampler(settings.name, settings.steps, settings.eta, progress=progress, sigmas=sigmas)
    except (ValueError, TypeError) as err:
        flag = "" if sigmas is None else f" --sigmas {sigmas}"
        raise SampleError(f"--sampler {settings.name}{flag} --steps {settings.steps} --eta {settings.eta}: "
                          f"{err}") from err


@torch.no_grad()
def draw_batch(model, sampler, *, raw_condition: Any = None, batch_size: int, scale: float = 1.0,
               rescale: float = 0.0, x_T: torch.Tensor | None = None, shape=None,
               x_start: torch.Tensor | None = None, strength: float = 1.0,
               keep_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
               negative: Any = None) -> torch.Tensor:
    """Images in [-1, 1] for one batch (the EMA scope is the caller's): the steps of ``model.sample``
    (``sampling_conditions``, ``run_sampler``, ``decode_samples``) with the command's error messages.
    ``raw_condition``: labels (LongTensor), captions (list of str) or a dict of inputs (spatial
    conditions: ``{key: B×C×h×w}``) for conditional models, None otherwise. ``negative``: raw negative
    conditions (e.g. captions) that replace the null condition in classifier-free guidance.
    ``shape``: ``(B, C, h, w)``; ``x_start``/``keep_mask`` are in model space."""
    from ldm.models.diffusion_sampling import GuidanceError

    cond = null = None
    if raw_condition is not None:
        try:
            _, cond, null = model.sampling_conditions(inputs=raw_condition, negative=negative)
        except (ValueError, KeyError, TypeError) as err:
            raise SampleError(f"cannot build the condition: {err}") from err
        null = null if scale != 1.0 else None
    if keep_mask is not None:
        if x_start is None:
            raise SampleError("inpainting needs the encoded image")
        sample_kwargs = {"known": x_start, "mask": keep_mask}
        shape = tuple(x_start.shape)
    elif x_start is not None:
        sample_kwargs = {"x_start": x_start, "strength": strength}
    else:
        sample_kwargs = {}
    try:
        z = model.run_sampler(batch_size, cond, null, sampler=sampler, guidance_scale=scale, guidance_rescale=rescale,
                              shape=None if shape is None else tuple(shape)[1:], x_T=x_T, generator=generator,
                              sample_kwargs=sample_kwargs)
    except GuidanceError as err:
        raise SampleError(f"--scale {scale}: {err}; use --scale 1") from err
    except ValueError as err:
        raise SampleError(str(err)) from err
    return model.decode_samples(z)
