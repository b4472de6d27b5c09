"""The guard against non-finite losses, shared by DDPM / LatentDiffusion and the autoencoders.

:class:`NonFiniteGuard` skips an optimiser step whose loss (or, without a gradient scaler, whose
gradients) is NaN/Inf, counts it, and raises after ``max_consecutive`` bad steps in a row.

Why it is DDP-safe: a rank whose loss is non-finite still returns a (zeroed, ``nan_to_num``) loss and
runs backward, so every rank takes part in DDP's gradient all-reduce (returning ``None`` on one rank
would leave the others waiting in that all-reduce, and a detached zero has no graph to run backward
through). The skip decision is then made in
``on_before_optimizer_step`` from a flag that is OR-reduced over all ranks
(``strategy.reduce_boolean_decision(..., all=False)``), so all ranks skip the same steps and the
replicas stay identical. A skip sets every gradient to ``None``: the optimiser then leaves those
parameters, their moments and their step counts untouched (zero gradients would still move AdamW's
weights through momentum and weight decay). Under ``16-mixed`` the gradient scaler still sees the
step's inf/NaN gradients and lowers its scale; overflowing gradients alone are left to the scaler
(they are normal while it calibrates) and are not counted.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "restore_snapshot", "running_stats_snapshot"]


class NonFiniteLossError(FloatingPointError):
    """Raised after too many consecutive optimiser steps with a NaN/Inf loss or gradients."""


def _gradients_finite(optimizers) -> bool:
    grads = [p.grad for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    if not grads:
        return True
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    return bool(torch.isfinite(total))


def _uses_grad_scaler(trainer) -> bool:
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


def running_stats_snapshot(module: nn.Module,
                           skip: tuple[str, ...] = ("model_ema.",)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the buffers of ``module`` that a training forward pass may change (batch-norm running
    statistics, a quantiser's EMA codebook, ...; the weight EMA under ``skip`` is updated only after a
    good step): a skipped step puts them back with :func:`restore_snapshot`, so a NaN batch leaves no trace."""
    tensors = [buffer for name, buffer in module.named_buffers() if not name.startswith(skip)]
    # a quantiser with an EMA codebook also writes its embedding weights in the forward pass
    tensors += [p for sub in module.modules() if callable(getattr(sub, "ema_update", None)) for p in sub.parameters()]
    return [(tensor, tensor.detach().clone()) for tensor in tensors]


@torch.no_grad()
def restore_snapshot(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buffer, saved in pairs:
        buffer.copy_(saved)


class NonFiniteGuard:
    """Per-model state of the non-finite loss guard (used by :class:`ldm.models.ddpm.DDPM`).

    ``observe(loss)`` in ``training_step`` (returns the loss with NaN/Inf replaced by 0, still part of
    the graph); ``before_optimizer_step(module, optimizer)`` in ``on_before_optimizer_step`` (returns
    True and drops the gradients when the step must be skipped). Counters: ``total`` skipped steps,
    ``consecutive`` skipped steps in a row; ``last_step_skipped`` tells the EMA update to wait.
    """

    def __init__(self, max_consecutive: int = 10):
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"max_nonfinite_steps must be a positive int, got {max_consecutive!r}")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0
        self.last_step_skipped = False
        self._pending: torch.Tensor | None = None  # "some micro-batch since the last step was bad"

    def observe(self, loss: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: no synchronisation here
        self._pending = bad if self._pending is None else (self._pending | bad)
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)

    def before_optimizer_step(self, module, optimizer) -> bool:
        """Automatic optimisation (``on_before_optimizer_step``): True when the step must be skipped."""
        return self.decide(module, [optimizer])

    def decide(self, module, optimizers, on_skip=None) -> bool:
        """One decision for one optimisation step of ``optimizers`` (manual optimisation passes every
        optimiser of the step, e.g. autoencoder and discriminator): True, with every gradient dropped
        and ``on_skip()`` called, when the step must be skipped. Call it on every rank once per step."""
        optimizers = list(optimizers)
        pending, self._pending = self._pending, None
        local_bad = bool(pending) if pending is not None else False
        trainer = module._trainer
        if not local_bad and not _uses_grad_scaler(trainer):
            local_bad = not _gradients_finite(optimizers)
        bad = local_bad
        if trainer is not None:  # every rank calls this once per optimiser step: the reduction never hangs
            bad = bool(trainer.strategy.reduce_boolean_decision(local_bad, all=False))
        self.last_step_skipped = bad
        if not bad:
            self.consecutive = 0
            return False
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        if on_skip is not None:
            on_skip()
        self.total += 1
        self.consecutive += 1
        step = getattr(trainer, "global_step", "?") if trainer is not None else "?"
        if trainer is not None:
            module.log("train/nonfinite_steps", float(self.total), on_step=True, on_epoch=False, logger=True,
                       prog_bar=False, rank_zero_only=True)
        if trainer is None or trainer.is_global_zero:
            warnings.warn(f"step {step}: non-finite loss or gradients (NaN/Inf); optimizer step skipped "
                          f"({self.consecutive} in a row, {self.total} in total)", RuntimeWarning, stacklevel=2)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"the training loss or its gradients were NaN/Inf in {self.consecutive} consecutive optimizer "
                f"steps (last at step {step}; {self.total} skipped in total). Training diverged: lower the "
                "learning rate, clip gradients (--gradient_clip_val 1.0), prefer bf16-mixed over 16-mixed, or "
                "check the data for NaN/Inf. Raise model.params.max_nonfinite_steps to tolerate longer runs "
                "of bad steps.")
        return True
