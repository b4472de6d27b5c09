"""First-stage LightningModules: the perceptual autoencoders of LDM Sec. 3.1 / Sec. G.

* :class:`AutoencoderKL` — KL-regularised (``z ~ q(z|x)``, tiny KL weight ~1e-6).
* :class:`VQModel` — VQ-regularised (quantiser inside the autoencoder).
* :class:`VQModelInterface` — the VQ model as stage 2 uses it: encode *without* quantising,
  quantise in ``decode`` (LDM Sec. 3.1: "absorbed by the decoder").
* :class:`IdentityFirstStage` — pixel-space diffusion (``f = 1``).

All share the first-stage interface of ``docs/architecture.md``: ``latent_moments(x) -> (mean, std)``
and ``decode_latent(z) -> x``, besides the original ``encode``/``decode``.

Training minimises LDM Eq. (25) with Lightning 2 manual optimisation: one autoencoder forward per
batch, an autoencoder update (Adam, betas (0.5, 0.9)) and, from ``disc_start`` on, a discriminator
update. Gradients are accumulated over N batches (each backward
scaled by 1/N; N = ``accumulate_grad_batches``, a model parameter because Lightning 2 forbids the
trainer setting with manual optimisation); optimisers step on the N-th batch. ``gan_step`` counts
autoencoder updates (the original's ``global_step``; Lightning's own ``global_step`` counts both optimisers'
steps) and is
stored in checkpoints. Each backward pass leaves some parameters without a gradient (the frozen or
idle discriminator, or the autoencoder behind a detached reconstruction), so the model asks DDP for
``find_unused_parameters=True`` (``ddp_find_unused_parameters``, see :mod:`ldm.distributed`): plain
``--strategy ddp`` works.

Non-finite losses (``skip_nonfinite``, on by default): the step of a batch whose autoencoder or
discriminator loss (or gradients) is NaN/Inf is skipped for both optimisers — weights, optimiser
state, LR schedule, ``gan_step`` and EMA stay as they were — counted (``train/nonfinite_steps``) and
reported; ``max_nonfinite_steps`` bad steps in a row stop training (the guard of
:class:`ldm.callbacks.precision.NonFiniteGuard`, shared with DDPM).
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.autoencoder import Decoder, DiagonalGaussianDistribution, Encoder, VectorQuantizer
from ldm.optim import build_optimizer
from ldm.util import instantiate_from_config

DEFAULT_LEARNING_RATE = 4.5e-6
ADAM_BETAS = (0.5, 0.9)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """Batches are B×C×H×W; accept the original's B×H×W×C too (and B×H×W grey images)."""
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise ValueError(f"expected an image batch B×C×H×W, got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.contiguous_format).float()


class _AdversarialAutoencoder(L.LightningModule):
    """Training/validation/logging shared by the KL and VQ autoencoders."""

    ddp_find_unused_parameters = True  # read by ldm.distributed.apply_model_ddp_requests

    def _setup_common(self, ddconfig: dict, lossconfig: dict | None, image_key: str, colorize_nlabels: int | None,
                      monitor: str | None, base_learning_rate: float | None, accumulate_grad_batches: int) -> None:
        self.automatic_optimization = False
        if int(accumulate_grad_batches) < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        # Lightning 2 refuses Trainer(accumulate_grad_batches != 1) with manual optimisation, so the
        # model accumulates itself; the CLI moves the trainer setting here.
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig, node="lossconfig") if lossconfig else nn.Identity()
        if colorize_nlabels is not None:
            if not isinstance(colorize_nlabels, int):
                raise ValueError(f"colorize_nlabels must be an int, got {colorize_nlabels!r}")
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor
        self.learning_rate = float(base_learning_rate) if base_learning_rate is not None else DEFAULT_LEARNING_RATE
        self.gan_step = 0  # autoencoder optimisation steps taken (the original global_step)

    def _setup_nonfinite_guard(self, skip_nonfinite: bool, max_nonfinite_steps: int) -> None:
        """The guard DDPM uses (:class:`ldm.callbacks.precision.NonFiniteGuard`), driven by ``training_step``."""
        from ldm.callbacks.precision import NonFiniteGuard

        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_steps) if skip_nonfinite else None

    # -- checkpoint state that is not a weight -------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gan_step"] = self.gan_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.gan_step = int(checkpoint.get("gan_step", 0))

    def init_from_ckpt(self, path: str, ignore_keys: Iterable[str] = ()) -> None:
        """Load weights from a checkpoint file or a stage-1 run directory (its ``checkpoints/last.ckpt``),
        after checking that the checkpoint has this model's architecture (one-line ConfigError if not)."""
        from ldm.checkpoint import load_state_dict, load_weights
        from ldm.models.first_stage_checkpoint import autoencoder_weights, check_architecture, resolve_checkpoint

        checkpoint = resolve_checkpoint(path)
        state_dict = autoencoder_weights(load_state_dict(checkpoint))
        check_architecture(self, state_dict, checkpoint, ignore_keys)
        print(f"[{type(self).__name__}] weights from {checkpoint}")
        load_weights(self, state_dict, ignore_keys=list(ignore_keys or ()))

    # -- data ---------------------------------------------------------------------------------------
    def get_input(self, batch: dict, key: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"{type(self).__name__}: batch has no key {key!r} (image_key); keys: {sorted(batch)}")
        return _channels_first(batch[key]).to(self.device)

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    # -- what subclasses provide ----------------------------------------------------------------------
    def reconstruct(self, x: torch.Tensor, sample: bool):
        """(x̂, aux) with aux what ``ae_loss`` needs (posterior / quantiser output)."""
        raise NotImplementedError

    def ae_loss(self, x, xrec, aux, split: str, last_layer):
        raise NotImplementedError

    def extra_logs(self, aux, split: str) -> dict:
        return {}

    # -- optimisation -------------------------------------------------------------------------------
    @property
    def has_discriminator(self) -> bool:
        return isinstance(getattr(self.loss, "discriminator", None), nn.Module)

    def ae_parameters(self) -> list[nn.Parameter]:
        params = [p for name, p in self.named_parameters()
                  if p.requires_grad and not name.startswith(("loss.", "model_ema."))]
        if getattr(self, "learn_logvar", False) and hasattr(self.loss, "logvar"):
            params.append(self.loss.logvar)
        return params

    def configure_optimizers(self):
        if not hasattr(self.loss, "discriminator_term"):
            raise RuntimeError(f"{type(self).__name__}: lossconfig {type(self.loss).__name__} cannot train; "
                               f"use LPIPSWithDiscriminator / VQLPIPSWithDiscriminator")
        lr = self.learning_rate
        adam = {"target": "torch.optim.Adam", "params": {"betas": ADAM_BETAS}}
        precision = getattr(self._trainer, "precision", None)
        optimizers = [build_optimizer(self.ae_parameters(), lr * getattr(self, "lr_g_factor", 1.0), adam, precision)]
        if self.has_discriminator:
            optimizers.append(build_optimizer(self.loss.discriminator.parameters(), lr, adam, precision))
        scheduler_config = getattr(self, "scheduler_config", None)
        if scheduler_config is None:
            return optimizers
        schedule = instantiate_from_config(scheduler_config, node="scheduler_config")
        schedulers = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule.schedule),
                       "interval": "step"} for opt in optimizers]
        return optimizers, schedulers

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    def _accumulation(self) -> tuple[int, bool]:
        """(N, whether this batch closes an accumulation window)."""
        trainer = self._trainer
        n = self.accumulate_grad_batches
        closes = (self._batch_in_epoch + 1) % n == 0 or bool(getattr(trainer, "is_last_batch", False))
        return n, closes

    def training_step(self, batch: dict, batch_idx: int):
        if not hasattr(self.loss, "discriminator_term"):
            raise RuntimeError(f"{type(self).__name__}: lossconfig {type(self.loss).__name__} cannot train; "
                               f"use LPIPSWithDiscriminator / VQLPIPSWithDiscriminator")
        self._batch_in_epoch = batch_idx
        n_accum, step_now = self._accumulation()
        opts = self._optimizers()
        opt_ae = opts[0]
        step = self.gan_step  # constant within an accumulation window
        guard = self.nonfinite_guard  # a NaN/Inf loss is zeroed here and its step skipped below
        if guard is not None and batch_idx % n_accum == 0:  # state the forward passes change (BN, codebook EMA)
            from ldm.callbacks.precision import running_stats_snapshot

            self._running_stats = running_stats_snapshot(self)
        x = self.get_input(batch, self.image_key)
        xrec, aux = self.reconstruct(x, sample=True)  # the one autoencoder forward of this batch

        self.toggle_optimizer(opt_ae)
        ae_loss, log = self.ae_loss(x, xrec, aux, "train", self.get_last_layer())
        self.manual_backward((guard.observe(ae_loss) if guard else ae_loss) / n_accum)
        self.untoggle_optimizer(opt_ae)
        stepping = [opt_ae]

        # both backward passes before any step: the discriminator loss sees x and the detached x̂ only,
        # so stepping after it changes nothing, and one non-finite decision covers the whole step
        if len(opts) > 1 and self.loss.disc_active(step):
            opt_disc = opts[1]
            self.toggle_optimizer(opt_disc)
            d_loss, log_disc = self.loss.discriminator_term(x, xrec.detach(), step, None, "train")
            self.manual_backward((guard.observe(d_loss) if guard else d_loss) / n_accum)
            self.untoggle_optimizer(opt_disc)
            stepping.append(opt_disc)
            log.update(log_disc)

        if step_now:
            skipped = guard is not None and guard.decide(self, stepping, on_skip=self._restore_running_stats)
            for opt in stepping:
                if not skipped:  # a skipped step leaves weights, optimiser state, schedule and EMA as they were
                    opt.step()
                opt.zero_grad(set_to_none=True)
            if not skipped:
                self.gan_step += 1
                schedulers = self.lr_schedulers()
                for scheduler in (schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []):
                    scheduler.step()
                self.on_ae_step_end()
        log.update(self.extra_logs(aux, "train"))
        log["train/gan_step"] = torch.tensor(float(step))
        n = x.shape[0]
        self.log("train/rec_loss", log.pop("train/rec_loss"), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log_dict(log, prog_bar=False, on_step=True, on_epoch=False, batch_size=n)
        return ae_loss.detach()

    def _restore_running_stats(self) -> None:
        from ldm.callbacks.precision import restore_snapshot

        restore_snapshot(getattr(self, "_running_stats", []))

    def on_ae_step_end(self) -> None:
        """Hook after each autoencoder update (the VQ model's weight EMA)."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.has_discriminator and self._trainer is not None:  # BatchNorm statistics: same on every rank
            from ldm.distributed import average_buffers

            average_buffers(self.loss.discriminator, self.trainer.strategy)

    # -- validation -------------------------------------------------------------------------------------
    def _metrics(self):
        if not hasattr(self, "_val_metrics"):
            from torchmetrics import MeanMetric
            from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

            metrics = nn.ModuleDict({
                "psnr": PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)),
                "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
                "lpips": MeanMetric(),
            })
            object.__setattr__(self, "_val_metrics", metrics)  # not a sub-module: keeps state-dict keys original
        return self._val_metrics.to(self.device)

    def validation_step(self, batch: dict, batch_idx: int):
        x = self.get_input(batch, self.image_key)
        xrec, aux = self.reconstruct(x, sample=False)
        log: dict = {}
        if hasattr(self.loss, "discriminator_term"):
            _, log = self.ae_loss(x, xrec, aux, "val", None)
            if self.has_discriminator and self.loss.disc_active(self.gan_step):
                log.update(self.loss.discriminator_term(x, xrec, self.gan_step, None, "val")[1])
        else:
            log["val/rec_loss"] = (x - xrec).abs().mean()
        log.update(self.extra_logs(aux, "val"))
        metrics = self._metrics()
        x01, xrec01 = ((x + 1) / 2).clamp(0, 1), ((xrec + 1) / 2).clamp(0, 1)
        metrics["psnr"].update(xrec01, x01)
        metrics["ssim"].update(xrec01, x01)
        perceptual = getattr(self.loss, "perceptual_loss", None)
        if perceptual is not None:
            metrics["lpips"].update(perceptual(x, xrec.clamp(-1, 1)).flatten())
        n = x.shape[0]
        self.log("val/rec_loss", log.pop("val/rec_loss"), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)
        self.log_dict(log, on_epoch=True, sync_dist=True, batch_size=n)
        return log

    def on_validation_epoch_end(self) -> None:
        metrics = self._metrics()
        names = ["psnr", "ssim"] + (["lpips"] if getattr(self.loss, "perceptual_loss", None) is not None else [])
        for name in names:
            metric = metrics[name]
            if getattr(metric, "update_count", 1) == 0:
                continue
            # compute() already gathers every rank's state: the mean over ranks of equal values is that value
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "psnr", sync_dist=True)
            metric.reset()

    # -- images for the ImageLogger ----------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: dict, only_inputs: bool = False, N: int | None = None, **kwargs) -> dict:
        """{"inputs", "reconstructions"(, "samples")}: B×C×H×W tensors in [-1, 1]."""
        x = self.get_input(batch, self.image_key)
        if N is not None:
            x = x[:N]
        out = {"inputs": x}
        if not only_inputs:
            xrec, aux = self.reconstruct(x, sample=True)
            out["reconstructions"] = xrec
            out.update(self.extra_images(x, aux))
        if x.shape[1] > 3:
            out = {k: self.to_rgb(v) for k, v in out.items()}
        return {k: v.clamp(-1.0, 1.0) for k, v in out.items()}

    def extra_images(self, x, aux) -> dict:
        return {}


class AutoencoderKL(_AdversarialAutoencoder):
    """KL-regularised autoencoder: ``E(x)`` gives the moments of q(z|x) (LDM Sec. 3.1)."""

    def __init__(self, ddconfig: dict, lossconfig: dict | None, embed_dim: int, ckpt_path: str | None = None,
                 ignore_keys: Iterable[str] = (), image_key: str = "image", colorize_nlabels: int | None = None,
                 monitor: str | None = None, base_learning_rate: float | None = None, learn_logvar: bool = False,
                 accumulate_grad_batches: int = 1, skip_nonfinite: bool = True, max_nonfinite_steps: int = 10,
                 **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"AutoencoderKL: unknown parameters {sorted(unused)}")
        self._setup_nonfinite_guard(skip_nonfinite, max_nonfinite_steps)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and log-variance)")
        self._setup_common(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, base_learning_rate,
                           accumulate_grad_batches)
        z_channels = ddconfig["z_channels"]
        self.embed_dim = embed_dim
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.learn_logvar = bool(learn_logvar)
        if hasattr(self.loss, "logvar"):
            self.loss.logvar.requires_grad_(self.learn_logvar)  # the original never optimised it
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # first-stage interface
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.encode(x)
        return posterior.mean, posterior.std

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    # training hooks
    def reconstruct(self, x, sample: bool):
        xrec, posterior = self(x, sample_posterior=sample)
        return xrec, posterior

    def ae_loss(self, x, xrec, posterior, split, last_layer):
        return self.loss(x, xrec, posterior, 0, self.gan_step, last_layer=last_layer, split=split)

    def extra_images(self, x, posterior) -> dict:
        return {"samples": self.decode(torch.randn_like(posterior.mean))}


class VQModel(_AdversarialAutoencoder):
    """VQ-regularised autoencoder (LDM Sec. 3.1; VQGAN). ``quantizer_config`` passes extra
    :class:`VectorQuantizer` options (``legacy``, ``use_ema``, ``decay``, ``dead_code_threshold``, ...)."""

    def __init__(self, ddconfig: dict, lossconfig: dict | None, n_embed: int, embed_dim: int,
                 ckpt_path: str | None = None, ignore_keys: Iterable[str] = (), image_key: str = "image",
                 colorize_nlabels: int | None = None, monitor: str | None = None,
                 batch_resize_range: tuple[int, int] | None = None, scheduler_config: dict | None = None,
                 lr_g_factor: float = 1.0, remap: str | None = None, sane_index_shape: bool = False,
                 use_ema: bool = False, base_learning_rate: float | None = None, beta: float = 0.25,
                 quantizer_config: dict | None = None, accumulate_grad_batches: int = 1, skip_nonfinite: bool = True,
                 max_nonfinite_steps: int = 10, **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"{type(self).__name__}: unknown parameters {sorted(unused)}")
        self._setup_nonfinite_guard(skip_nonfinite, max_nonfinite_steps)
        self._setup_common(ddconfig, lossconfig, image_key, colorize_nlabels, monitor, base_learning_rate,
                           accumulate_grad_batches)
        self.embed_dim, self.n_embed = embed_dim, n_embed
        z_channels = ddconfig["z_channels"]
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta, remap=remap, sane_index_shape=sane_index_shape,
                                        **(quantizer_config or {}))
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.batch_resize_range = batch_resize_range
        self.scheduler_config = scheduler_config
        self.lr_g_factor = float(lr_g_factor)
        self.use_ema = bool(use_ema)
        if self.use_ema:
            from ldm.modules.ema import LitEma

            self.model_ema = LitEma(self)
        self.register_buffer("_val_code_counts", torch.zeros(self.quantize.re_embed), persistent=False)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    @contextmanager
    def ema_scope(self, context: str | None = None):
        """Temporarily swap in the EMA weights (only with ``use_ema``)."""
        if not self.use_ema:
            yield
            return
        self.model_ema.store(self.parameters())
        self.model_ema.copy_to(self)
        try:
            yield
        finally:
            self.model_ema.restore(self.parameters())

    def on_ae_step_end(self) -> None:
        if self.use_ema:
            self.model_ema(self)

    # original API
    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code: torch.Tensor, shape: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Indices → images; ``shape`` is (B, h, w, embed_dim) when ``code`` is flat."""
        if shape is None:
            if code.dim() != 3:
                raise ValueError("decode_code: pass indices shaped B×h×w or give shape=(B, h, w, embed_dim)")
            shape = (*code.shape, self.embed_dim)
        return self.decode(self.quantize.get_codebook_entry(code.reshape(-1), shape))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, info = self.encode(input)
        dec = self.decode(quant)
        return (dec, diff, info.indices) if return_pred_indices else (dec, diff)

    # first-stage interface: the pre-quantisation latent; decoding quantises
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode_to_prequant(x)
        return h, torch.zeros_like(h)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        quant, _, _ = self.quantize(z)
        return self.decode(quant)

    # training hooks
    def get_input(self, batch: dict, key: str) -> torch.Tensor:
        x = super().get_input(batch, key)
        if self.batch_resize_range is None or not self.training:
            return x
        lower, upper = self.batch_resize_range
        size = upper if self.gan_step <= 4 else int(np.random.choice(np.arange(lower, upper + 16, 16)))
        if size != x.shape[2]:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return x.detach()

    def reconstruct(self, x, sample: bool):
        quant, qloss, info = self.encode(x)
        return self.decode(quant), (qloss, info)

    def ae_loss(self, x, xrec, aux, split, last_layer):
        qloss, info = aux
        return self.loss(qloss, x, xrec, 0, self.gan_step, last_layer=last_layer, split=split,
                         predicted_indices=info.indices)

    def extra_logs(self, aux, split: str) -> dict:
        _, info = aux
        if split == "val":
            counts = torch.bincount(info.indices.reshape(-1), minlength=self._val_code_counts.numel())
            self._val_code_counts += counts.to(self._val_code_counts)
        return {f"{split}/perplexity": info.perplexity.detach(), f"{split}/codebook_usage": info.usage.detach()}

    def on_validation_epoch_start(self) -> None:
        self._val_code_counts.zero_()

    def validation_step(self, batch: dict, batch_idx: int):
        with self.ema_scope():
            return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        counts = self._val_code_counts
        if self._trainer is not None:
            counts = self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")
        if counts.sum() > 0:  # share of the codebook used over the whole validation set
            self.log("val/codebook_usage_epoch", (counts > 0).float().mean(), sync_dist=True)  # equal on all ranks


class VQModelInterface(VQModel):
    """A VQ model as the latent diffusion model uses it: ``encode`` stops before the quantiser,
    ``decode`` quantises (unless ``force_not_quantize``)."""

    def __init__(self, embed_dim: int, *args: Any, **kwargs: Any):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def reconstruct(self, x, sample: bool):
        quant, qloss, info = self.quantize(self.encode_to_prequant(x))
        return self.decoder(self.post_quant_conv(quant)), (qloss, info)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, info = self.quantize(self.encode_to_prequant(input))
        dec = self.decoder(self.post_quant_conv(quant))
        return (dec, diff, info.indices) if return_pred_indices else (dec, diff)


class IdentityFirstStage(nn.Module):
    """Pixel space as a "first stage" (f = 1): every map is the identity."""

    def __init__(self, *args: Any, vq_interface: bool = False, **kwargs: Any):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args, **kwargs):
        return (x, None, [None, None, None]) if self.vq_interface else x

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z
