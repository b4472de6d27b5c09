"""Image grids from ``pl_module.log_images`` to ``<logdir>/images/<split>/`` and the active logger.

Same parameters as the original ``main.ImageLogger``. During training, images are logged when the
global step (or the batch index, with ``log_on_batch_idx``) is a multiple of ``batch_frequency``
or, with ``increase_log_steps``, one of 1, 2, 4, ... below it. Differences, on purpose:

- each training step is logged at most once (with gradient accumulation Lightning calls the batch
  hook several times per step);
- validation logs the first batch of every validation run (the original keyed validation on the
  global step too, so validation images rarely appeared); ``log_on_batch_idx`` keeps the
  original batch-index rule;
- only global rank 0 calls ``log_images`` and writes files.

Grid files are named ``{key}_gs-{global_step:06}_e-{epoch:06}_b-{batch_idx:06}.png``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image


class ImageLogger(L.Callback):
    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_on_batch_idx: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: Mapping[str, Any] | None = None,
        save_dir: str | None = None,
        nrow: int = 4,
    ) -> None:
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger: batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = int(batch_frequency)
        self.max_images = int(max_images)
        self.clamp = clamp
        self.rescale = rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.save_dir = save_dir
        self.nrow = nrow
        if increase_log_steps:
            self.log_steps = [2**n for n in range(int(np.log2(self.batch_freq)) + 1)]
        else:
            self.log_steps = [self.batch_freq]
        self._last_logged_step: int | None = None

    # -- when -------------------------------------------------------------------------------
    def check_frequency(self, check_idx: int) -> bool:
        hit = check_idx % self.batch_freq == 0 or check_idx in self.log_steps
        if hit and (check_idx > 0 or self.log_first_step):
            while self.log_steps and self.log_steps[0] <= check_idx:
                self.log_steps.pop(0)
            return True
        return False

    # -- where ------------------------------------------------------------------------------
    def _root(self, trainer: L.Trainer) -> str:
        if self.save_dir is not None:
            return self.save_dir
        logger = trainer.logger
        save_dir = getattr(logger, "save_dir", None) if logger is not None else None
        return save_dir or trainer.default_root_dir

    @staticmethod
    def to_grid(images: torch.Tensor, nrow: int, rescale: bool) -> np.ndarray:
        """``B×C×H×W`` in [-1, 1] (or [0, 1] without ``rescale``) -> ``H×W×3`` uint8."""
        import torchvision

        grid = torchvision.utils.make_grid(images.float(), nrow=nrow)
        if rescale:
            grid = (grid + 1.0) / 2.0
        grid = grid.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
        return (grid * 255).round().astype(np.uint8)

    def log_local(self, save_dir: str, split: str, images: Mapping[str, torch.Tensor], global_step: int,
                  current_epoch: int, batch_idx: int) -> dict[str, np.ndarray]:
        root = os.path.join(save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        grids = {}
        for key, value in images.items():
            grid = self.to_grid(value, self.nrow, self.rescale)
            name = f"{key.replace('/', '_')}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            Image.fromarray(grid).save(os.path.join(root, name))
            grids[key] = grid
        return grids

    @staticmethod
    def log_to_logger(trainer: L.Trainer, split: str, grids: Mapping[str, np.ndarray], global_step: int) -> None:
        for logger in trainer.loggers:
            kind = type(logger).__name__
            for key, grid in grids.items():
                tag = f"{split}/{key}"
                if kind == "TensorBoardLogger":
                    logger.experiment.add_image(tag, grid, global_step, dataformats="HWC")
                elif kind == "WandbLogger":
                    logger.log_image(key=tag, images=[grid], step=global_step)

    # -- what -------------------------------------------------------------------------------
    def _select(self, images: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        selected = {}
        for key, value in images.items():
            if not (isinstance(value, torch.Tensor) and value.dim() == 4):
                continue  # e.g. captions or per-sample numbers
            value = value[: self.max_images].detach().float().cpu()
            if self.clamp:
                value = value.clamp(-1.0, 1.0)
            selected[key] = value
        return selected

    def log_img(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                split: str = "train") -> None:
        log_images = getattr(pl_module, "log_images", None)
        if not callable(log_images) or self.max_images <= 0 or trainer.global_rank != 0:
            return
        was_training = pl_module.training
        if was_training:
            pl_module.eval()
        try:
            with torch.no_grad():
                images = log_images(batch, split=split, **self.log_images_kwargs)
        finally:
            if was_training:
                pl_module.train()
        if not isinstance(images, Mapping):
            rank_zero_warn(f"ImageLogger: log_images returned {type(images).__name__}, expected a dict")
            return
        images = self._select(images)
        if not images:
            return
        grids = self.log_local(self._root(trainer), split, images, pl_module.global_step,
                               pl_module.current_epoch, batch_idx)
        self.log_to_logger(trainer, split, grids, pl_module.global_step)

    # -- hooks ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.disabled or not (pl_module.global_step > 0 or self.log_first_step):
            return
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not self.log_on_batch_idx and self._last_logged_step == check_idx:
            return
        if self.check_frequency(check_idx):
            self._last_logged_step = check_idx
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.disabled or trainer.sanity_checking or not (pl_module.global_step > 0 or self.log_first_step):
            return
        if self.log_on_batch_idx:
            if not self.check_frequency(batch_idx):
                return
        elif batch_idx != 0 or dataloader_idx != 0:
            return
        self.log_img(trainer, pl_module, batch, batch_idx, split="val")
