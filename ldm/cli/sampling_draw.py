"""One batch of samples from a loaded model: sampler choice, guidance, img2img and inpainting.

The model supplies the denoiser (``model.denoiser()``), the schedule, the parameterisation and
its sampler defaults (``sampler_config`` in the YAML, ``sampler_defaults()``); everything else is
:mod:`ldm.samplers`, which knows nothing of Lightning:

- text / class conditions with ``scale != 1`` go through
  :func:`~ldm.samplers.classifier_free_guidance` (conditional and null condition in one forward);
- image-to-image (SDEdit-style): the encoded image is noised to the level of ``strength`` and
  denoised from there (``Sampler.sample(x_start=..., strength=...)``);
- inpainting: after every step the known region is replaced by the encoded image noised to the
  current level (``Sampler.sample(mask=keep, known=...)``, mask 1 = keep).
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


def guided_denoiser(model, null_cond: Any, scale: float, rescale: float = 0.0):
    """The model's denoiser, wrapped in classifier-free guidance when ``scale != 1``."""
    try:
        return model.guided_denoiser(null_cond, scale, rescale)
    except ValueError as err:
        raise SampleError(f"--scale {scale}: {err}; use --scale 1") from err


@torch.no_grad()
def draw_batch(model, sampler, *, raw_condition: Any = None, batch_size: int, scale: float = 1.0,
               rescale: float = 0.0, x_T: torch.Tensor | None = None, shape=None,
               x_start: torch.Tensor | None = None, strength: float = 1.0,
               keep_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
               negative: Any = None) -> torch.Tensor:
    """Images in [-1, 1] for one batch. ``raw_condition``: labels (LongTensor), captions (list of
    str) or a dict of inputs (spatial conditions: ``{key: B×C×h×w}``) for conditional models, None
    otherwise. ``negative``: raw negative conditions (e.g. captions) that replace the null condition
    in classifier-free guidance. ``x_start``/``keep_mask`` are in model space."""
    cond = null = None
    if raw_condition is not None:
        try:
            _, cond, null = model.conditions_for_sampling(raw_condition, negative=negative)
        except (ValueError, KeyError, TypeError) as err:
            raise SampleError(f"cannot build the condition: {err}") from err
        null = null if scale != 1.0 else None
    denoise = guided_denoiser(model, null, scale, rescale)
    device = model.device
    kwargs: dict[str, Any] = {"cond": cond, "generator": generator, "device": device, "dtype": torch.float32}
    if keep_mask is not None:
        if x_start is None:
            raise SampleError("inpainting needs the encoded image")
        kwargs.update(shape=tuple(x_start.shape), known=x_start, mask=keep_mask, x_T=x_T)
    elif x_start is not None:
        kwargs.update(x_start=x_start, strength=strength)
    else:
        kwargs.update(shape=shape, x_T=x_T)
    try:
        z = sampler.sample(denoise, **kwargs)
    except ValueError as err:
        raise SampleError(str(err)) from err
    return model.decode_samples(z)
