"""Samplers that know nothing of Lightning: DDPM, DDIM, PLMS, DPM-Solver++(2M) on the discrete grid,
the sigma-space family (euler, euler_a, heun, dpmpp_2m, dpmpp_2m_sde, dpmpp_2s_a, lms on karras /
exponential / discrete sigmas), and guidance.

``get_sampler(name, schedule_or_alphas_cumprod, parameterization="eps", **options)`` builds one;
``sampler.sample(denoise, shape, cond=None, x_T=None, generator=None, ...)`` runs it.
Timesteps are 0-based (see :mod:`ldm.diffusion.schedule`).
"""
from .base import Sampler, randn
from .ddim import DDIMSampler, ddim_update
from .ddpm import DDPMSampler
from .denoiser import DiscreteDenoiser, gradient_guided_denoiser
from .dpm_solver import DPMSolverPlusPlus2MSampler
from .guidance import (
    classifier_free_guidance,
    condition_batch_size,
    gradient_guidance,
    rescale_guidance,
    stack_conditions,
)
from .k_samplers import K_SAMPLERS
from .plms import PLMSSampler
from .sigma_sampler import ANCESTRAL, SigmaSampler
from .sigmas import SIGMA_SCHEDULES, make_sigmas
from .spacing import SPACINGS, make_timesteps

SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "plms": PLMSSampler,
    "dpm_solver++": DPMSolverPlusPlus2MSampler,
}
ALIASES = {"dpmpp_2m": "dpm_solver++", "dpm_solver": "dpm_solver++", "dpmsolver++": "dpm_solver++",
           "dpm++": "dpm_solver++", "dpm-solver++": "dpm_solver++", "ancestral": "ddpm"}
#: sigma-space samplers (:mod:`.k_samplers`); ``dpmpp_2m`` is one when a ``sigmas`` schedule is given,
#: else the discrete-grid DPM-Solver++(2M) above (the same algorithm on the log-SNR grid)
SIGMA_SAMPLERS = tuple(K_SAMPLERS)
SIGMA_ALIASES = {"euler_ancestral": "euler_a", "dpmpp_2s_ancestral": "dpmpp_2s_a", "k_lms": "lms"}


def resolve_name(name: str, sigmas: str | None = None) -> str:
    """The canonical sampler name: a key of :data:`SAMPLERS` or of :data:`SIGMA_SAMPLERS`."""
    key = str(name).lower()
    key = SIGMA_ALIASES.get(key, key)
    if key == "dpmpp_2m" and sigmas is not None:
        return key
    key = ALIASES.get(key, key)
    if key not in SAMPLERS and key not in SIGMA_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS) + sorted(SIGMA_SAMPLERS)} "
                         f"(aliases {sorted(ALIASES) + sorted(SIGMA_ALIASES)})")
    return key


#: the samplers that take an ``eta``, decided here only: DDIM and PLMS (DDIM Eq. 16's sigma_t scale,
#: default 0) and the ancestral / SDE sigma-space samplers (default 1). ``ddpm`` is the eta = 1
#: member of the DDIM family and takes no other; the rest are deterministic (eta must be 0).
ETA_SAMPLERS = ("ddim", "plms", *ANCESTRAL)


def takes_eta(name: str, sigmas: str | None = None) -> bool:
    """Whether the sampler ``name`` (with ``sigmas``, see :func:`resolve_name`) has an ``eta`` option."""
    return resolve_name(name, sigmas) in ETA_SAMPLERS


def default_eta(name: str, sigmas: str | None = None) -> float:
    """0 for the deterministic samplers, 1 for the ancestral / SDE sigma-space ones."""
    return 1.0 if resolve_name(name, sigmas) in ANCESTRAL else 0.0


def sampler_names() -> list[str]:
    """Every sampler name :func:`get_sampler` accepts (canonical names, then aliases)."""
    return sorted(SAMPLERS) + sorted(SIGMA_SAMPLERS) + sorted(ALIASES) + sorted(SIGMA_ALIASES)


def get_sampler(name: str, schedule, parameterization: str = "eps", **options):
    """Build a sampler by name: ``ddpm``, ``ddim``, ``plms``, ``dpm_solver++`` on the discrete grid, or a
    sigma-space one (``euler``, ``euler_a``, ``heun``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``dpmpp_2s_a``, ``lms``).

    ``schedule`` is a :class:`~ldm.diffusion.DiffusionSchedule` or an ``alphas_cumprod`` tensor.
    Options: ``steps``, ``spacing``, ``eta`` (DDIM; the ancestral sigma samplers), ``variance_type`` (DDPM),
    ``clip_denoised``, ``dynamic_threshold``, ``final_alpha_cumprod``, ``progress``,
    ``lower_order_final`` (DPM-Solver++); sigma samplers: ``sigmas`` (``karras`` | ``exponential`` |
    ``discrete``), ``rho``, ``sigma_min``, ``sigma_max``, ``s_noise``, ``churn``, ``s_tmin``, ``s_tmax``,
    ``order`` (lms), ``quantize``. ``dpmpp_2m`` without ``sigmas`` is the discrete-grid DPM-Solver++(2M).
    """
    sigmas = options.get("sigmas")
    key = resolve_name(name, sigmas)
    if key in SIGMA_SAMPLERS and (key != "dpmpp_2m" or sigmas is not None):
        if options.pop("final_alpha_cumprod", None) is not None:
            raise ValueError("final_alpha_cumprod applies to the discrete-grid samplers; sigma samplers end at sigma 0")
        return SigmaSampler(key, schedule, parameterization, **options)
    if sigmas is not None:
        raise ValueError(f"sigmas={sigmas!r} applies to the sigma-space samplers {list(SIGMA_SAMPLERS)}, not {name!r}")
    options.pop("sigmas", None)
    cls = SAMPLERS[key]
    if key == "ddpm":
        eta = options.pop("eta", None)
        if eta not in (None, 1.0):  # ancestral DDPM is the eta = 1 member of the DDIM family
            raise ValueError("ddpm sampler takes no eta (use ddim with eta=1 for a DDIM-style stochastic sampler)")
    return cls(schedule, parameterization, **options)


__all__ = [
    "ALIASES",
    "ANCESTRAL",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPlusPlus2MSampler",
    "DiscreteDenoiser",
    "ETA_SAMPLERS",
    "K_SAMPLERS",
    "PLMSSampler",
    "SAMPLERS",
    "SIGMA_ALIASES",
    "SIGMA_SAMPLERS",
    "SIGMA_SCHEDULES",
    "SPACINGS",
    "Sampler",
    "SigmaSampler",
    "classifier_free_guidance",
    "condition_batch_size",
    "ddim_update",
    "default_eta",
    "get_sampler",
    "gradient_guidance",
    "gradient_guided_denoiser",
    "make_sigmas",
    "make_timesteps",
    "randn",
    "rescale_guidance",
    "resolve_name",
    "sampler_names",
    "stack_conditions",
    "takes_eta",
]
