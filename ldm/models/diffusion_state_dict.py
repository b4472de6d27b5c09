"""Making original and our own stage-2 checkpoints load into a DDPM / LatentDiffusion.

Handled here, before ``nn.Module.load_state_dict`` sees the dict (so Lightning resume, ``ckpt_path``
and :func:`ldm.checkpoint.load_weights` all behave the same):

- stale buffers from old releases (``ddim_sigmas``, ``ddim_alphas``, ``ddim_alphas_prev``,
  ``ddim_sqrt_one_minus_alphas``) and ``...position_ids`` buffers newer ``transformers`` versions
  no longer keep are dropped, unless the model really has such a key;
- EMA: released checkpoints often hold only ``model_ema.decay`` / ``model_ema.num_updates`` (the EMA
  weights were copied into ``model.*``). Every missing EMA shadow is then filled from the
  checkpoint's own ``model.*`` weight, so the EMA equals the loaded weights. A checkpoint with no
  EMA entries at all also keeps the model's current ``decay`` / ``num_updates``. A model without
  EMA drops the checkpoint's ``model_ema.*`` entries.
"""
from __future__ import annotations

from collections.abc import Mapping

STALE_BUFFERS = ("ddim_sigmas", "ddim_alphas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas")
EMA_PREFIX = "model_ema."
EMA_SCALARS = ("decay", "num_updates")


def is_stale_key(key: str) -> bool:
    return key in STALE_BUFFERS or key.endswith("position_ids")


def ema_shadow_names(model_param_names, name_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """``model.<param>`` -> ``model_ema.<param with dots removed>`` (the LitEma layout)."""
    out = {}
    for name in model_param_names:
        shadow = name_map[name] if name_map and name in name_map else name.replace(".", "")
        out[f"model.{name}"] = EMA_PREFIX + shadow
    return out


def prepare_state_dict(state_dict: Mapping, own_state: Mapping, shadow_of: Mapping[str, str],
                       has_ema: bool) -> tuple[dict, list[str]]:
    """Return ``(state_dict ready to load, notes)``. ``own_state`` is the model's state dict,
    ``shadow_of`` maps ``model.*`` keys to their EMA shadow keys."""
    notes: list[str] = []
    out = {k: v for k, v in state_dict.items() if k in own_state or not is_stale_key(k)}
    dropped = [k for k in state_dict if k not in out]
    if dropped:
        more = " ..." if len(dropped) > 4 else ""
        notes.append(f"dropped {len(dropped)} stale key(s): {', '.join(dropped[:4])}{more}")

    ema_keys = [k for k in out if k.startswith(EMA_PREFIX)]
    if not has_ema:
        if ema_keys:
            for k in ema_keys:
                del out[k]
            notes.append(f"model has no EMA (use_ema=False): ignored {len(ema_keys)} model_ema.* entries")
        return out, notes

    filled = 0
    for model_key, shadow_key in shadow_of.items():
        if shadow_key in own_state and shadow_key not in out and model_key in out:
            out[shadow_key] = out[model_key].detach().clone()
            filled += 1
    if filled:
        notes.append(f"EMA: {filled} shadow weight(s) missing in the checkpoint, initialised from model.*")
    if not ema_keys and filled:
        for scalar in EMA_SCALARS:
            key = EMA_PREFIX + scalar
            if key in own_state and key not in out:
                out[key] = own_state[key]
    return out, notes
