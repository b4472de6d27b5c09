"""Epoch time and peak GPU memory per training epoch (original ``main.CUDACallback``).

Does nothing unless the trainer runs on CUDA devices.
"""
from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class CUDACallback(L.Callback):
    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None

    @staticmethod
    def _device(trainer: L.Trainer) -> torch.device | None:
        device = trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = self._device(trainer)
        if device is None:
            return
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
        self._start = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = self._device(trainer)
        if device is None or self._start is None:
            return
        torch.cuda.synchronize(device)
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        epoch_time = time.time() - self._start
        peak_mib = float(trainer.strategy.reduce(torch.tensor(peak_mib, device=device), reduce_op="mean"))
        epoch_time = float(trainer.strategy.reduce(torch.tensor(epoch_time, device=device), reduce_op="mean"))
        rank_zero_info(f"Average epoch time: {epoch_time:.2f} seconds")
        rank_zero_info(f"Average peak memory: {peak_mib:.2f} MiB")
