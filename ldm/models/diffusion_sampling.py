"""Sampling from a DDPM / LatentDiffusion: the one path from the sampler settings to images.

The model states what the samplers need (its schedule, parameterisation, variance type, its
``denoiser()``, the options it implies, the null condition for guidance); :mod:`ldm.samplers`, which
knows nothing of Lightning, does the rest. The same path serves ``model.sample`` (the Python API),
``log_images`` (the image logger) and ``python -m ldm.cli.sample`` (which hands a sampler it built
once to :meth:`DiffusionSampling.run_sampler`).

Settings: explicit arguments over the YAML ``sampler_config`` over the built-in defaults (DDIM,
50 steps, eta 0; 1 for the ancestral sigma samplers). Which samplers take an ``eta`` is
:func:`ldm.samplers.takes_eta`'s decision.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class GuidanceError(ValueError):
    """Classifier-free guidance was asked for (``guidance_scale != 1``) without a null condition."""


class DiffusionSampling:
    """Sampling methods of :class:`~ldm.models.ddpm.DDPM` (a mixin of the LightningModule)."""

    # ------------------------------------------------------------------ facts
    @staticmethod
    def supported_samplers() -> list[str]:
        """The sampler names :meth:`build_sampler` accepts (see :func:`ldm.samplers.get_sampler`)."""
        from ldm.samplers import sampler_names

        return sampler_names()

    @staticmethod
    def sampler_takes_eta(name: str, sigmas: str | None = None) -> bool:
        """Whether the sampler ``name`` has an ``eta`` (:func:`ldm.samplers.takes_eta`)."""
        from ldm.samplers import takes_eta

        return takes_eta(name, sigmas)

    @property
    def first_stage_factor(self) -> int:
        """Pixels per model-space cell along each side: 1 in pixel space (LatentDiffusion: ``f``)."""
        return 1

    @property
    def image_channels(self) -> int:
        """Channels of the images the model draws."""
        return int(self.channels)

    @property
    def unet_downsampling(self) -> int:
        """How often the UNet halves its input: the model-space side must be a multiple of this."""
        mult = getattr(self.model.diffusion_model, "channel_mult", None)
        return 2 ** (len(mult) - 1) if mult else 1

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (first-stage factor x UNet downsampling). Any such size
        works, also larger than trained: the UNet is convolutional (LDM Sec. 4.3.2)."""
        return self.first_stage_factor * self.unet_downsampling

    @property
    def trained_image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of the images the model was trained on."""
        size = self.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(h) * self.first_stage_factor, int(w) * self.first_stage_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, H/f, W/f)``: the model-space shape of an image size (ValueError if the size does not fit)."""
        step = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if value < step or value % step:
                raise ValueError(f"{name} {value} must be a positive multiple of {step}")
        f = self.first_stage_factor
        return int(self.channels), height // f, width // f

    def condition_kind(self) -> str:
        """``none``: a pixel-space DDPM is unconditional (LatentDiffusion: see its conditioning stage)."""
        return "none"

    def class_labels(self) -> list[int]:
        """The class indices a caller may ask for: none (an unconditional model)."""
        return []

    def text_input_key(self) -> str | None:
        """The batch key of a caption input besides spatial inputs (a hybrid model's), else None."""
        return None

    def spatial_inputs(self) -> list[tuple[str, int, float]]:
        """``(batch key, channels, input pixels per latent cell)`` of the spatial (concat) inputs: none here."""
        return []

    def extra_sampling_inputs(self, n: int) -> dict:
        """Further batch entries a sampling batch of ``n`` rows needs (none here)."""
        return {}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model space (the identity in pixel space)."""
        return images

    # ------------------------------------------------------------------ sampling
    def sample_shape(self, batch_size: int, shape: Sequence[int] | None = None) -> tuple:
        if shape is not None:
            return (batch_size, *shape)
        size = self.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.channels, h, w)

    def denoiser(self):
        """``denoise(x_t, t, cond) -> model output`` for the samplers (2C channels with learned variances)."""
        def denoise(x_t, t, cond=None):
            return self.apply_model(x_t, t, cond)
        return denoise

    def sampler_defaults(self) -> dict:
        """Sampler options implied by the model (pixel space: clip the x0 estimate like the original)."""
        return {"clip_denoised": self.clip_denoised}

    def decode_samples(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)

    def sampler_settings(self, sampler: str | None = None, steps: int | None = None,
                         eta: float | None = None) -> tuple[str, int, float, dict]:
        """(name, steps, eta, options): explicit arguments over the YAML ``sampler_config`` over the
        built-in defaults (DDIM, 50 steps, eta 0; 1 for ancestral sigma samplers), plus the options the model
        implies. The config's ``eta`` applies to the config's sampler only."""
        from ldm.samplers import SAMPLERS, default_eta, resolve_name

        cfg = {"sampler": "ddim", "steps": 50, "eta": None, **self.sampler_config}
        options = {k: v for k, v in cfg.items() if k not in ("sampler", "steps", "eta")}
        options = {**self.sampler_defaults(), "variance_type": self.variance_type, **options}
        name = str(sampler or cfg["sampler"])
        if options.get("sigmas") is not None and resolve_name(name, options["sigmas"]) in SAMPLERS:
            options.pop("sigmas")  # a config's sigma schedule does not apply to a discrete-grid sampler
        if eta is None and (sampler is None or sampler == cfg["sampler"]):  # the config's eta goes with its sampler
            eta = cfg["eta"]
        if eta is None:  # 0, or 1 for the ancestral sigma-space samplers (euler_a, dpmpp_2s_a, dpmpp_2m_sde)
            eta = default_eta(name, options.get("sigmas"))
        return name, int(steps if steps is not None else cfg["steps"]), float(eta), options

    def build_sampler(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                      progress: bool = False, **options):
        """A :mod:`ldm.samplers` sampler for this model's schedule and parameterisation."""
        from ldm.samplers import get_sampler, takes_eta

        name, steps, eta, defaults = self.sampler_settings(sampler, steps, eta)
        if options.get("sigmas", "") is None:  # not given: the sampler_config's, if any
            options.pop("sigmas")
        options = {**defaults, **options}
        if eta != 0.0 or takes_eta(name, options.get("sigmas")):  # a non-zero eta reaches the sampler's check
            options["eta"] = eta
        return get_sampler(name, self.schedule, self.parameterization, steps=steps, progress=progress, **options)

    def guided_denoiser(self, null_cond=None, guidance_scale: float = 1.0, guidance_rescale: float = 0.0):
        """The denoiser, wrapped in :func:`ldm.samplers.classifier_free_guidance` when the scale is not 1
        (conditional and null condition in one batched forward per step)."""
        from ldm.samplers import classifier_free_guidance

        denoise = self.denoiser()
        if guidance_scale == 1.0:
            return denoise
        if null_cond is None:
            raise GuidanceError("guidance_scale != 1 needs a null condition; this model has none (unconditional, "
                             "or its conditioner provides no null_condition)")
        return classifier_free_guidance(denoise, null_cond, guidance_scale, rescale=guidance_rescale,
                                        learned_variance=self.variance_type in ("learned", "learned_range"))

    def run_sampler(self, batch_size: int, cond=None, null_cond=None, *, sampler=None,
                    steps: int | None = None, eta: float | None = None, guidance_scale: float = 1.0,
                    guidance_rescale: float = 0.0, shape=None, x_T=None, generator=None,
                    progress: bool = False, sample_kwargs: dict | None = None, **options):
        """Draw in model space. ``sampler``: a name (built by :meth:`build_sampler` with ``steps``, ``eta``
        and the constructor ``options``) or an already built sampler. ``sample_kwargs`` go to its ``sample``
        call (e.g. ``x_start``/``strength`` for image-to-image, ``mask``/``known`` for inpainting)."""
        if sampler is not None and not isinstance(sampler, str):
            if steps is not None or eta is not None or options:
                raise ValueError("a built sampler takes no steps / eta / sampler options; pass its name instead")
            sampler_obj = sampler
        else:
            sampler_obj = self.build_sampler(sampler, steps, eta, progress=progress, **options)
        denoise = self.guided_denoiser(null_cond, guidance_scale, guidance_rescale)
        kwargs = {"shape": self.sample_shape(batch_size, shape), **(sample_kwargs or {})}
        return sampler_obj.sample(denoise, cond=cond, x_T=x_T, generator=generator, device=self.device,
                                  dtype=torch.float32, **kwargs)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, *, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, shape=None, x_T=None, generator=None, use_ema: bool = True,
               progress: bool = False, **options) -> torch.Tensor:
        """``batch_size`` images in [-1, 1] (DDIM with 50 steps by default; EMA weights by default)."""
        with self.maybe_ema_scope(use_ema):
            x = self.run_sampler(int(batch_size), sampler=sampler, steps=steps, eta=eta, shape=shape, x_T=x_T,
                                 generator=generator, progress=progress, **options)
        return self.decode_samples(x)

    @torch.no_grad()
    def log_images(self, batch: Mapping, N: int = 8, n_row: int = 2, sample: bool = True, ddim_steps: int = 50,
                   ddim_eta: float | None = None, plot_diffusion_rows: bool = False, split: str | None = None,
                   sampler: str | None = None, sigmas: str | None = None, **kwargs) -> dict:
        """Images for the ImageLogger, all ``B×C×H×W`` in [-1, 1]: ``inputs``, ``diffusion_row``
        (optional) and ``samples`` (a cheap ``ddim_steps`` run with the EMA weights; ``sampler`` / ``sigmas``
        over the ``sampler_config``, e.g. ``log_images_kwargs: {sampler: dpmpp_2m, sigmas: karras}``)."""
        x = self.get_input(batch, self.first_stage_key)[:N].to(self.device)
        out = {"inputs": x}
        if plot_diffusion_rows:
            out["diffusion_row"] = self.diffusion_row(x[:n_row])
        if sample:
            out["samples"] = self.sample(x.shape[0], sampler=sampler, steps=ddim_steps, eta=ddim_eta, sigmas=sigmas)
        return out

    def diffusion_row(self, x: torch.Tensor, n_steps: int = 5) -> torch.Tensor:
        """``x`` noised at ``n_steps`` evenly spaced timesteps, stacked sample-major."""
        rows = []
        for step in torch.linspace(0, self.num_timesteps - 1, n_steps).long().tolist():
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            rows.append(self.decode_samples(self.q_sample(x, t)))
        return torch.stack(rows, dim=1).flatten(0, 1)
