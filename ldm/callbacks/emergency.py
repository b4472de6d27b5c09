"""Save ``last.ckpt`` when the job is told to stop (SIGUSR1) or training raises.

The original main.py saved from inside the signal handler ("Summoning checkpoint."). Saving in
the middle of an optimiser step can capture inconsistent state, and under DDP every rank must
take part, so here the handler only raises a flag; the checkpoint is written at the end of the
current batch, once all ranks agree that some rank received the signal.

On an exception the checkpoint is written only if training had started (a failure while
restoring a checkpoint must not overwrite it with fresh weights). With several processes only
global rank 0 writes, without the barrier ``trainer.save_checkpoint`` would wait on, since the
other ranks may be gone.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class EmergencyCheckpoint(L.Callback):
    def __init__(self, ckpt_path: str | Path, on_signal: bool = True, on_exception: bool = True,
                 signal_name: str = "SIGUSR1") -> None:
        super().__init__()
        self.ckpt_path = str(ckpt_path)
        self.on_signal = on_signal
        self.on_exception_enabled = on_exception
        self.signal_name = signal_name
        self.signal_received = False
        self._training_started = False
        self._previous_handler: Any = None
        self._installed = False

    # -- signal -----------------------------------------------------------------------------
    def _handle_signal(self, signum, frame) -> None:
        self.signal_received = True
        previous = self._previous_handler
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, frame)

    def _install(self) -> None:
        signum = getattr(signal, self.signal_name, None)
        if not self.on_signal or signum is None or self._installed:
            return  # e.g. Windows has no SIGUSR1
        try:
            self._previous_handler = signal.getsignal(signum)
            signal.signal(signum, self._handle_signal)
            self._installed = True
        except ValueError:  # not the main thread of the interpreter
            rank_zero_warn(f"cannot install a {self.signal_name} handler outside the main thread")

    def _uninstall(self) -> None:
        if self._installed:
            signal.signal(getattr(signal, self.signal_name), self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_started = True
        self._install()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._uninstall()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._uninstall()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._installed:
            return
        asked = self.signal_received
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            self.signal_received = False
            rank_zero_info(f"{self.signal_name} received: summoning checkpoint {self.ckpt_path}")
            trainer.save_checkpoint(self.ckpt_path)

    # -- exception --------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._uninstall()
        if not (self.on_exception_enabled and self._training_started):
            return
        if trainer.world_size == 1:
            rank_zero_info(f"{type(exception).__name__} during training: summoning checkpoint {self.ckpt_path}")
            trainer.save_checkpoint(self.ckpt_path)
        elif trainer.global_rank == 0:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.ckpt_path)
            rank_zero_info(f"{type(exception).__name__} during training: saved {self.ckpt_path}")
