"""Spatial conditioner for ``concat`` conditioning: resize an image-like input to the latent size.

Used for super-resolution (the low-res image), inpainting (masked image + mask) and semantic
synthesis (one-hot maps, remapped to a few channels by ``channel_mapper``) — LDM Sec. 4.4–4.5.
``n_stages`` interpolations by ``multiplier`` each, then an optional 1×1 conv (``channel_mapper``).
Null condition: all zeros of the encoded shape (``zeros_like(encode(x))``: "no map / no
low-res image"), so it needs the input itself, not a batch size (``null_needs_input``). A model
sees it in training only with ``ucg_rate > 0``; in a :class:`~ldm.modules.conditioners.stack.ConditionerStack`
an entry without dropout keeps its input in both CFG branches instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.conditioners.base import Conditioner
from ldm.modules.conditioners.registry import register_conditioner

METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")


@register_conditioner("spatial_rescaler", "spatial")
class SpatialRescaler(Conditioner):
    null_needs_input = True

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: int | None = None, bias: bool = False, ucg_rate: float = 0.0):
        super().__init__(output_key="concat", ucg_rate=ucg_rate)
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.n_stages = n_stages
        self.method = method
        self.multiplier = multiplier
        self.in_channels = in_channels
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def batch_size(self, raw) -> int:
        return raw.shape[0]

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"SpatialRescaler expects [B, {self.in_channels}, H, W], got {shape}")
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.remap_output else x

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        if not torch.is_tensor(raw_or_batch_size):
            raise TypeError("SpatialRescaler.null_condition needs the raw input tensor (its shape sets the output "
                            "shape), not a batch size")
        with torch.no_grad():
            return torch.zeros_like(self._encode(raw_or_batch_size))
