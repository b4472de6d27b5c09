"""Building blocks of the first-stage encoder/decoder (LDM Sec. 3.1; layout of the original code).

Attribute names (``norm1``, ``conv1``, ``nin_shortcut``, ``q``/``k``/``v``/``proj_out``, ...) are
the original state-dict names, so released autoencoder checkpoints load into these modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6  # the original autoencoder GroupNorm eps


def normalize(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(32) with eps 1e-6, as in the original first stage."""
    if channels % num_groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups; "
                         f"choose ch (and ch_mult) so every width is a multiple of num_groups")
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """norm → swish → conv → norm → swish → dropout → conv, plus a (1×1 or 3×3) shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 conv_shortcut: bool = False, num_groups: int = 32):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = normalize(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return x
        return self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1-conv projections and a residual connection."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = normalize(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # B×C×H×W -> B×1×HW×C
            return t.reshape(b, c, hgt * wid).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


def make_attn(channels: int, attn_type: str = "vanilla", num_groups: int = 32) -> nn.Module:
    """``vanilla`` self-attention or ``none`` (identity; the original ``vq-f4-noattn``)."""
    if attn_type == "vanilla":
        return AttnBlock(channels, num_groups)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"attn_type must be 'vanilla' or 'none', got {attn_type!r}")


class Downsample(nn.Module):
    """Halve H and W: asymmetric zero pad (right/bottom) + stride-2 3×3 conv, or 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then an optional 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x
