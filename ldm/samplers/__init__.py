"""Samplers that know nothing of Lightning: DDPM, DDIM, PLMS, DPM-Solver++(2M), and guidance.

``get_sampler(name, schedule_or_alphas_cumprod, parameterization="eps", **options)`` builds one;
``sampler.sample(denoise, shape, cond=None, x_T=None, generator=None, ...)`` runs it.
Timesteps are 0-based (see :mod:`ldm.diffusion.schedule`).
"""
from .base import Sampler, randn
from .ddim import DDIMSampler, ddim_update
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPlusPlus2MSampler
from .guidance import classifier_free_guidance, gradient_guidance, rescale_guidance, stack_conditions
from .plms import PLMSSampler
from .spacing import SPACINGS, make_timesteps

SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "plms": PLMSSampler,
    "dpm_solver++": DPMSolverPlusPlus2MSampler,
}
ALIASES = {"dpmpp_2m": "dpm_solver++", "dpm_solver": "dpm_solver++", "dpmsolver++": "dpm_solver++",
           "dpm++": "dpm_solver++", "dpm-solver++": "dpm_solver++", "ancestral": "ddpm"}


def get_sampler(name: str, schedule, parameterization: str = "eps", **options) -> Sampler:
    """Build a sampler by name (``ddpm``, ``ddim``, ``plms``, ``dpm_solver++`` / ``dpmpp_2m``).

    ``schedule`` is a :class:`~ldm.diffusion.DiffusionSchedule` or an ``alphas_cumprod`` tensor.
    Options: ``steps``, ``spacing``, ``eta`` (DDIM), ``variance_type`` (DDPM),
    ``clip_denoised``, ``dynamic_threshold``, ``final_alpha_cumprod``, ``progress``,
    ``lower_order_final`` (DPM-Solver++).
    """
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} (aliases {sorted(ALIASES)})")
    cls = SAMPLERS[key]
    if key == "ddpm":
        eta = options.pop("eta", None)
        if eta not in (None, 1.0):  # ancestral DDPM is the eta = 1 member of the DDIM family
            raise ValueError("ddpm sampler takes no eta (use ddim with eta=1 for a DDIM-style stochastic sampler)")
    return cls(schedule, parameterization, **options)


__all__ = [
    "ALIASES", "DDIMSampler", "DDPMSampler", "DPMSolverPlusPlus2MSampler", "PLMSSampler", "SAMPLERS",
    "SPACINGS", "Sampler", "classifier_free_guidance", "ddim_update", "get_sampler", "gradient_guidance",
    "make_timesteps", "randn", "rescale_guidance", "stack_conditions",
]
