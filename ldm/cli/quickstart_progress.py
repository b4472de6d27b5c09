"""A progress line for step-budgeted training: ``step / budget``, steps per second and the time left.

Added to each quick-start stage as ``lightning.callbacks.quickstart_progress`` (the configs in
``configs/demo/quickstart_*.yaml``). One line every ``every_seconds`` (and one at the end), so it reads
well in a terminal and in a log file alike; the rate is measured over the whole stage so far, which
makes a slow or busy machine visible at once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


def format_eta(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepProgress(Callback):
    """Print ``[quickstart] <label>: step 1200/3000 (40%), 11.8 steps/s, ETA 2:33`` every few seconds.

    With ``summary_path`` the final step count, training seconds and rate are also written there as JSON
    (rank 0), for a driver that ran the stage as a child process."""

    def __init__(self, label: str = "training", every_seconds: float = 10.0, summary_path: str | None = None):
        super().__init__()
        self.label = label
        self.every_seconds = float(every_seconds)
        self.summary_path = summary_path
        self._start = self._last = 0.0
        self._first_step = 0
        self.seconds = 0.0          # training time of the stage (set at the end)
        self.steps_per_second = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step

    def line(self, step: int, budget: int, elapsed: float) -> str:
        done = step - self._first_step
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"[quickstart] {self.label}: step {step}"
        if budget > 0:
            text += f"/{budget} ({step / budget:.0%})"
        text += f", {rate:.1f} steps/s"
        if 0 < step < budget and rate > 0:
            text += f", ETA {format_eta((budget - step) / rate)}"
        return text

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_seconds and trainer.is_global_zero:
            self._last = now
            print(self.line(trainer.global_step, trainer.max_steps, now - self._start), flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        elapsed = time.monotonic() - self._start
        self.seconds = elapsed
        self.steps_per_second = (trainer.global_step - self._first_step) / elapsed if elapsed > 0 else 0.0
        if trainer.is_global_zero:
            print(self.line(trainer.global_step, trainer.max_steps, elapsed) + f", done in {format_eta(elapsed)}",
                  flush=True)
            if self.summary_path:
                summary = {"steps": int(trainer.global_step), "seconds": elapsed, "precision": str(trainer.precision),
                           "steps_per_second": self.steps_per_second}
                Path(self.summary_path).parent.mkdir(parents=True, exist_ok=True)
                Path(self.summary_path).write_text(json.dumps(summary))


class LinearLRDecay(Callback):
    """Anneal every optimizer's learning rate linearly from its configured value to ``final_factor``
    times that value over the last ``decay_fraction`` of the step budget (``trainer.max_steps``).

    For models without an LR scheduler (the autoencoder): a constant LR leaves the final weights as
    noisy as the last Adam steps, a short anneal at the end of a fixed budget settles them.
    """

    def __init__(self, decay_fraction: float = 0.3, final_factor: float = 0.1):
        super().__init__()
        if not 0 < decay_fraction <= 1 or not 0 <= final_factor <= 1:
            raise ValueError(f"LinearLRDecay: need 0 < decay_fraction <= 1 and 0 <= final_factor <= 1, "
                             f"got {decay_fraction}, {final_factor}")
        self.decay_fraction = float(decay_fraction)
        self.final_factor = float(final_factor)
        self._base: list[list[float]] | None = None

    def factor(self, step: int, budget: int) -> float:
        """1 before the last ``decay_fraction * budget`` steps, then linearly down to ``final_factor``."""
        if budget <= 0:
            return 1.0
        start = budget * (1 - self.decay_fraction)
        if step <= start:
            return 1.0
        progress = min(1.0, (step - start) / (budget - start))
        return 1.0 - (1.0 - self.final_factor) * progress

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizers = trainer.optimizers
        if self._base is None:
            self._base = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
        factor = self.factor(trainer.global_step, trainer.max_steps)
        for opt, base in zip(optimizers, self._base):
            for group, lr in zip(opt.param_groups, base):
                group["lr"] = lr * factor
