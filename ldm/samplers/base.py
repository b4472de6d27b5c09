"""The loop every sampler shares; subclasses supply only their per-step update.

A denoiser is any callable ``denoise(x_t, t, cond) -> model_output`` with ``t`` a LongTensor
``[B]`` of 0-based timesteps (see :mod:`ldm.diffusion.schedule`) and the output in the model's
parameterisation (``eps`` | ``x0`` | ``v``; 2C channels for learned-variance models).

A sampler visits the descending timesteps ``t_0 > t_1 > ... > t_{n-1}`` chosen by
:func:`~ldm.samplers.spacing.make_timesteps`. Step ``k`` moves from noise level
``a_k = alpha-bar[t_k]`` to ``a_{k+1}``; after the last timestep the target level is
``final_alpha_cumprod``: by default ``alpha-bar[0]`` when the smallest visited timestep is
above 0 (the original DDIM convention) and ``1`` (the clean x0 estimate) when it is 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..diffusion.gaussian import check_parameterization, q_sample_at, x0_eps_from_output
from ..diffusion.reverse import check_variance_type, split_variance_output, threshold_x0
from ..diffusion.schedule import DiffusionSchedule, as_schedule
from .spacing import make_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Standard normal noise; reproducible under ``generator`` whatever device it lives on."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    gen_device = torch.device(generator.device)
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    return noise.to(device)


def first_tensor(obj) -> torch.Tensor | None:
    """The first tensor found in a (nested) tensor / dict / list / tuple, or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = first_tensor(item)
            if found is not None:
                return found
    return None



def start_index(strength: float, num_steps: int) -> int:
    """First of ``num_steps`` steps to run for image-to-image at ``strength`` in (0, 1]: the last
    ``int(strength * num_steps)`` steps run (1 = all, from the pure-noise level)."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n_run = int(float(strength) * num_steps)
    if n_run < 1:
        raise ValueError(f"strength={strength} runs no step out of {num_steps}; raise strength or steps")
    return num_steps - n_run


def generator_from_seed(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """``seed`` as a CPU generator (one works for every device); refuses both at once."""
    if seed is None:
        return generator
    if generator is not None:
        raise ValueError("pass either generator or seed, not both")
    return torch.Generator().manual_seed(int(seed))


def sample_placement(given, cond, device, dtype) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a sampling run: those of the first given image tensor (``x_T``,
    ``x_start``, ``known``), else ``device``/``dtype``, else ``cond``'s tensors, else CPU float32."""
    ref = next((v for v in given if v is not None), None)
    if ref is not None:
        return ref.device, ref.dtype
    ref = first_tensor(cond)
    device = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    dtype = dtype or (ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype())
    return device, dtype

