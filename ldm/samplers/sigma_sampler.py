"""The sigma-space solvers behind the common sampler interface (``get_sampler("euler", ...)``).

:class:`SigmaSampler` turns the discrete model ``denoise(x_t, t, cond)`` the other samplers take
into ``D(x, sigma, cond)`` (:class:`~ldm.samplers.denoiser.DiscreteDenoiser`), builds the sigma
schedule (:func:`~ldm.samplers.sigmas.make_sigmas`) and runs one solver of
:mod:`ldm.samplers.k_samplers`. ``sample()`` takes the same arguments as
:meth:`ldm.samplers.base.Sampler.sample`; ``x_T`` is a sample of the model's (variance-preserving)
space at the first level, so the solver starts from ``x_T sqrt(1 + sigma_0^2)``. Image-to-image
runs the last ``int(strength steps)`` steps from ``x_start + sigma eps`` at that step's sigma;
inpainting replaces the ``mask == 1`` region with ``known + sigma_{i+1} eps`` after every step.
The samples come back at sigma = 0, where both views agree.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..diffusion.gaussian import q_sample_at
from ..diffusion.schedule import as_schedule
from .base import generator_from_seed, randn, sample_placement, start_index
from .denoiser import DiscreteDenoiser
from .k_samplers import K_SAMPLER_OPTIONS, K_SAMPLERS
from .sigmas import SIGMA_SCHEDULES, make_sigmas

#: the sigma-space samplers with an ``eta`` option (ancestral / SDE; it defaults to 1), read from
#: the solvers' option table; the others are deterministic
ANCESTRAL = tuple(name for name, takes in K_SAMPLER_OPTIONS.items() if "eta" in takes)


class SigmaSampler:
    """One k-diffusion-style solver on a named sigma schedule (``karras`` by default)."""

    def __init__(self, name: str, schedule, parameterization: str = "eps", steps: int = 20,
                 sigmas: str | None = "karras", rho: float = 7.0, spacing: str = "uniform",
                 sigma_min: float | None = None, sigma_max: float | None = None, eta: float | None = None,
                 s_noise: float = 1.0, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 order: int = 4, variance_type: str = "fixed_small", clip_denoised: bool = False,
                 dynamic_threshold: float | None = None, quantize: bool = False, progress: bool = False):
        if name not in K_SAMPLERS:
            raise ValueError(f"unknown sigma-space sampler {name!r}; choose one of {sorted(K_SAMPLERS)}")
        self.name = name
        self.schedule = as_schedule(schedule)
        self.parameterization = parameterization
        self.sigma_schedule = "karras" if sigmas is None else str(sigmas)
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"unknown sigma schedule {sigmas!r}; choose one of {SIGMA_SCHEDULES}")
        self.sigmas = make_sigmas(self.sigma_schedule, self.schedule, steps, rho, spacing, sigma_min, sigma_max)
        self.steps = steps
        takes = K_SAMPLER_OPTIONS[name]
        if eta is not None and name not in ANCESTRAL and eta != 0.0:
            raise ValueError(f"{name} is deterministic; eta must be 0 (ancestral samplers: {', '.join(ANCESTRAL)})")
        if eta is not None and eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if churn and "churn" not in takes:
            raise ValueError(f"churn applies to euler and heun, not {name}")
        if "order" in takes and not 1 <= int(order) <= 4:
            raise ValueError(f"lms order must be in 1..4, got {order}")
        given = {"eta": 1.0 if eta is None else float(eta), "s_noise": float(s_noise), "churn": float(churn),
                 "s_tmin": float(s_tmin), "s_tmax": float(s_tmax), "order": int(order)}
        self.options = {k: given[k] for k in takes}
        self.denoiser_options = {"parameterization": parameterization, "variance_type": variance_type,
                                 "clip_denoised": clip_denoised, "dynamic_threshold": dynamic_threshold,
                                 "quantize": quantize}
        DiscreteDenoiser(None, self.schedule, **self.denoiser_options)  # validate the options now
        self.progress = progress

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.numel()) - 1

    @property
    def eta(self) -> float:
        return self.options.get("eta", 0.0)

    def denoiser(self, denoise: Callable) -> DiscreteDenoiser:
        """``D(x, sigma, cond)`` of a discrete model ``denoise(x_t, t, cond)``."""
        return DiscreteDenoiser(denoise, self.schedule, **self.denoiser_options)

    def start_index(self, strength: float) -> int:
        return start_index(strength, self.num_steps)

    @torch.no_grad()
    def sample(self, denoise: Callable, shape=None, cond=None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, seed: int | None = None,
               x_start: torch.Tensor | None = None, strength: float = 1.0,
               mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
               callback: Callable | None = None, return_intermediates: bool = False,
               log_every: int | None = None, device=None, dtype: torch.dtype | None = None,
               progress: bool | None = None, sigma_space: bool = False):
        """Draw samples (arguments as :meth:`ldm.samplers.base.Sampler.sample`). ``denoise`` is the
        discrete model, or with ``sigma_space=True`` already a denoiser ``D(x, sigma, cond) -> x0``.
        ``callback(k, sigma, x, pred_x0)`` after each step."""
        generator = generator_from_seed(seed, generator)
        device, dtype = sample_placement((x_T, x_start, known), cond, device, dtype)
        start = self.start_index(strength)
        sigmas = self.sigmas[start:]
        sigma_0 = float(sigmas[0])
        if x_T is not None:
            x = x_T.to(device=device, dtype=dtype) * math.sqrt(1.0 + sigma_0**2)
        elif x_start is not None:
            x0 = x_start.to(device=device, dtype=dtype)
            x = q_sample_at(x0, 1.0, sigma_0, randn(x0.shape, generator, device, dtype))
        else:
            if shape is None and known is not None:
                shape = known.shape
            if shape is None:
                raise ValueError("sample() needs shape, x_T, x_start or known")
            x = randn(tuple(shape), generator, device, dtype) * math.sqrt(1.0 + sigma_0**2)
        if mask is not None:
            known = x_start if known is None else known
            if known is None:
                raise ValueError("inpainting needs the known image (known= or x_start=)")
            known = known.to(device=device, dtype=dtype)
            mask = mask.to(device=device, dtype=dtype)
        D = denoise if sigma_space else self.denoiser(denoise)
        n = len(sigmas) - 1
        log_every = log_every or max(1, n // 10)
        inter = {"x_inter": [x], "pred_x0": [x]}
        show = self.progress if progress is None else progress
        bar = tqdm(total=n, desc=f"{self.name} sampling", disable=not show, leave=False)

        def after_step(i, sigma, x_next, denoised):
            if mask is not None:
                level = float(sigmas[i + 1])
                if level == 0.0:
                    noisy = known
                else:
                    noisy = q_sample_at(known, 1.0, level, randn(known.shape, generator, device, dtype))
                x_next = mask * noisy + (1 - mask) * x_next
            if callback is not None:
                callback(start + i, sigma, x_next, denoised)
            if return_intermediates and ((i + 1) % log_every == 0 or i == n - 1):
                inter["x_inter"].append(x_next)
                inter["pred_x0"].append(denoised)
            bar.update(1)
            return x_next

        try:
            x = K_SAMPLERS[self.name](D, x, sigmas, cond, generator=generator, callback=after_step, **self.options)
        finally:
            bar.close()
        if return_intermediates:
            return {"samples": x, "intermediates": inter}
        return x

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options.items())
        return (f"SigmaSampler({self.name!r}, steps={self.num_steps}, sigmas={self.sigma_schedule!r}, "
                f"parameterization={self.parameterization!r}{extra})")
