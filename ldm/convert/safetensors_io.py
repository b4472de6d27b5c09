"""Weights-only export of a stage-2 checkpoint to ``.safetensors``.

``bake_ema``: the released Stable Diffusion checkpoints carry the EMA weights already copied into
``model.*`` and keep only ``model_ema.decay`` / ``model_ema.num_updates``; this reproduces that:
every ``model.<name>`` that has a shadow ``model_ema.<name without dots>`` (the LitEma layout, see
:mod:`ldm.modules.ema`) takes the shadow's value, and the shadows are dropped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ldm.models.diffusion_state_dict import EMA_PREFIX, EMA_SCALARS


def bake_ema(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.*`` <- their EMA shadows; the shadow buffers are removed (the two scalars stay)."""
    shadows = {k[len(EMA_PREFIX):]: v for k, v in state_dict.items()
               if k.startswith(EMA_PREFIX) and k[len(EMA_PREFIX):] not in EMA_SCALARS}
    if not shadows:
        raise ValueError("--ema: the checkpoint has no model_ema.* shadow weights (was it trained with use_ema?)")
    out, used = {}, set()
    for key, value in state_dict.items():
        if key.startswith(EMA_PREFIX):
            if key[len(EMA_PREFIX):] in EMA_SCALARS:
                out[key] = value
            continue
        shadow = key[len("model."):].replace(".", "") if key.startswith("model.") else None
        if shadow in shadows:
            value = shadows[shadow]
            used.add(shadow)
        out[key] = value
    unused = sorted(set(shadows) - used)
    if unused:
        raise ValueError(f"--ema: {len(unused)} EMA shadow(s) match no model.* weight (e.g. {unused[0]!r})")
    return out


def to_half(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float16 weights; the top-level schedule buffers (``betas``, ``alphas_cumprod``, ...) and
    ``scale_factor`` keep their precision (fp16 loses digits of 1 - alphas_cumprod near t = 0)."""
    return {k: v.half() if v.is_floating_point() and "." in k else v for k, v in state_dict.items()}


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors (contiguous, unshared copies, as safetensors requires) to ``path``."""
    from safetensors.torch import save_file

    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a tensor, cannot be stored in safetensors: {bad[:5]}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=dict(metadata or {"format": "pt"}))
    return path


def checkpoint_to_safetensors(ckpt: str | os.PathLike, out: str | os.PathLike, *, ema: bool = False,
                              half: bool = False, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read ``ckpt`` safely, optionally bake EMA / halve, write ``out``; returns what was written."""
    from ldm.checkpoint import load_state_dict

    state_dict = load_state_dict(ckpt, trust_checkpoint=trust_checkpoint)
    if ema:
        state_dict = bake_ema(state_dict)
    if half:
        state_dict = to_half(state_dict)
    save_safetensors(state_dict, out)
    return state_dict
