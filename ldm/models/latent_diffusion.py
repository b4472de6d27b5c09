"""Latent diffusion (LDM Sec. 3.2-3.3): the DDPM of :mod:`ldm.models.ddpm` run on
``z = scale_factor * E(x)`` of a frozen first stage, optionally conditioned (LDM Eq. 3).

    L_LDM = E_{E(x), y, eps, t} || eps - eps_theta(z_t, t, tau_theta(y)) ||^2        (LDM Eq. 2-3)

First stage: any module with ``latent_moments(x) -> (mean, std)`` and ``decode_latent(z)`` (KL, VQ
interface, identity); a latent is ``mean + std * eps``. It is frozen: eval mode, no gradients.
``scale_by_std`` (LDM Sec. G: rescale the latent to unit standard deviation) sets
``scale_factor = 1 / std(z)`` at the start of training from ``scale_by_std_batches`` batches,
summed over all ranks; it is a buffer, saved with the model and never re-estimated once loaded.

Conditioning: ``cond_stage_config`` is a conditioner config (or a built module), ``"__is_unconditional__"`` or
``"__is_first_stage__"`` (the condition is the first-stage latent of ``batch[cond_stage_key]``).
Conditioners following the contract of ``docs/architecture.md`` (``encode(raw, drop_mask)``,
``null_condition``, ``ucg_rate``) get classifier-free-guidance dropout during training and a null
condition for guided sampling; other modules (e.g. ``torch.nn.Identity``) are called as in the
original (``encode`` if present, else ``forward``). ``conditioning_key`` routes the result:
``concat`` (channel concat), ``crossattn`` (context), ``adm`` (``y``) or ``hybrid`` (a dict with both).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ldm.models.conditioning import BARE_TENSOR_ENTRY, concat_inputs
from ldm.models.ddpm import DDPM
from ldm.util import ConfigError, instantiate_from_config

UNCONDITIONAL = "__is_unconditional__"
FIRST_STAGE = "__is_first_stage__"


def check_loaded_scale_factor(value) -> None:
    """A checkpoint's ``scale_factor`` must be finite: a NaN one (estimated from bad data by an older
    version) would make every later step non-finite, and a loaded factor is never re-estimated."""
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(
            f"the checkpoint holds scale_factor={value}, which is not finite (it was estimated from NaN/Inf data); "
            "it cannot be resumed. To re-estimate it from clean data, start a new run from these weights: "
            "main.py -b CONFIG -t model.params.ckpt_path=CKPT 'model.params.ignore_keys=[scale_factor]'")


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


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


class LatentDiffusion(DDPM):
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

    def instantiate_first_stage(self, config) -> None:
        try:
            if isinstance(config, nn.Module):
                model = config
            else:
                model = instantiate_from_config(config, node="first_stage_config")
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith("first_stage_config") else
                              f"first_stage_config: {message}") from err
        if model is None:
            raise ConfigError("first_stage_config must build a first stage (use IdentityFirstStage for pixel space)")
        self.first_stage_model = _freeze(model)

    def instantiate_cond_stage(self, config) -> None:
        self.cond_is_first_stage = config == FIRST_STAGE
        if config == UNCONDITIONAL:
            self.cond_stage_model = None
            return
        if self.cond_is_first_stage:
            print(f"{type(self).__name__}: using the first stage as the cond stage")
            self.cond_stage_model = self.first_stage_model
            return
        model = config if isinstance(config, nn.Module) else instantiate_from_config(config, node="cond_stage_config")
        self.cond_stage_model = model if self.cond_stage_trainable else _freeze(model)
        if self.is_stack:
            model.attach_first_stage(lambda x: self.encode_to_latent(x, sample=False))
        output_key = getattr(model, "output_key", None)
        expected = BARE_TENSOR_ENTRY.get(self.conditioning_key)
        if output_key is not None and expected is not None and output_key != expected:
            raise ConfigError(f"cond_stage_config: {type(model).__name__} produces a {output_key!r} condition but "
                              f"conditioning_key={self.conditioning_key!r} feeds {expected!r}")

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "first_stage_model", None) is not None:
            self.first_stage_model.eval()
        if getattr(self, "cond_stage_model", None) is not None and not self.cond_stage_trainable:
            self.cond_stage_model.eval()
        return self

    # ------------------------------------------------------------------ first stage
    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor):
        """The first stage's own ``encode`` (a posterior for KL, the pre-quantisation latent for VQ)."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior) -> torch.Tensor:
        """A scaled latent from :meth:`encode_first_stage`'s output (a sample of a posterior, or the
        tensor itself), or from a ``(mean, std)`` pair."""
        if isinstance(encoder_posterior, tuple) and len(encoder_posterior) == 2:
            return self._scaled_latent(*encoder_posterior, sample=True)
        if isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        elif callable(getattr(encoder_posterior, "sample", None)):
            z = encoder_posterior.sample()
        else:
            raise TypeError(f"cannot get a latent from a {type(encoder_posterior).__name__}")
        return self.scale_factor * z

    @torch.no_grad()
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled ``(mean, std)`` of the first-stage latent of images ``x``."""
        first = self.first_stage_model
        if hasattr(first, "latent_moments"):
            mean, std = first.latent_moments(x)
        else:  # a plain module with the original encode(): posterior or tensor
            enc = first.encode(x)
            mean = enc.mean if hasattr(enc, "mean") and isinstance(enc.mean, torch.Tensor) else enc
            std = enc.std if hasattr(enc, "std") and isinstance(enc.std, torch.Tensor) else torch.zeros_like(mean)
        return mean.float(), std.float()

    @torch.no_grad()
    def batch_latent_moments(self, batch: Mapping, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled latent ``(mean, std)`` of a batch: read from a latent-cache batch (``latent_mean`` /
        ``latent_std``, see :mod:`ldm.data.latent_cache`; no encoder runs), else encoded from
        ``batch[first_stage_key]``."""
        from ldm.data.latent_cache import cached_moments

        moments = cached_moments(batch, n, self.device)
        if moments is not None:
            return moments
        x = self.image_from_batch(batch, self.first_stage_key)[:n].to(self.device)
        return self.latent_moments(x)

    def _scaled_latent(self, mean: torch.Tensor, std: torch.Tensor, sample: bool) -> torch.Tensor:
        """``scale_factor * (mean + std * eps)`` (or the scaled mean with ``sample=False``)."""
        return self.scale_factor * (mean + std * torch.randn_like(mean) if sample else mean)

    def latents_from_batch(self, batch: Mapping, n: int | None = None, sample: bool = True) -> torch.Tensor:
        """Scaled latents of a batch (images or cached latents)."""
        return self._scaled_latent(*self.batch_latent_moments(batch, n), sample)

    @torch.no_grad()
    def encode_to_latent(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Scaled latents of images ``x``."""
        return self._scaled_latent(*self.latent_moments(x), sample)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scale_factor
        first = self.first_stage_model
        return first.decode_latent(z) if hasattr(first, "decode_latent") else first.decode(z)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Images from scaled latents ``z`` (the first stage quantises first if it is a VQ model)."""
        return self._decode(z)

    def differentiable_decode_first_stage(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._decode(z)

    def decode_samples(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_first_stage(z).clamp(-1, 1)

    def sampler_defaults(self) -> dict:
        return {}  # latents are not confined to [-1, 1]: no clipping of the x0 estimate

    # ------------------------------------------------------------------ scale_by_std
    def _reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.reduce(value, reduce_op="sum")
        return value

    @torch.no_grad()
    def estimate_scale_factor(self, batches) -> float:
        """Set ``scale_factor = 1 / std(z)`` over the latents of ``batches`` (pooled over every
        element and, in distributed runs, every rank), as LDM Sec. G's rescaling."""
        if not self.scale_by_std:
            raise RuntimeError("estimate_scale_factor needs scale_by_std=True")
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        skipped = 0
        for batch in batches:
            mean, std = self.batch_latent_moments(batch)
            z = (mean + std * torch.randn_like(mean)).double()
            if not bool(torch.isfinite(z).all()):  # a NaN/Inf image (or latent) must not decide the scale
                skipped += 1
                continue
            count = torch.tensor(float(z.numel()), device=z.device, dtype=torch.float64)
            stats += torch.stack([z.sum(), z.square().sum(), count])
        if skipped:
            print(f"[{type(self).__name__}] scale_by_std: {skipped} batch(es) with non-finite latents ignored")
        stats = self._reduce_sum(stats)
        if stats[2] < 2:
            raise RuntimeError("scale_by_std: no finite latents to estimate the standard deviation from "
                               f"({skipped} batch(es) held non-finite values); check the data for NaN/Inf")
        mean = stats[0] / stats[2]
        var = (stats[1] - stats[2] * mean.square()) / (stats[2] - 1)
        value = float(1.0 / var.clamp_min(1e-12).sqrt())
        if not math.isfinite(value):
            raise RuntimeError(f"scale_by_std: the estimate is non-finite ({value}); check the data and the first "
                               "stage for NaN/Inf (the scale factor was left unchanged)")
        self.scale_factor.fill_(value)
        self._scale_factor_fitted = True
        return value

    def on_train_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if callable(getattr(dataset, "verify_first_stage", None)):  # a latent cache must come from this first stage
            dataset.verify_first_stage(self.first_stage_model)
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

    # ------------------------------------------------------------------ conditioning
    @property
    def is_stack(self) -> bool:
        """The conditioner is a :class:`~ldm.modules.conditioners.stack.ConditionerStack` (raw
        conditions are dicts keyed by its input keys)."""
        from ldm.modules.conditioners.stack import ConditionerStack

        return isinstance(getattr(self, "cond_stage_model", None), ConditionerStack)

    @property
    def can_guide(self) -> bool:
        """The conditioner provides a null condition (classifier-free guidance is possible)."""
        return self._supports_contract()

    def _supports_contract(self) -> bool:
        model = self.cond_stage_model
        return model is not None and callable(getattr(model, "null_condition", None))

    @property
    def ucg_rate(self) -> float:
        return float(getattr(self.cond_stage_model, "ucg_rate", 0.0) or 0.0) if self._supports_contract() else 0.0

    def get_learned_conditioning(self, c, drop_mask: torch.Tensor | None = None):
        """tau_theta(y) (LDM Eq. 3): the conditioner's output for raw conditioning ``c``; rows where
        ``drop_mask`` is True get the null condition (classifier-free-guidance training); without a
        mask nothing is dropped."""
        model = self.cond_stage_model
        if model is None:
            return None
        if self.cond_is_first_stage:
            return self.encode_to_latent(c, sample=False)
        if self.cond_stage_forward is not None:
            return getattr(model, self.cond_stage_forward)(c)
        if self._supports_contract():  # dropout only where drop_mask says so (never the module's own)
            return model.encode(c, drop_mask=drop_mask if drop_mask is not None else self._no_drop(c))
        if callable(getattr(model, "encode", None)):
            out = model.encode(c)
            return out.mode() if callable(getattr(out, "mode", None)) else out
        return model(c)

    def null_conditioning(self, batch_size: int, raw=None, negative=None):
        """The null condition (CFG's unconditional branch) for ``batch_size`` samples, or None if the
        conditioner has none. Spatial conditioners (``SpatialRescaler``, a ``ConditionerStack``) take
        its shape from the raw inputs ``raw`` (zeros of the encoded shape; see each conditioner).
        ``negative``: a negative prompt / condition that replaces the null - raw input for a single
        conditioner, ``{input_key: value}`` for a stack (the other entries keep their own null)."""
        if not self._supports_contract():
            if negative is not None:
                raise ValueError("a negative condition needs a conditioner with a null condition")
            return None
        model = self.cond_stage_model
        if self.is_stack:
            if raw is None:
                raise ValueError("the null condition of a conditioner stack needs the raw inputs (a dict)")
            if negative is not None and not isinstance(negative, Mapping):
                keys = [k for k, s in zip(model.input_keys, model.output_keys) if s == "crossattn"]
                if len(keys) != 1:
                    raise ValueError("a negative prompt needs exactly one cross-attention input, "
                                     f"this stack has {keys}")
                negative = {keys[0]: negative}
            null = model.null_condition(raw, overrides=negative)
        elif negative is not None:
            null = model.encode(negative, drop_mask=self._no_drop(negative))
        elif getattr(model, "null_needs_input", False):
            if raw is None:
                raise ValueError(f"the null condition of {type(model).__name__} needs the raw input (its shape)")
            null = model.null_condition(raw)
        else:
            null = model.null_condition(batch_size)
        return null

    def _raw_batch_size(self, raw) -> int:
        if self.is_stack:
            return self.cond_stage_model.batch_size(raw)
        return raw.shape[0] if isinstance(raw, torch.Tensor) else len(raw)

    def raw_condition(self, batch: Mapping, n: int | None = None):
        """``batch[cond_stage_key]`` moved to the model's device (first ``n`` rows); for a conditioner
        stack, the dict of its input keys."""
        if self.is_stack:
            return {key: self._raw_value(batch, key, n, spatial=True)
                    for key in dict.fromkeys(self.cond_stage_model.input_keys)}
        spatial = self.cond_is_first_stage or self.conditioning_key == "concat"
        return self._raw_value(batch, self.cond_stage_key, n, spatial)

    def _raw_value(self, batch: Mapping, key: str, n: int | None, spatial: bool):
        if key not in batch:
            raise KeyError(f"batch has no key {key!r} for the condition (keys: {sorted(batch)}); "
                           "check cond_stage_key / the conditioners' input_key")
        raw = batch[key]
        if n is not None:
            raw = raw[:n]
        if isinstance(raw, torch.Tensor):
            raw = raw.to(self.device)
            if raw.is_floating_point() and raw.ndim == 4 and spatial:
                raw = raw.float()
        return raw

    def condition_from_batch(self, batch: Mapping, n: int | None = None, drop: bool | None = None):
        """Learned conditioning for a batch, with ucg dropout while training (``drop=None``)."""
        if self.cond_stage_model is None:
            return None
        raw = self.raw_condition(batch, n)
        drop = self.training if drop is None else drop
        drop_mask = self._no_drop(raw)
        if drop and self.ucg_rate > 0:
            batch_size = self._raw_batch_size(raw)
            if self.is_stack:  # one independent mask per entry, each at its own ucg_rate
                drop_mask = self.cond_stage_model.sample_drop_masks(batch_size, self.device)
            else:
                drop_mask = torch.rand(batch_size, device=self.device) < self.ucg_rate
        if self.cond_stage_trainable:
            cond = self.get_learned_conditioning(raw, drop_mask)
        else:
            with torch.no_grad():
                cond = self.get_learned_conditioning(raw, drop_mask)
        return self.append_mask(cond, batch, n)

    def append_mask(self, cond, batch: Mapping, n: int | None = None):
        """With ``concat_mask_key`` (inpainting): concatenate ``batch[concat_mask_key]`` (1 = region to
        fill), resized to the latent size, to the concat condition (the original inpainting model's
        masked-image latent + mask input, 3 + 1 channels)."""
        if self.concat_mask_key is None:
            return cond
        mask = self.image_from_batch(batch, self.concat_mask_key)[:n].to(self.device)
        target = cond["concat"] if isinstance(cond, Mapping) else cond
        joined = concat_inputs([target, mask.to(target.dtype)])
        if isinstance(cond, Mapping):
            return {**cond, "concat": joined}
        return joined

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
    def _prepare_condition(self, cond_or_batch_size, conditioning, negative=None, null_conditioning=None):
        """(batch size, learned condition, null condition) for :meth:`sample`."""
        if conditioning is not None:
            from ldm.samplers.guidance import _batch_of

            batch_size = _batch_of(conditioning)
            if null_conditioning is None and (negative is not None or self.is_stack
                                              or getattr(self.cond_stage_model, "null_needs_input", False)):
                raise ValueError("with a learned `conditioning`, pass `null_conditioning` too (this null "
                                 "needs the raw inputs), or pass the raw conditions instead")
            null = null_conditioning if null_conditioning is not None else self.null_conditioning(batch_size)
            return batch_size, conditioning, null
        if isinstance(cond_or_batch_size, int):
            if self.cond_stage_model is not None:
                raise ValueError(f"this model is conditional on {self.cond_stage_key!r}: pass the raw conditions "
                                 "(labels, captions, images) instead of a batch size")
            return cond_or_batch_size, None, None
        raw = cond_or_batch_size
        if self.cond_stage_model is None:
            raise ValueError("an unconditional model takes a batch size, not a condition")
        batch = raw if isinstance(raw, Mapping) else None
        if batch is not None:  # a batch (or a stack's inputs): its condition (and inpainting mask)
            cond = self.condition_from_batch(batch, drop=False)
            raw = self.raw_condition(batch)
        else:
            raw = raw.to(self.device) if isinstance(raw, torch.Tensor) else raw
            cond = self.get_learned_conditioning(raw, self._no_drop(raw))
        batch_size = self._raw_batch_size(raw)
        if null_conditioning is not None:
            return batch_size, cond, null_conditioning
        null = self.null_conditioning(batch_size, raw=raw, negative=negative)
        if null is not None and self.concat_mask_key is not None:
            null = self.append_mask(null, batch)  # the mask is an input, not dropped: same in both branches
        return batch_size, cond, null

    def conditions_for_sampling(self, raw, negative=None, null_conditioning=None):
        """``(batch size, condition, null condition)`` for raw conditions (labels, captions, a batch
        or a stack's input dict, conditioning images) as :meth:`sample` uses them; ``negative``
        replaces the null condition (see :meth:`null_conditioning`)."""
        return self._prepare_condition(raw, None, negative, null_conditioning)

    def _no_drop(self, raw):
        """An all-False drop mask (no condition dropout at sampling, whatever the module's mode)."""
        if not self._supports_contract():
            return None
        size = self.cond_stage_model.batch_size(raw) if hasattr(self.cond_stage_model, "batch_size") else len(raw)
        return torch.zeros(size, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def sample(self, cond_or_batch_size: Any = 16, *, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
               shape: Sequence[int] | None = None, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, use_ema: bool = True, conditioning=None,
               negative=None, null_conditioning=None, return_latents: bool = False, progress: bool = False,
               **options) -> torch.Tensor:
        """Generate images in [-1, 1].

        ``cond_or_batch_size``: a batch size (unconditional models), or raw conditions such as a
        tensor of class labels, a list of captions, a batch dict, or conditioning images; or pass an
        already learned ``conditioning``. ``guidance_scale`` > 1 applies classifier-free guidance with
        the conditioner's null condition, or with ``null_conditioning`` (learned), or with the condition
        of ``negative`` (a negative prompt: raw, or ``{input_key: raw}`` for a stack). ``shape`` is the latent
        ``(C, h, w)`` (default: trained size; larger sizes give convolutional sampling). ``return_latents``
        skips decoding.
        """
        with self._maybe_ema(use_ema):
            batch_size, cond, null = self._prepare_condition(cond_or_batch_size, conditioning, negative,
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
            source = raw if raw is not None else n
            if self.concat_mask_key is not None:
                source = {k: v[:n] for k, v in batch.items() if k in (self.cond_stage_key, self.concat_mask_key)}
            out["samples"] = self.sample(source, sampler=sampler, steps=ddim_steps, eta=ddim_eta, sigmas=sigmas)
            if guidance_scale != 1.0 and self.can_guide:
                out[f"samples_cfg_scale_{guidance_scale:.2f}"] = self.sample(
                    source, sampler=sampler, steps=ddim_steps, eta=ddim_eta, sigmas=sigmas,
                    guidance_scale=guidance_scale)
        return out
