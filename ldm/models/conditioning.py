"""The conditioning dict the diffusion UNet consumes, and the wrapper that feeds it.

A condition travels as ``{"concat": [B,C,h,w], "crossattn": [B,M,D], "vector": [B,...]}`` (any
subset). :class:`DiffusionWrapper` concatenates ``concat`` to the noisy input on the channel axis
(LDM Sec. 3.3, concat conditioning), passes ``crossattn`` as the cross-attention ``context``
(LDM Eq. 3 / Sec. 3.3) and ``vector`` as ``y`` (class label / ADM vector added to the timestep
embedding).

The original code's spellings are accepted everywhere: ``c_concat`` / ``c_crossattn`` (lists of
tensors, concatenated on dim 1) and ``c_adm``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ldm.data.contracts import masked_image
from ldm.modules.conditioners.join import JOIN_DIM, concat_inputs, join_slot
from ldm.util import instantiate_from_config

__all__ = ["BARE_TENSOR_ENTRY", "CONDITIONING_KEYS", "COND_KEY_ALIASES", "DiffusionWrapper", "JOIN_DIM",
           "REQUIRED_ENTRIES", "as_condition_dict", "check_conditioning_key", "concat_inputs", "join_slot",
           "masked_image"]

CONDITIONING_KEYS = (None, "concat", "crossattn", "hybrid", "adm", "hybrid-adm")
COND_KEY_ALIASES = {
    "concat": "concat", "c_concat": "concat",
    "crossattn": "crossattn", "c_crossattn": "crossattn", "context": "crossattn",
    "vector": "vector", "c_adm": "vector", "adm": "vector", "y": "vector",
}
#: which dict entries each ``conditioning_key`` needs
REQUIRED_ENTRIES = {None: (), "concat": ("concat",), "crossattn": ("crossattn",),
                    "hybrid": ("concat", "crossattn"), "adm": ("vector",),
                    "hybrid-adm": ("concat", "crossattn", "vector")}  # SD 2 x4 upscaler: + noise level
#: where a bare tensor condition goes, per ``conditioning_key``
BARE_TENSOR_ENTRY = {"concat": "concat", "crossattn": "crossattn", "adm": "vector"}


def check_conditioning_key(conditioning_key):
    if conditioning_key not in CONDITIONING_KEYS:
        raise ValueError(f"unknown conditioning_key {conditioning_key!r}; choose one of {CONDITIONING_KEYS}")
    return conditioning_key


def _join(value, entry: str):
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return None
        if entry == "vector":
            if len(value) != 1:
                raise ValueError("a 'vector' condition must be a single tensor")
            return value[0]
        return torch.cat(list(value), dim=1)
    return value


def as_condition_dict(cond, conditioning_key) -> dict:
    """Normalise ``cond`` (``None``, a tensor, a list of tensors or a dict) into the conditioning dict.

    A bare tensor/list goes where ``conditioning_key`` says (``concat``, ``crossattn`` or, for
    ``adm``, ``vector``); ``hybrid`` needs a dict with both entries.
    """
    if cond is None:
        return {}
    if isinstance(cond, Mapping):
        out = {}
        for key, value in cond.items():
            if key not in COND_KEY_ALIASES:
                raise KeyError(f"unknown conditioning entry {key!r}; use one of {sorted(set(COND_KEY_ALIASES))}")
            value = _join(value, COND_KEY_ALIASES[key])
            if value is not None:
                out[COND_KEY_ALIASES[key]] = value
        return out
    if conditioning_key is None:
        raise ValueError("a condition was given but the model is unconditional (conditioning_key=None)")
    if conditioning_key in ("hybrid", "hybrid-adm"):
        raise ValueError(f"conditioning_key={conditioning_key!r} needs a dict condition with the entries "
                         f"{list(REQUIRED_ENTRIES[conditioning_key])}")
    entry = BARE_TENSOR_ENTRY[conditioning_key]
    if (isinstance(cond, Sequence) and not isinstance(cond, torch.Tensor)
            and any(not isinstance(c, torch.Tensor) for c in cond)):
        raise TypeError(f"condition list must hold tensors, got {[type(c).__name__ for c in cond]}")
    return {entry: _join(cond, entry)}


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` (checkpoint keys ``model.diffusion_model.*``) and routes
    the conditioning dict into it according to ``conditioning_key``."""

    def __init__(self, diff_model_config, conditioning_key=None):
        super().__init__()
        self.diffusion_model = instantiate_from_config(diff_model_config, node="unet_config")
        self.conditioning_key = check_conditioning_key(conditioning_key)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, *, c_concat=None, c_crossattn=None,
                c_adm=None) -> torch.Tensor:
        cond = as_condition_dict(cond, self.conditioning_key)
        for entry, value in (("concat", c_concat), ("crossattn", c_crossattn), ("vector", c_adm)):
            value = _join(value, entry)
            if value is not None:
                cond[entry] = value
        if self.conditioning_key is None:
            if cond:
                raise ValueError(f"unconditional model (conditioning_key=None) got conditioning {sorted(cond)}")
            return self.diffusion_model(x, t)
        missing = [e for e in REQUIRED_ENTRIES[self.conditioning_key] if cond.get(e) is None]
        if missing:
            raise ValueError(f"conditioning_key={self.conditioning_key!r} needs the condition entries {missing}; "
                             f"got {sorted(cond)}")
        if cond.get("concat") is not None:
            concat = cond["concat"].to(x.dtype)
            if concat.shape[0] != x.shape[0] or concat.shape[2:] != x.shape[2:]:
                raise ValueError(f"concat condition {tuple(concat.shape)} does not match the input {tuple(x.shape)} "
                                 "in batch size and spatial size")
            x = torch.cat([x, concat], dim=1)
        return self.diffusion_model(x, t, context=cond.get("crossattn"), y=cond.get("vector"))
