"""The training side of the first-stage autoencoders (KL and VQ, LDM Sec. 3.1 / Sec. G).

Training minimises LDM Eq. (25) with Lightning 2 manual optimisation: one autoencoder forward per
batch, an autoencoder update (Adam, betas (0.5, 0.9)) and, from ``disc_start`` on, a discriminator
update. Gradients are accumulated over N batches (each backward
scaled by 1/N; N = ``accumulate_grad_batches``, a model parameter because Lightning 2 forbids the
trainer setting with manual optimisation); optimisers step on the N-th batch. ``gan_step`` counts
autoencoder updates (the original's ``global_step``; Lightning's own ``global_step`` counts both
optimisers' steps) and is stored in checkpoints. Each backward pass leaves some parameters without a
gradient (the frozen or
idle discriminator, or the autoencoder behind a detached reconstruction), so the model asks DDP for
``find_unused_parameters=True`` (``ddp_find_unused_parameters``, see :mod:`ldm.distributed`): plain
``--strategy ddp`` works.

Non-finite losses (``skip_nonfinite``, on by default): the step of a batch whose autoencoder or
discriminator loss (or gradients) is NaN/Inf is skipped for both optimisers — weights, optimiser
state, LR schedule, ``gan_step`` and EMA stay as they were — counted (``train/nonfinite_steps``) and
reported; ``max_nonfinite_steps`` bad steps in a row stop training (the guard of
:class:`ldm.models.nonfinite.NonFiniteGuard`, shared with DDPM).
"""
from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.autoencoder import Decoder, Encoder
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


class AdversarialAutoencoder(L.LightningModule):
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
        """The guard DDPM uses (:class:`ldm.models.nonfinite.NonFiniteGuard`), driven by ``training_step``."""
        from ldm.models.nonfinite import NonFiniteGuard

        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_steps) if skip_nonfinite else None

    # -- facts -------------------------------------------------------------------------------------
    @property
    def downsampling_factor(self) -> int:
        """Pixels per latent cell along each side (``f`` of LDM Sec. 3.1: the encoder halves
        ``len(ch_mult) - 1`` times)."""
        return 2 ** (int(self.encoder.num_resolutions) - 1)

    @property
    def image_channels(self) -> int:
        """Channels of the images the autoencoder encodes."""
        return int(self.encoder.conv_in.in_channels)

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
                       "interval": "step"}
                      for opt in optimizers]
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
            from ldm.models.nonfinite import running_stats_snapshot

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
        from ldm.models.nonfinite import restore_snapshot

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
