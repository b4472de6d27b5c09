"""Latent diffusion (LDM Sec. 3.2-3.3): the DDPM of :mod:`ldm.models.ddpm` run on
``z = scale_factor * E(x)`` of a frozen first stage, optionally conditioned (LDM Eq. 3).

    L_LDM = E_{E(x), y, eps, t} || eps - eps_theta(z_t, t, tau_theta(y)) ||^2        (LDM Eq. 2-3)

The first stage (:class:`~ldm.models.first_stage.FirstStage`: encoding, decoding, ``scale_by_std``),
the conditioning stage (:class:`~ldm.models.condition_stage.ConditionStage`: tau_theta, CFG dropout, null
condition) and sampling (:class:`~ldm.models.diffusion_sampling.DiffusionSampling`) are mixins of their
own files; this one builds the model and holds the training step. ``conditioning_key`` routes the
condition: ``concat`` (channel concat), ``crossattn`` (context), ``adm`` (``y``) or ``hybrid`` (a dict
with both).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ldm.data.contracts import check_first_stage
from ldm.models.condition_stage import ConditionStage
from ldm.models.ddpm import DDPM
from ldm.models.first_stage import FirstStage, check_loaded_scale_factor, freeze
from ldm.util import FIRST_STAGE, UNCONDITIONAL

__all__ = ["FIRST_STAGE", "UNCONDITIONAL", "LatentDiffusion", "check_loaded_scale_factor", "freeze"]


def _as_picture(value, size) -> torch.Tensor | None:
    """An image-like raw condition (3-channel image in [-1, 1], or a 1-channel mask in [0, 1]) as a
    3-channel picture of the logged size, for the image log; None for anything else."""
    if not (isinstance(value, torch.Tensor) and value.ndim == 4 and value.is_floating_point()):
        return None
    if value.shape[1] == 1:
        value = (value * 2.0 - 1.0).repeat(1, 3, 1, 1)
    elif value.shape[1] != 3:
        return None
    value = value.float()
    if tuple(value.shape[-2:]) != tuple(size):
        value = torch.nn.functional.interpolate(value, size=tuple(size), mode="nearest")
    return value.clamp(-1, 1)


def sampling_request(cond_or_batch_size: Any, batch_size: int | None, inputs: Any) -> tuple[int | None, Any]:
    """``(batch_size, inputs)`` of a :meth:`LatentDiffusion.sample` call: the positional shorthand (an
    int is a batch size, anything else the raw inputs) routed to the explicit arguments."""
    if cond_or_batch_size is None:
        return batch_size, inputs
    if batch_size is not None or inputs is not None:
        raise ValueError("pass what to sample either positionally or as batch_size= / inputs=, not both")
    if isinstance(cond_or_batch_size, int):
        return cond_or_batch_size, None
    return None, cond_or_batch_size


class LatentDiffusion(FirstStage, ConditionStage, DDPM):
    """Original parameters (``first_stage_config``, ``cond_stage_config``, ``num_timesteps_cond``,
    ``cond_stage_key``, ``cond_stage_trainable``, ``concat_mode``, ``cond_stage_forward``,
    ``conditioning_key``, ``scale_factor``, ``scale_by_std``) plus ``scale_by_std_batches`` and
    ``cond_stage_lr`` (the conditioner's own learning rate; default: the model's) and ``lora``
    (``{rank, alpha, dropout, target_modules}``: train LoRA adapters of the UNet only, injected after
    ``ckpt_path`` is loaded; see :mod:`ldm.lora`). Everything else goes to
    :class:`~ldm.models.ddpm.DDPM` (``ckpt_path`` is loaded after the first stage is built)."""

    def __init__(self, first_stage_config, cond_stage_config, num_timesteps_cond: int | None = None,
                 cond_stage_key: str = "image", cond_stage_trainable: bool = False, concat_mode: bool = True,
                 cond_stage_forward: str | None = None, conditioning_key: str | None = None,
                 scale_factor: float = 1.0, scale_by_std: bool = False, *args,
                 scale_by_std_batches: int = 4, cond_stage_lr: float | None = None,
                 concat_mask_key: str | None = None, lora: Mapping | None = None, **kwargs):
        self.num_timesteps_cond = 1 if num_timesteps_cond is None else int(num_timesteps_cond)
        if not 1 <= self.num_timesteps_cond <= kwargs.get("timesteps", 1000):
            raise ValueError(f"num_timesteps_cond must be in [1, timesteps], got {num_timesteps_cond}")
        self.scale_by_std = scale_by_std
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == UNCONDITIONAL:
            conditioning_key = None
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", ())
        only_model = kwargs.pop("load_only_unet", False)
        trust_checkpoint = kwargs.pop("trust_checkpoint", False)
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.cond_stage_forward = cond_stage_forward
        self.cond_stage_lr = cond_stage_lr
        if concat_mask_key is not None and conditioning_key not in ("concat", "hybrid"):
            raise ValueError("concat_mask_key needs conditioning_key 'concat' or 'hybrid'")
        self.concat_mask_key = concat_mask_key
        if scale_by_std_batches < 1:
            raise ValueError(f"scale_by_std_batches must be >= 1, got {scale_by_std_batches}")
        self.scale_by_std_batches = int(scale_by_std_batches)
        if not scale_by_std:
            self.scale_factor = float(scale_factor)
        else:
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self._scale_factor_fitted = False
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=only_model,
                                trust_checkpoint=trust_checkpoint)
            self.restarted_from_ckpt = True
        self.lora_settings = None
        if lora is not None:
            from ldm.lora import apply_lora

            apply_lora(self, lora)

    # ------------------------------------------------------------------ building
    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=1e-4,
                          linear_end=2e-2, cosine_s=8e-3) -> None:
        super().register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            # the condition is noised at num_timesteps_cond evenly spread levels (the original's cond_ids)
            ids = torch.full((self.num_timesteps,), self.num_timesteps - 1, dtype=torch.long, device="cpu")
            ids[: self.num_timesteps_cond] = torch.linspace(0, self.num_timesteps - 1, self.num_timesteps_cond,
                                                            device="cpu").round().long()
            self._set_buffer("cond_ids", ids, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "first_stage_model", None) is not None:
            self.first_stage_model.eval()
        if getattr(self, "cond_stage_model", None) is not None and not self.cond_stage_trainable:
            self.cond_stage_model.eval()
        return self

    def sampler_defaults(self) -> dict:
        return {}  # latents are not confined to [-1, 1]: no clipping of the x0 estimate

    def on_train_start(self) -> None:
        # a latent cache must come from this first stage
        check_first_stage(getattr(self.trainer.train_dataloader, "dataset", None), self.first_stage_model)
        # a loaded checkpoint that holds a scale_factor (resume, ckpt_path, --init-from) is never re-estimated
        if not self.scale_by_std or self._scale_factor_fitted:
            return
        loader = self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("scale_by_std needs the training dataloader to estimate the latent std")
        batches = []
        for i, batch in enumerate(loader):
            if i >= self.scale_by_std_batches:
                break
            batches.append(batch)
        value = self.estimate_scale_factor(batches)
        print(f"[{type(self).__name__}] scale_by_std: scale_factor = {value:.6f} "
              f"(1/std of the latents of {len(batches)} batch(es) per rank)")
        if self.logger is not None:
            self.logger.log_metrics({"scale_factor": value}, step=self.global_step)

    def prepare_state_dict(self, state_dict: Mapping) -> dict:
        state_dict = dict(state_dict)
        if "scale_factor" in state_dict:
            if self.scale_by_std:
                check_loaded_scale_factor(state_dict["scale_factor"])
                self._scale_factor_fitted = True
            else:
                loaded = float(state_dict.pop("scale_factor"))
                if abs(loaded - self.scale_factor) > 1e-6 * max(1.0, abs(loaded)):
                    print(f"[{type(self).__name__}] checkpoint scale_factor {loaded:.6f} ignored: the config sets "
                          f"scale_factor={self.scale_factor} with scale_by_std=False")
        return super().prepare_state_dict(state_dict)

    # ------------------------------------------------------------------ training
    def get_input(self, batch: Mapping, k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None):
        """Original interface: ``[z, c]`` (+ ``x, xrec`` with ``return_first_stage_outputs``, + the raw
        condition with ``return_original_cond``). ``c`` is the learned conditioning."""
        x = self.image_from_batch(batch, k)[:bs].to(self.device)
        z = self.encode_to_latent(x)  # the original interface always encodes images
        key = cond_key or self.cond_stage_key
        c = xc = None
        if self.cond_stage_model is not None:
            saved, self.cond_stage_key = self.cond_stage_key, key
            try:
                xc = self.raw_condition(batch, bs)
                c = self.condition_from_batch(batch, bs)
            finally:
                self.cond_stage_key = saved
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_original_cond:
            out.append(xc)
        return out

    def shared_step(self, batch: Mapping, **kwargs):
        z = self.latents_from_batch(batch)
        self._batch_size = z.shape[0]
        cond = self.condition_from_batch(batch)
        return self(z, cond, **kwargs)

    def forward(self, x: torch.Tensor, c=None, *args, **kwargs):
        t = kwargs.pop("t", None)
        if t is None:
            t = self.sample_timesteps(x.shape[0], x.device)
        if self.shorten_cond_schedule and isinstance(c, torch.Tensor):
            c = self.q_sample(c, self.cond_ids[t], torch.randn_like(c.float()))
        return self.p_losses(x, c, t, *args, **kwargs)

    def p_losses(self, x_start: torch.Tensor, cond, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Original signature: the loss of latents ``x_start`` under conditioning ``cond`` at ``t``."""
        return self.diffusion_loss(x_start, cond, t, noise)

    def parameter_groups(self) -> list:
        groups = super().parameter_groups()
        if self.cond_stage_trainable and self.cond_stage_model is not None and not self.cond_is_first_stage:
            params = [p for p in self.cond_stage_model.parameters() if p.requires_grad]
            if params:
                group: dict[str, Any] = {"params": params}
                if self.cond_stage_lr is not None:
                    group["lr"] = float(self.cond_stage_lr)
                groups.append(group)
        return groups

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, cond_or_batch_size: Any = None, *, batch_size: int | None = None, inputs: Any = None,
               conditioning=None, negative=None, null_conditioning=None, sampler=None, steps: int | None = None,
               eta: float | None = None, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
               shape: Sequence[int] | None = None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, use_ema: bool = True, return_latents: bool = False,
               progress: bool = False, **options) -> torch.Tensor:
        """Generate images in [-1, 1].

        What to draw, one of: ``batch_size`` (unconditional models; default 16); ``inputs``, raw
        conditions such as a tensor of class labels, a list of captions, a batch dict or a
        conditioner stack's input dict, conditioning images; ``conditioning``, an already learned
        condition. The positional ``cond_or_batch_size`` is shorthand for these: an int is
        ``batch_size``, anything else ``inputs`` (``model.sample(16)``, ``model.sample(labels)``).

        ``guidance_scale`` != 1 applies classifier-free guidance with the conditioner's null condition,
        or with ``null_conditioning`` (learned), or with the condition of ``negative`` (a negative
        prompt: raw, or ``{input_key: raw}`` for a stack). ``shape`` is the latent ``(C, h, w)``
        (default: trained size; larger sizes give convolutional sampling). ``sampler``: a name (with
        ``steps`` / ``eta`` / sampler ``options`` over the ``sampler_config``) or a sampler built by
        :meth:`build_sampler`. ``sample_kwargs`` (in ``options``) go to the sampler's ``sample`` call
        (image-to-image, inpainting). ``return_latents`` skips decoding.
        """
        batch_size, inputs = sampling_request(cond_or_batch_size, batch_size, inputs)
        with self.maybe_ema_scope(use_ema):
            batch_size, cond, null = self.sampling_conditions(batch_size, inputs, conditioning, negative,
                                                              null_conditioning)
            z = self.run_sampler(batch_size, cond, null, sampler=sampler, steps=steps, eta=eta,
                                 guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, shape=shape,
                                 x_T=x_T, generator=generator, progress=progress, **options)
        return z if return_latents else self.decode_samples(z)

    @torch.no_grad()
    def log_images(self, batch: Mapping, N: int = 8, n_row: int = 4, sample: bool = True, ddim_steps: int = 50,
                   ddim_eta: float | None = None, guidance_scale: float = 1.0, plot_diffusion_rows: bool = False,
                   split: str | None = None, unconditional_guidance_scale: float | None = None,
                   sampler: str | None = None, sigmas: str | None = None, **kwargs) -> dict:
        """Images for the ImageLogger, ``B×C×H×W`` in [-1, 1]: ``inputs``, ``reconstruction``,
        ``conditioning`` (image conditions), ``diffusion_row`` (optional), ``samples`` (a cheap
        ``ddim_steps`` run with EMA weights; ``sampler`` / ``sigmas`` over the ``sampler_config``) and
        ``samples_cfg_scale_<s>`` when guided."""
        if unconditional_guidance_scale is not None:
            guidance_scale = unconditional_guidance_scale
        z = self.latents_from_batch(batch, N, sample=False)
        n = z.shape[0]
        out = {"reconstruction": self.decode_samples(z)}
        if self.first_stage_key in batch:  # a latent-cache batch holds no image
            out["inputs"] = self.image_from_batch(batch, self.first_stage_key)[:n].to(self.device).clamp(-1, 1)
        raw = self.raw_condition(batch, n) if self.cond_stage_model is not None else None
        size = out["reconstruction"].shape[-2:]
        for name, value in (raw.items() if isinstance(raw, Mapping) else [("", raw)]):
            shown = _as_picture(value, size)
            if shown is not None:
                out["conditioning" + (f"_{name}" if name else "")] = shown
        if plot_diffusion_rows:
            out["diffusion_row"] = self.diffusion_row(z[:n_row])
        if sample:
            inputs = raw
            if self.concat_mask_key is not None:
                inputs = {k: v[:n] for k, v in batch.items() if k in (self.cond_stage_key, self.concat_mask_key)}
            settings = {"batch_size": n if inputs is None else None, "inputs": inputs, "sampler": sampler,
                        "steps": ddim_steps, "eta": ddim_eta, "sigmas": sigmas}
            out["samples"] = self.sample(**settings)
            if guidance_scale != 1.0 and self.can_guide:
                out[f"samples_cfg_scale_{guidance_scale:.2f}"] = self.sample(**settings, guidance_scale=guidance_scale)
        return out
