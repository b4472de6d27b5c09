"""Small building pieces shared by the UNet and its attention blocks.

* :class:`GroupNorm32` — GroupNorm that always computes in float32 (also under autocast) and
  returns the input dtype, as the original UNet's ``normalization()`` does.
* :func:`timestep_embedding` — the sinusoidal embedding of DDPM (Ho et al. 2020, Appx. B,
  "Transformer sinusoidal position embedding"), concatenated as ``[cos, sin]``, max period 10000.
* :func:`maybe_checkpoint` — optional activation checkpointing through
  ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` (autocast state is kept in the recompute).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype or autocast state; output has the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


def normalization(channels: int, eps: float = 1e-5, groups: int = 32) -> GroupNorm32:
    """The UNet's GroupNorm(32) (eps 1e-5); raises when ``channels`` is not divisible by ``groups``."""
    if channels % groups != 0:
        raise ValueError(f"GroupNorm({groups}) needs a channel count divisible by {groups}, got {channels}")
    return GroupNorm32(groups, channels, eps=eps)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    return layers[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    return layers[dims](*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (output convolutions start at zero, as in the original)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^(-i/half)``.

    ``timesteps``: a 1-D tensor of N (possibly fractional) timesteps. Returns ``[N, dim]`` float32;
    an odd ``dim`` is zero-padded by one column.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [N], got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def maybe_checkpoint(fn: Callable, *args, enabled: bool):
    """Run ``fn(*args)``, recomputing its activations in backward when ``enabled`` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