class Sampler:
    """Base class: timestep selection, prediction conversion, img2img, inpainting, the loop."""

    name = "base"

    def __init__(self, schedule: DiffusionSchedule | torch.Tensor, parameterization: str = "eps",
                 steps: int | None = 50, spacing: str = "uniform", clip_denoised: bool = False,
                 dynamic_threshold: float | None = None, variance_type: str = "fixed_small",
                 final_alpha_cumprod: float | None = None, progress: bool = False):
        self.schedule = as_schedule(schedule)
        self.parameterization = check_parameterization(parameterization)
        self.variance_type = check_variance_type(variance_type)
        self.clip_denoised = bool(clip_denoised)
        self.dynamic_threshold = dynamic_threshold
        self.progress = progress
        T = self.schedule.num_timesteps
        self.steps = T if steps is None else steps
        self.spacing = spacing
        self.timesteps = make_timesteps(T, self.steps, spacing, self.schedule.alphas_cumprod)
        ac = self.schedule.alphas_cumprod
        if final_alpha_cumprod is None:
            final_alpha_cumprod = float(ac[0]) if self.timesteps[0] > 0 else 1.0
        if not 0.0 < float(final_alpha_cumprod) <= 1.0:
            raise ValueError(f"final_alpha_cumprod must be in (0, 1], got {final_alpha_cumprod}")
        #: timesteps in sampling order (descending)
        self.sample_timesteps = list(reversed(self.timesteps))
        #: noise level alpha-bar before each step, plus the final target level (length n + 1)
        self.levels = [float(ac[t]) for t in self.sample_timesteps] + [float(final_alpha_cumprod)]

    # -- shared pieces ---------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.sample_timesteps)

    def alpha_sigma(self, k: int) -> tuple[float, float]:
        """sqrt(a) and sqrt(1 - a) of the noise level before step ``k`` (``k = n``: the final level)."""
        a = self.levels[k]
        return math.sqrt(a), math.sqrt(1.0 - a)

    def model_output(self, denoise: Denoiser, x: torch.Tensor, k: int,
                     cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Call the denoiser at step ``k``; return (prediction, variance values or None)."""
        t = torch.full((x.shape[0],), self.sample_timesteps[k], dtype=torch.long, device=x.device)
        out = denoise(x, t, cond)
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"denoiser returned batch {out.shape[0]} for input batch {x.shape[0]}")
        return split_variance_output(out, self.variance_type)

    def to_x0_eps(self, prediction: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at step ``k`` from a prediction, with the optional clipping / thresholding of x0."""
        alpha, sigma = self.alpha_sigma(k)
        x0, eps = x0_eps_from_output(prediction, x, alpha, sigma, self.parameterization)
        return threshold_x0(x0, self.clip_denoised, self.dynamic_threshold), eps

    def predict(self, denoise: Denoiser, x: torch.Tensor, k: int, cond) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, _ = self.model_output(denoise, x, k, cond)
        return self.to_x0_eps(prediction, x, k)

    def start_index(self, strength: float) -> int:
        """First step to run for image-to-image at ``strength`` in (0, 1] (1 = from pure noise level)."""
        return start_index(strength, self.num_steps)

    def noise_to_level(self, x0: torch.Tensor, k: int, generator) -> torch.Tensor:
        """q_sample of ``x0`` at the noise level before step ``k`` (DDPM Eq. 4)."""
        alpha, sigma = self.alpha_sigma(k)
        if sigma == 0.0:
            return x0
        return q_sample_at(x0, alpha, sigma, randn(x0.shape, generator, x0.device, x0.dtype))

    # -- per-sampler update ----------------------------------------------------------------
    def step(self, denoise: Denoiser, x: torch.Tensor, k: int, cond, state: dict,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Move ``x`` from level ``levels[k]`` to ``levels[k+1]``; return (x_next, x0 estimate)."""
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, denoise: Denoiser, shape=None, cond=None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, seed: int | None = None,
               x_start: torch.Tensor | None = None, strength: float = 1.0,
               mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
               callback: Callable | None = None, return_intermediates: bool = False,
               log_every: int | None = None, device=None, dtype: torch.dtype | None = None,
               progress: bool | None = None):
        """Draw samples.

        - ``shape`` (with ``device``/``dtype``, else taken from ``cond``'s tensors / CPU float32),
          or ``x_T`` (the starting noise), or ``x_start`` (image-to-image: noised to ``strength``).
          With ``x_T`` and ``strength < 1``, ``x_T`` is taken to be at that strength's level
          (e.g. the output of :meth:`DDIMSampler.encode`).
        - ``mask`` + ``known`` (default ``x_start``): inpainting; where ``mask == 1`` the known
          image, noised to the current level, replaces the sample after every step.
        - ``generator`` or ``seed``: reproducible noise (a CPU generator works for every device).
        - ``callback(k, t, x, pred_x0)`` after each step; ``return_intermediates=True`` returns
          ``{"samples": x, "intermediates": {"x_inter": [...], "pred_x0": [...]}}`` every
          ``log_every`` steps.
        """
        generator = generator_from_seed(seed, generator)
        device, dtype = sample_placement((x_T, x_start, known), cond, device, dtype)
        start = self.start_index(strength)
        if x_T is not None:
            x = x_T.to(device=device, dtype=dtype)
        elif x_start is not None:
            x = self.noise_to_level(x_start.to(device=device, dtype=dtype), start, generator)
        else:
            if shape is None and known is not None:
                shape = known.shape
            if shape is None:
                raise ValueError("sample() needs shape, x_T, x_start or known")
            x = randn(tuple(shape), generator, device, dtype)
        if mask is not None:
            known = x_start if known is None else known
            if known is None:
                raise ValueError("inpainting needs the known image (known= or x_start=)")
            known = known.to(device=device, dtype=dtype)
            mask = mask.to(device=device, dtype=dtype)
        n = self.num_steps
        log_every = log_every or max(1, (n - start) // 10)
        inter = {"x_inter": [x], "pred_x0": [x]}
        state: dict = {}
        show = self.progress if progress is None else progress
        for k in tqdm(range(start, n), desc=f"{self.name} sampling", disable=not show, leave=False):
            x, pred_x0 = self.step(denoise, x, k, cond, state, generator)
            if mask is not None:
                x = mask * self.noise_to_level(known, k + 1, generator) + (1 - mask) * x
            if callback is not None:
                callback(k, self.sample_timesteps[k], x, pred_x0)
            if return_intermediates and ((k - start + 1) % log_every == 0 or k == n - 1):
                inter["x_inter"].append(x)
                inter["pred_x0"].append(pred_x0)
        if return_intermediates:
            return {"samples": x, "intermediates": inter}
        return x

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.num_steps}, spacing={self.spacing!r}, "
                f"parameterization={self.parameterization!r})")
