"""Joining several conditioners' outputs into one slot of the conditioning dict (``concat``,
``crossattn``, ``vector``; see :mod:`ldm.models.conditioning`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

#: the axis each slot's parts are joined on (sgm's GeneralConditioner: crossattn / vector on the
#: feature axis, concat on the channel axis)
JOIN_DIM = {"concat": 1, "crossattn": 2, "vector": 1}


def concat_inputs(parts: Sequence[torch.Tensor], size: Sequence[int] | None = None,
                  mode: str = "nearest") -> torch.Tensor:
    """Spatial conditions for ``concat`` conditioning (LDM Sec. 3.3 / 4.4-4.5): each ``[B, C_i, h_i, w_i]``
    part resized to ``size`` (default: the first part's) with ``mode`` and joined on the channel
    axis in the given order, e.g. ``[E(masked image), mask]`` (LDM inpainting) or
    ``[mask, E(masked image)]`` (SD 2 inpainting)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("concat_inputs needs at least one tensor")
    size = tuple(size) if size is not None else tuple(parts[0].shape[-2:])
    out = []
    for part in parts:
        if part.ndim != 4:
            raise ValueError(f"a concat condition must be [B, C, h, w], got shape {tuple(part.shape)}")
        if tuple(part.shape[-2:]) != size:
            part = torch.nn.functional.interpolate(part.float(), size=size, mode=mode).to(part.dtype)
        out.append(part)
    if len({p.shape[0] for p in out}) != 1:
        raise ValueError(f"concat conditions differ in batch size: {[tuple(p.shape) for p in out]}")
    return torch.cat(out, dim=1)


def join_slot(parts: Sequence[torch.Tensor], slot: str) -> torch.Tensor:
    """Several conditioners' outputs for one slot as one tensor (see :data:`JOIN_DIM`)."""
    if len(parts) == 1:
        return parts[0]
    if slot == "concat":
        return concat_inputs(parts)
    try:
        return torch.cat(list(parts), dim=JOIN_DIM[slot])
    except RuntimeError as err:
        raise ValueError(f"cannot join the {slot!r} conditions {[tuple(p.shape) for p in parts]}: {err}") from err
