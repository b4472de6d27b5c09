"""Learning-rate multipliers with the original latent-diffusion names and parameters.

Each class is a plain callable ``schedule(step) -> float``: the factor that
``torch.optim.lr_scheduler.LambdaLR`` multiplies the base learning rate with, stepped once per
optimisation step (``interval: step``). The configs shipped with the original code keep working
unchanged, e.g. the Stable-Diffusion warm-up::

    scheduler_config:
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params: {warm_up_steps: [10000], cycle_lengths: [10000000000000],
               f_start: [1.e-6], f_max: [1.], f_min: [1.]}

``step`` counts optimiser steps from 0.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate


def _linear_warm_up(step: float, warm_up_steps: float, start: float, peak: float) -> float:
    """Straight line from ``start`` at step 0 to ``peak`` at ``warm_up_steps``."""
    return start + (peak - start) * step / warm_up_steps


def _cosine_decay(progress: float, high: float, low: float) -> float:
    """Half cosine from ``high`` (progress 0) to ``low`` (progress >= 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * progress))


class _VerboseMixin:
    verbosity_interval: int = 0

    def _maybe_report(self, step: int, value: float, name: str) -> None:
        if self.verbosity_interval and step % self.verbosity_interval == 0:
            print(f"[{type(self).__name__}] step {step}: {name} = {value:.4e}")


class LambdaWarmUpCosineScheduler(_VerboseMixin):
    """Linear warm-up from ``lr_start`` to ``lr_max`` over ``warm_up_steps``, then a half cosine
    down to ``lr_min`` at ``max_decay_steps`` (and constant after). Values are multipliers of the
    optimiser's base learning rate (use a base LR of 1.0 for absolute values)."""

    def __init__(self, warm_up_steps: int, lr_min: float, lr_max: float, lr_start: float,
                 max_decay_steps: int, verbosity_interval: int = 0):
        if warm_up_steps < 0 or max_decay_steps <= warm_up_steps:
            raise ValueError(
                f"LambdaWarmUpCosineScheduler: need 0 <= warm_up_steps < max_decay_steps, "
                f"got warm_up_steps={warm_up_steps}, max_decay_steps={max_decay_steps}")
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start = lr_start
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.last_lr = 0.0
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        if n < self.lr_warm_up_steps:
            lr = _linear_warm_up(n, self.lr_warm_up_steps, self.lr_start, self.lr_max)
        else:
            progress = (n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps)
            lr = _cosine_decay(progress, self.lr_max, self.lr_min)
        self._maybe_report(n, lr, "lr")
        self.last_lr = lr
        return lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2(_VerboseMixin):
    """Repeated cycles, configured by equal-length lists (one entry per cycle).

    Within cycle ``k`` (of length ``cycle_lengths[k]`` steps): linear warm-up from ``f_start[k]``
    to ``f_max[k]`` over ``warm_up_steps[k]`` steps, then a half cosine down to ``f_min[k]`` at the
    end of the cycle. Factors multiply the base learning rate. Past the last cycle the last
    cycle's final value is kept.
    """

    def __init__(self, warm_up_steps: Sequence[int], f_min: Sequence[float], f_max: Sequence[float],
                 f_start: Sequence[float], cycle_lengths: Sequence[int], verbosity_interval: int = 0):
        lists = dict(warm_up_steps=warm_up_steps, f_min=f_min, f_max=f_max, f_start=f_start,
                     cycle_lengths=cycle_lengths)
        for name, value in lists.items():
            if not isinstance(value, (list, tuple)) or len(value) == 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a non-empty list, got {value!r}")
        lengths = {name: len(value) for name, value in lists.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{type(self).__name__}: all lists need one entry per cycle, got lengths {lengths}")
        for k, (warm, length) in enumerate(zip(warm_up_steps, cycle_lengths)):
            if length <= 0 or warm < 0 or warm > length:
                raise ValueError(f"{type(self).__name__}: cycle {k} needs 0 <= warm_up_steps <= cycle_lengths "
                                 f"and cycle_lengths > 0, got {warm} and {length}")
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start = list(f_start)
        self.f_min = list(f_min)
        self.f_max = list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = [0] + list(accumulate(self.cycle_lengths))
        self.last_f = 0.0
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step ``n`` falls in (a step equal to a cycle's end stays in it,
        as in the original)."""
        return min(bisect_left(self.cum_cycles, n, lo=1) - 1, len(self.cycle_lengths) - 1)

    def _after_warm_up(self, cycle: int, n: float) -> float:
        warm, length = self.lr_warm_up_steps[cycle], self.cycle_lengths[cycle]
        progress = (n - warm) / (length - warm) if length > warm else 1.0
        return _cosine_decay(progress, self.f_max[cycle], self.f_min[cycle])

    def schedule(self, n: int, **kwargs) -> float:
        cycle = self.find_in_interval(n)
        n_in_cycle = n - self.cum_cycles[cycle]
        if n_in_cycle < self.lr_warm_up_steps[cycle]:
            f = _linear_warm_up(n_in_cycle, self.lr_warm_up_steps[cycle], self.f_start[cycle], self.f_max[cycle])
        else:
            f = self._after_warm_up(cycle, n_in_cycle)
        self._maybe_report(n, f, "f")
        self.last_f = f
        return f

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """Like :class:`LambdaWarmUpCosineScheduler2`, but after warm-up the factor falls linearly,
    ``f = f_min + (f_max - f_min) * (L - n) / L`` with ``n`` the step within the cycle and ``L`` its
    length (the original's formula: it measures the decay from the cycle start, not from the end
    of warm-up). With ``f_min = f_max = 1`` this is a pure linear warm-up (Stable Diffusion). Past the
    end of the last cycle the factor stays at its ``f_min`` (the original's formula would go on falling,
    below zero: a negative learning rate for a run trained past its schedule)."""

    def _after_warm_up(self, cycle: int, n: float) -> float:
        length = self.cycle_lengths[cycle]
        n = min(n, length)
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
