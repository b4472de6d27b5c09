"""Optimiser and learning-rate schedule from config, for the stage-2 LightningModules.

``optimizer_config`` is either ``None`` (AdamW with PyTorch's defaults, as the original LDM),
a name (``"adamw"`` / ``"adam"``), or a config node ``{target: torch.optim.AdamW, params: {...}}``
whose params are passed on (``lr`` comes from the model's ``learning_rate``).

``scheduler_config`` builds a multiplier ``f(step)`` (any of :mod:`ldm.lr_scheduler`, or anything
with a ``schedule(step)`` method or that is callable) and wraps it in ``LambdaLR`` stepped every
optimisation step. Gradient clipping is the trainer's job (``lightning.trainer.gradient_clip_val``).

Implementation: PyTorch's Adam/AdamW default to a per-parameter loop on the CPU (``foreach`` on CUDA).
Unless the config sets ``fused`` or ``foreach`` itself, :func:`build_optimizer` asks for the fused kernel
(one pass over each parameter, same update to float rounding): on one CPU thread it cuts AdamW's step on the
274 M-parameter ``celebahq-f4`` UNet from 0.58 s to 0.14 s (``benchmarks/bench_unet.py``). Not under
``16-mixed``: Lightning refuses gradient clipping with an optimiser that unscales fp16 gradients itself.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ldm.util import ConfigError, instantiate_from_config, resolve_target

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


FUSED_DEVICES = {"cpu", "cuda"}


def _parameters(param_groups: list) -> list[torch.Tensor]:
    params = []
    for group in param_groups:
        params.extend(group["params"] if isinstance(group, Mapping) else [group])
    return params


def fused_kwargs(cls: type, param_groups: list, params: Mapping, precision: str | None = None) -> dict:
    """``{"fused": True}`` when ``cls`` is a PyTorch optimiser with a fused kernel for these parameters.

    Empty when the config already chose (``fused`` / ``foreach``), for other optimiser classes, for
    parameters on other devices or not floating point, and under fp16 mixed precision (see module doc).
    """
    if "fused" in params or "foreach" in params or str(precision or "").startswith("16"):
        return {}
    if not cls.__module__.startswith("torch.optim") or "fused" not in inspect.signature(cls).parameters:
        return {}
    tensors = _parameters(param_groups)
    if tensors and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors):
        return {"fused": True}
    return {}


def build_optimizer(param_groups: Iterable, lr: float, optimizer_config: Any = None,
                    precision: str | None = None) -> torch.optim.Optimizer:
    """Build the optimiser for ``param_groups`` (parameters or dicts with their own ``lr``).

    ``precision`` is the trainer's (``"bf16-mixed"``, ``"16-mixed"``, ...): it decides whether the fused
    kernel may be used (see the module doc).
    """
    if lr is None or not float(lr) > 0:
        raise ConfigError(
            f"learning rate must be a positive number, got {lr!r}; set model.base_learning_rate in the "
            "config (the trainer sets model.learning_rate from it) or pass learning_rate=...")
    if optimizer_config is None:
        cls, params = torch.optim.AdamW, {}
    elif isinstance(optimizer_config, str):
        key = optimizer_config.lower()
        if key not in OPTIMIZERS:
            raise ConfigError(f"optimizer_config: unknown optimizer {optimizer_config!r}; choose one of "
                              f"{sorted(OPTIMIZERS)} or give a {{target, params}} node")
        cls, params = OPTIMIZERS[key], {}
    elif isinstance(optimizer_config, Mapping) and "target" in optimizer_config:
        cls = resolve_target(optimizer_config["target"])
        params = dict(optimizer_config.get("params") or {})
    else:
        raise ConfigError("optimizer_config must be None, a name or a {target, params} node, "
                          f"got {optimizer_config!r}")
    params.pop("lr", None)
    param_groups = list(param_groups)
    params.update(fused_kwargs(cls, param_groups, params, precision))
    return cls(param_groups, lr=float(lr), **params)


def lr_multiplier_from_config(scheduler_config: Mapping):
    """Instantiate ``scheduler_config`` and return its ``step -> factor`` function."""
    schedule = instantiate_from_config(scheduler_config, node="scheduler_config")
    fn = getattr(schedule, "schedule", schedule)
    if not callable(fn):
        raise ConfigError(f"scheduler_config: {type(schedule).__name__} is neither callable "
                          "nor has a schedule(step) method")
    return fn


def build_lr_scheduler(optimizer: torch.optim.Optimizer, scheduler_config: Mapping | None):
    """Lightning ``lr_scheduler_config`` dict (per-step ``LambdaLR``) or ``None``."""
    if scheduler_config is None:
        return None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_multiplier_from_config(scheduler_config))
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
