"""Training-speed switches of the diffusion UNet (what ``DDPM(channels_last=..., compile=...,
gradient_checkpointing=...)`` does to its UNet; see docs/performance.md).

* ``channels_last`` — the UNet's 4-D weights in NHWC layout (inputs are converted in
  ``DDPM.apply_model``), which lets oneDNN / cuDNN pick NHWC convolution kernels.
* ``compile`` — ``nn.Module.compile()`` *in place* on the UNet: the module tree and the state-dict
  keys stay exactly as they are (``torch.compile(module)`` would wrap it in an ``OptimizedModule`` and
  prefix every key with ``_orig_mod.``). ``True`` uses the defaults, a mapping is passed on
  (``mode``, ``backend``, ``dynamic``, ``fullgraph``, ``options``).
* ``gradient_checkpointing`` — when not ``None``, overrides the ``use_checkpoint`` of every block
  (recompute with ``torch.utils.checkpoint(use_reentrant=False)``, which replays the forward under the
  same autocast state, so it works with bf16-mixed).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["apply_unet_switches", "compile_options", "set_gradient_checkpointing"]


def set_gradient_checkpointing(module: nn.Module, enabled: bool) -> int:
    """Set ``use_checkpoint`` on every submodule that has it; returns how many were set."""
    count = 0
    for sub in module.modules():
        if hasattr(sub, "use_checkpoint"):
            sub.use_checkpoint = bool(enabled)
            count += 1
    return count


def compile_options(compile) -> dict | None:
    """``False``/``None`` -> None (eager), ``True`` -> ``{}``, a mapping -> a dict of ``torch.compile`` kwargs."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, Mapping):
        return {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in compile.items()}
    raise TypeError(f"compile must be a bool or a mapping of torch.compile options "
                    f"(mode, backend, dynamic, fullgraph, options), got {compile!r}")


def apply_unet_switches(unet: nn.Module, *, channels_last: bool = False, compile=False,
                        gradient_checkpointing: bool | None = None) -> nn.Module:
    """Apply the speed switches to ``unet`` in place (see the module docstring) and return it."""
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be True or False, got {channels_last!r}")
    if gradient_checkpointing is not None:
        if not isinstance(gradient_checkpointing, bool):
            raise TypeError(f"gradient_checkpointing must be True, False or None, got {gradient_checkpointing!r}")
        if set_gradient_checkpointing(unet, gradient_checkpointing) == 0:
            raise ValueError(f"gradient_checkpointing={gradient_checkpointing}: {type(unet).__name__} has no "
                             "blocks with a use_checkpoint switch")
    if channels_last:
        unet.to(memory_format=torch.channels_last)  # only 4-D weights change layout
    options = compile_options(compile)
    if options is not None:
        unet.compile(**options)  # in place: keeps the module tree and the state-dict keys
    return unet


