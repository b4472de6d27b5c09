"""Pixel-space denoising diffusion (DDPM, Ho et al.) as a LightningModule; base of LatentDiffusion.

Training (DDPM Alg. 1): draw ``t ~ U{0..T-1}`` (0-based, see :mod:`ldm.diffusion.schedule`) and
``eps ~ N(0, I)``, form ``x_t = sqrt(a_t) x0 + sqrt(1-a_t) eps`` (DDPM Eq. 4) and regress the
network output on the target of its parameterisation (``eps`` | ``x0`` | ``v``). The loss is

    loss = l_simple_weight * mean(L_simple / e^logvar_t + logvar_t)      (DDPM Eq. 14; logvar_t = 0
                                                                            unless learn_logvar)
         + original_elbo_weight * mean(w_t * L_simple)                    (DDPM Eq. 8/12: w_t makes
                                                                            the MSE the exact KL term)
         + hybrid_vlb_weight * T * L_t   (learned variances only)        (foundations Ch. 6, Eq. 6.1)

with optional Min-SNR-gamma weighting of L_simple and offset noise. ``w_t`` are the exact
Eq.-(8) weights for every parameterisation (:func:`ldm.diffusion.elbo_mse_weights`); the original
code's x0 weight ``0.5*sqrt(a)/(2.*1-a)`` suffers from operator precedence and is not used.

Checkpoint layout (public API, the original's): ``model.diffusion_model.*`` (UNet),
``model_ema.*`` (:class:`~ldm.modules.ema.LitEma`), the schedule buffers ``betas``,
``alphas_cumprod``, ..., ``posterior_mean_coef2`` (float32) and ``logvar`` only when learned.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from ldm.data.contracts import LATENT_MEAN_KEY
from ldm.diffusion import (
    SCHEDULE_BUFFERS,  # schedule buffers saved in checkpoints, in the original order
    DiffusionSchedule,
    check_parameterization,
    elbo_mse_weights,
    q_sample,
    split_variance_output,
    training_target,
)
from ldm.diffusion.reverse import check_variance_type
from ldm.models.conditioning import DiffusionWrapper, as_condition_dict, check_conditioning_key
from ldm.models.diffusion_loss import (
    LOSS_TYPES,
    elementwise_loss,
    hybrid_vlb_term,
    min_snr_weight,
    offset_noise,
    per_sample_mean,
    snr_at,
)
from ldm.models.diffusion_sampling import DiffusionSampling
from ldm.models.diffusion_state_dict import DiffusionCheckpoint
from ldm.models.ema import EmaScope
from ldm.optim import build_lr_scheduler, build_optimizer

__all__ = ["DDPM", "DiffusionWrapper"]


class DDPM(DiffusionCheckpoint, DiffusionSampling, EmaScope, L.LightningModule):
    """Pixel-space DDPM. Original constructor parameters keep their names and meaning; ours follow
    ``logvar_init``.

    Ours: ``variance_type`` (``fixed_small`` | ``fixed_large`` | ``learned`` | ``learned_range``;
    learned ones need a UNet with ``2*channels`` outputs and add the hybrid loss weighted by
    ``hybrid_vlb_weight``), ``min_snr_gamma``, ``offset_noise_strength``, ``zero_terminal_snr``,
    ``ema_decay``, ``ema_warmup`` (decay ``min(decay, (1+n)/(10+n))``), ``learning_rate``,
    ``optimizer_config``, ``sampler_config`` (defaults for :meth:`sample`).

    Speed and stability (see :mod:`ldm.models.unet_switches`, :mod:`ldm.models.nonfinite` and docs/performance.md):
    ``channels_last`` (NHWC UNet weights and inputs), ``compile`` (``True`` or a dict of
    ``torch.compile`` options; in-place ``nn.Module.compile()`` on the UNet, so checkpoint keys do not
    change), ``gradient_checkpointing`` (overrides the UNet's ``use_checkpoint`` when not ``None``),
    ``skip_nonfinite`` (skip optimiser steps with a NaN/Inf loss or gradients, on all ranks alike) and
    ``max_nonfinite_steps`` (raise after that many skipped steps in a row). Mixed precision is the
    trainer's (``--precision bf16-mixed``); GroupNorm and the loss run in fp32 under autocast;
    gradient clipping is the trainer's (``--gradient_clip_val``).
    """

    def __init__(self, unet_config: Mapping, timesteps: int = 1000, beta_schedule: str = "linear",
                 loss_type: str = "l2", ckpt_path: str | None = None, ignore_keys: Sequence[str] = (),
                 load_only_unet: bool = False, monitor: str | None = "val/loss", use_ema: bool = True,
                 first_stage_key: str = "image", image_size: int | Sequence[int] = 256, channels: int = 3,
                 log_every_t: int = 100, clip_denoised: bool = True, linear_start: float = 1e-4,
                 linear_end: float = 2e-2, cosine_s: float = 8e-3, given_betas: Sequence[float] | None = None,
                 original_elbo_weight: float = 0.0, v_posterior: float = 0.0, l_simple_weight: float = 1.0,
                 conditioning_key: str | None = None, parameterization: str = "eps",
                 scheduler_config: Mapping | None = None, use_positional_encodings: bool = False,
                 learn_logvar: bool = False, logvar_init: float = 0.0,
                 *, variance_type: str = "fixed_small", hybrid_vlb_weight: float = 1e-3,
                 min_snr_gamma: float | None = None, offset_noise_strength: float = 0.0,
                 zero_terminal_snr: bool = False, ema_decay: float = 0.9999, ema_warmup: bool = True,
                 learning_rate: float | None = None, optimizer_config: Any = None,
                 sampler_config: Mapping | None = None, trust_checkpoint: bool = False,
                 channels_last: bool = False, compile: bool | Mapping = False,
                 gradient_checkpointing: bool | None = None, skip_nonfinite: bool = True,
                 max_nonfinite_steps: int = 10):
        super().__init__()
        self.parameterization = check_parameterization(parameterization)
        self.variance_type = check_variance_type(variance_type)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        if use_positional_encodings:
            raise ValueError("use_positional_encodings=True is not supported (the original's feature was unused)")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive or None, got {min_snr_gamma!r}")
        if not 0.0 <= v_posterior <= 1.0:
            raise ValueError(f"v_posterior must be in [0, 1], got {v_posterior}")
        print(f"{type(self).__name__}: running in {self.parameterization}-prediction mode")
        self.cond_stage_model = None
        # plain settings, kept under their parameter names (the original's attributes)
        for name, value in dict(loss_type=loss_type, clip_denoised=clip_denoised, log_every_t=log_every_t,
                                first_stage_key=first_stage_key, image_size=image_size, channels=channels,
                                use_positional_encodings=use_positional_encodings, v_posterior=v_posterior,
                                original_elbo_weight=original_elbo_weight, l_simple_weight=l_simple_weight,
                                hybrid_vlb_weight=hybrid_vlb_weight, min_snr_gamma=min_snr_gamma,
                                offset_noise_strength=offset_noise_strength, zero_terminal_snr=zero_terminal_snr,
                                monitor=monitor).items():
            setattr(self, name, value)
        self.conditioning_key = check_conditioning_key(conditioning_key)
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self._check_learned_variance_channels()
        self.use_ema = use_ema
        if use_ema:
            from ldm.modules.ema import LitEma

            self.model_ema = LitEma(self.model, decay=ema_decay, use_num_updates=ema_warmup)
        self.use_scheduler = scheduler_config is not None
        self.scheduler_config = scheduler_config
        self.optimizer_config = optimizer_config
        self.sampler_config = dict(sampler_config or {})
        if learning_rate is not None:
            self.learning_rate = float(learning_rate)
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), float(logvar_init))
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar, persistent=False)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet,
                                trust_checkpoint=trust_checkpoint)
        self._configure_speed(channels_last, compile, gradient_checkpointing, skip_nonfinite, max_nonfinite_steps)

    def _check_learned_variance_channels(self) -> None:
        """Learned variances (Improved DDPM Sec. 3.1) need the UNet to output 2 x channels (mean, v):
        refuse a wrong ``out_channels`` when the model is built, not at the first training step."""
        out_channels = getattr(self.model.diffusion_model, "out_channels", None)
        if self.variance_type in ("learned", "learned_range") and isinstance(out_channels, int) \
                and out_channels != 2 * self.channels:
            from ldm.util import ConfigError

            raise ConfigError(f"variance_type={self.variance_type} needs unet_config.params.out_channels = "
                              "2 x channels "
                              f"= {2 * self.channels} (the model predicts the mean and the variance), got "
                              f"{out_channels}; set model.params.unet_config.params.out_channels={2 * self.channels}")

    def _configure_speed(self, channels_last, compile, gradient_checkpointing, skip_nonfinite,
                         max_nonfinite_steps) -> None:
        """The UNet's speed switches and the non-finite loss guard (:mod:`ldm.models.unet_switches`,
        :mod:`ldm.models.nonfinite`)."""
        from ldm.models.nonfinite import NonFiniteGuard
        from ldm.models.unet_switches import apply_unet_switches

        self.channels_last = channels_last
        apply_unet_switches(self.model.diffusion_model, channels_last=channels_last, compile=compile,
                            gradient_checkpointing=gradient_checkpointing)
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_steps) if skip_nonfinite else None

    # ------------------------------------------------------------------ schedule
    def register_schedule(self, given_betas=None, beta_schedule: str = "linear", timesteps: int = 1000,
                          linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3) -> None:
        """Build the float64 :class:`DiffusionSchedule` (``self.schedule``, used by the loss and the
        samplers) and register its constants as float32 buffers under the original names."""
        with torch.device("cpu"):  # also when the model is being built on the meta device
            schedule = DiffusionSchedule.from_config(beta_schedule, timesteps, linear_start, linear_end, cosine_s,
                                                     given_betas=given_betas, zero_terminal_snr=self.zero_terminal_snr)
        if self.v_posterior:
            # sigma^2 = (1 - v) beta-tilde + v beta: between DDPM's two fixed choices (Sec. 3.2)
            var = (1 - self.v_posterior) * schedule.posterior_variance + self.v_posterior * schedule.betas
            schedule = dataclasses.replace(schedule, posterior_variance=var,
                                           posterior_log_variance_clipped=torch.log(torch.cat([var[1:2], var[1:]])))
        if self.zero_terminal_snr and self.parameterization == "eps":
            warnings.warn("zero_terminal_snr with eps-prediction cannot recover x0 at the last step; use "
                          "parameterization='v'", stacklevel=2)
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.linear_start, self.linear_end = linear_start, linear_end
        for name in SCHEDULE_BUFFERS:
            self._set_buffer(name, getattr(schedule, name).float())
        fixed = self.variance_type if self.variance_type in ("fixed_small", "fixed_large") else "fixed_small"
        weights = elbo_mse_weights(schedule, self.parameterization, fixed)
        if not bool(torch.isfinite(weights).all()):  # e.g. eps weights at a zero-SNR last step
            finite = weights[torch.isfinite(weights)]
            weights = torch.nan_to_num(weights, nan=0.0, posinf=float(finite.max()))
        self._set_buffer("lvlb_weights", weights.float(), persistent=False)

    def _set_buffer(self, name: str, value: torch.Tensor, persistent: bool = True) -> None:
        if name in self._buffers:
            self._buffers[name] = value.to(self._buffers[name].device if self._buffers[name] is not None else "cpu")
        else:
            self.register_buffer(name, value, persistent=persistent)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` (DDPM Eq. 4)."""
        return q_sample(self.schedule, x_start, t, noise if noise is not None else torch.randn_like(x_start))

    # ------------------------------------------------------------------ EMA and the optimiser step
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The optimiser step, then one EMA step (gradient accumulation: once per global step). Here
        rather than in ``on_train_batch_end`` (which runs after the checkpoint callbacks) so that a
        checkpoint of step k holds the EMA of step k and a resume loses no EMA update. None after a
        step the non-finite guard skipped (the weights did not change)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        guard = self.nonfinite_guard
        skipped = guard is not None and guard.last_step_skipped
        if guard is not None:
            guard.last_step_skipped = False
        if self.use_ema and not skipped:
            self.model_ema(self.model)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the step (gradients dropped on every rank) when the loss or gradients are NaN/Inf."""
        if self.nonfinite_guard is not None and self.automatic_optimization:
            self.nonfinite_guard.before_optimizer_step(self, optimizer)
    # ------------------------------------------------------------------ data
    @staticmethod
    def image_from_batch(batch: Mapping, key: str) -> torch.Tensor:
        """``batch[key]`` as a float ``B×C×H×W`` tensor (a ``B×H×W`` tensor gets a channel axis)."""
        if key not in batch:
            raise KeyError(f"batch has no key {key!r} (keys: {sorted(batch)}); check first_stage_key / cond_stage_key")
        x = batch[key]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"batch[{key!r}] must be a tensor, got {type(x).__name__}")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"batch[{key!r}] must be B×C×H×W, got shape {tuple(x.shape)}")
        return x.to(memory_format=torch.contiguous_format).float()

    def get_input(self, batch: Mapping, k: str) -> torch.Tensor:
        return self.image_from_batch(batch, k)

    def _batch_len(self, batch: Mapping) -> int:
        for key in (self.first_stage_key, LATENT_MEAN_KEY):  # images, or a latent-cache batch
            if isinstance(batch.get(key), torch.Tensor):
                return int(batch[key].shape[0])
        raise KeyError(f"batch has no tensor under {self.first_stage_key!r} (keys: {sorted(batch)}); "
                       "check first_stage_key")

    def sample_timesteps(self, batch_size: int, device) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, dtype=torch.long)

    def make_noise(self, x: torch.Tensor) -> torch.Tensor:
        return offset_noise(x.shape, self.offset_noise_strength, like=x.float()).to(x.dtype)

    # ------------------------------------------------------------------ model and loss
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond=None, return_ids: bool = False) -> torch.Tensor:
        """The network output for ``x_noisy`` at 0-based ``t`` (conditioning: tensor, list or dict)."""
        if getattr(self, "channels_last", False) and x_noisy.ndim == 4:
            x_noisy = x_noisy.contiguous(memory_format=torch.channels_last)
        return self.model(x_noisy, t, as_condition_dict(cond, self.conditioning_key))

    def diffusion_loss(self, x_start: torch.Tensor, cond, t: torch.Tensor, noise: torch.Tensor | None = None):
        """The training loss of one batch and its log dict (``train/…`` or ``val/…`` keys)."""
        noise = self.make_noise(x_start) if noise is None else noise
        x_noisy = self.q_sample(x_start, t, noise)
        model_output = self.apply_model(x_noisy, t, cond)
        prediction, variance_values = split_variance_output(model_output, self.variance_type)
        target = training_target(self.schedule, x_start.float(), t, noise.float(), self.parameterization)
        if prediction.shape != target.shape:
            extra = " (learned variances need a UNet with out_channels = 2*channels)" \
                if self.variance_type in ("learned", "learned_range") else ""
            raise ValueError(f"model output {tuple(prediction.shape)} does not match the target "
                             f"{tuple(target.shape)}{extra}")
        prefix = "train" if self.training else "val"
        loss_simple = per_sample_mean(elementwise_loss(prediction, target, self.loss_type))
        log = {f"{prefix}/loss_simple": loss_simple.mean().detach()}
        weighted = loss_simple
        if self.min_snr_gamma is not None:
            weighted = loss_simple * min_snr_weight(snr_at(self.schedule, t), self.min_snr_gamma, self.parameterization)
        logvar_t = self.logvar[t].float()
        loss = self.l_simple_weight * (weighted / torch.exp(logvar_t) + logvar_t).mean()
        if self.learn_logvar:
            log[f"{prefix}/loss_gamma"] = loss.detach()
            log["logvar"] = self.logvar.detach().mean()
        loss_vlb = (self.lvlb_weights[t].float() * loss_simple).mean()
        log[f"{prefix}/loss_vlb"] = loss_vlb.detach()
        loss = loss + self.original_elbo_weight * loss_vlb
        if variance_values is not None:
            hybrid = hybrid_vlb_term(self.schedule, prediction, variance_values, x_start, x_noisy, t,
                                     self.parameterization, self.variance_type).mean()
            log[f"{prefix}/loss_hybrid_vlb"] = hybrid.detach()
            loss = loss + self.hybrid_vlb_weight * hybrid
        log[f"{prefix}/loss"] = loss.detach()
        return loss, log

    def p_losses(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Original signature: loss for images ``x_start`` at timesteps ``t``."""
        return self.diffusion_loss(x_start, None, t, noise)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        t = kwargs.pop("t", None)
        if t is None:
            t = self.sample_timesteps(x.shape[0], x.device)
        return self.p_losses(x, t, *args, **kwargs)

    def shared_step(self, batch: Mapping, **kwargs):
        x = self.get_input(batch, self.first_stage_key)
        self._batch_size = x.shape[0]
        return self(x, **kwargs)

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        loss, log = self.shared_step(batch)
        if self.nonfinite_guard is not None:  # a NaN/Inf loss becomes 0 here; its step is skipped later
            loss = self.nonfinite_guard.observe(loss)
        bs = getattr(self, "_batch_size", None)
        self.log_dict(log, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True,
                 on_epoch=False, batch_size=bs)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        """Validation loss with the training weights and with the EMA weights (``…_ema`` keys), on the
        same timesteps and noise so the two are directly comparable."""
        t = self.sample_timesteps(self._batch_len(batch), self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            _, log = self.shared_step(batch, t=t)
        # sync_dist: the epoch means are reduced over all ranks, so the checkpoint monitor agrees everywhere
        self.log_dict(log, prog_bar=False, logger=True, on_step=False, on_epoch=True, batch_size=self._batch_size,
                      sync_dist=True)
        if self.use_ema:
            with self.ema_scope():
                _, log_ema = self.shared_step(batch, t=t)
            self.log_dict({f"{k}_ema": v for k, v in log_ema.items()}, prog_bar=False, logger=True, on_step=False,
                          on_epoch=True, batch_size=self._batch_size, sync_dist=True)

    def parameter_groups(self) -> list:
        """Parameters the optimiser updates (the UNet, and ``logvar`` when learned)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.learn_logvar:
            params.append(self.logvar)
        return [{"params": params}]

    def configure_optimizers(self):
        lr = getattr(self, "learning_rate", None)
        optimizer = build_optimizer(self.parameter_groups(), lr, self.optimizer_config,
                                    precision=getattr(self._trainer, "precision", None))
        scheduler = build_lr_scheduler(optimizer, self.scheduler_config)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
