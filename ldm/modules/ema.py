"""Exponential moving average of model weights, with the original ``LitEma`` state-dict layout.

Buffers: ``decay`` (float32 scalar), ``num_updates`` (int32 scalar; -1 disables the warm-up), then one
buffer per trainable parameter, named by its path with the dots removed
(``diffusion_model.input_blocks.0.0.weight`` -> ``diffusion_modelinput_blocks00weight``).

Update (Polyak averaging): ``shadow <- shadow - (1 - d)·(shadow - param)`` (computed as a lerp) with the warm-up decay
``d = min(decay, (1 + n) / (10 + n))`` where ``n`` is the number of updates *including* this one.

Released checkpoints often carry only ``decay`` and ``num_updates`` under ``model_ema.`` (the EMA
weights were already copied into the model). Loading such a state dict does not fail: the shadow
buffers keep their values, the missing shadow keys are not reported, and
:attr:`LitEma.shadow_loaded` is set to False so the owner can call ``ema.reset_to(model)``.
A state dict with *some* but not all shadow keys is still reported as missing keys.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True, **kwargs):
        super().__init__()
        if "use_num_upates" in kwargs:  # the original's spelling
            use_num_updates = kwargs.pop("use_num_upates")
        if kwargs:
            raise TypeError(f"LitEma got unexpected arguments {sorted(kwargs)}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int32))
        self.m_name2s_name: dict[str, str] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            shadow_name = name.replace(".", "")
            if shadow_name in self.m_name2s_name.values() or shadow_name in ("decay", "num_updates"):
                raise ValueError(f"EMA buffer name {shadow_name!r} (from parameter {name!r}) is not unique")
            self.m_name2s_name[name] = shadow_name
            self.register_buffer(shadow_name, param.detach().clone())
        self.collected_params: list[torch.Tensor] = []
        self.shadow_loaded = True

    def current_decay(self) -> float:
        """The decay the next :meth:`forward` will use (warm-up included)."""
        decay = float(self.decay)
        n = int(self.num_updates)
        if n >= 0:
            decay = min(decay, (1 + (n + 1)) / (10 + (n + 1)))
        return decay

    def _shadow_pairs(self, model: nn.Module):
        buffers = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name not in self.m_name2s_name:
                raise KeyError(f"parameter {name!r} is not tracked by this EMA (was the model changed?)")
            yield param, buffers[self.m_name2s_name[name]]

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters."""
        decay = self.current_decay()
        if self.num_updates >= 0:
            self.num_updates += 1
        shadows, params = [], []
        for param, shadow in self._shadow_pairs(model):
            if shadow.dtype != param.dtype:
                shadow.data = shadow.data.to(param.dtype)
            shadows.append(shadow)
            params.append(param.detach())
        # shadow + (1 - d)(param - shadow) in one in-place pass per tensor (no temporaries): on one CPU thread
        # 0.07 s for the 274 M-parameter celebahq-f4 UNet, against 0.3-1.1 s for shadow.sub_((1-d)·(shadow-param))
        torch._foreach_lerp_(shadows, params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        for param, shadow in self._shadow_pairs(model):
            param.copy_(shadow)

    @torch.no_grad()
    def reset_to(self, model: nn.Module) -> None:
        """Set the shadow weights to ``model``'s weights (use after loading a decay-only EMA state)."""
        for param, shadow in self._shadow_pairs(model):
            shadow.copy_(param)
        self.shadow_loaded = True

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` to put back with :meth:`restore`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by :meth:`store`."""
        if not self.collected_params:
            raise RuntimeError("LitEma.restore called without a preceding store()")
        parameters = list(parameters)
        if len(parameters) != len(self.collected_params):
            raise ValueError(f"restore got {len(parameters)} parameters, store saved {len(self.collected_params)}")
        for saved, param in zip(self.collected_params, parameters):
            param.copy_(saved)
        self.collected_params = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        shadow_keys = [prefix + s for s in self.m_name2s_name.values()]
        has_any_shadow = any(k in state_dict for k in shadow_keys)
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if shadow_keys and not has_any_shadow and prefix + "decay" in state_dict:
            wanted = set(shadow_keys)
            missing_keys[before:] = [k for k in missing_keys[before:] if k not in wanted]
            self.shadow_loaded = False
            warnings.warn(f"EMA state '{prefix}' holds only decay/num_updates (no averaged weights); the shadow "
                          "weights were kept — call reset_to(model) to start the average from the loaded model",
                          stacklevel=2)
        elif has_any_shadow:
            self.shadow_loaded = True
