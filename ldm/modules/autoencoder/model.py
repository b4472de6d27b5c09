"""Convolutional encoder E and decoder D of the perceptual autoencoder (LDM Sec. 3.1, Sec. G).

``E`` maps ``x ∈ R^{B×3×H×W}`` to ``z ∈ R^{B×c×H/f×W/f}`` with ``f = 2^(len(ch_mult)-1)``; ``D``
maps it back. Both take the original ``ddconfig`` keys (``ch``, ``ch_mult``, ``num_res_blocks``,
``attn_resolutions``, ``z_channels``, ``double_z``, ``dropout``, ``resolution``, ...); unknown
keys that belong to the other half (``out_ch`` for the encoder, ``double_z`` for the decoder) are
accepted, as in the original.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, ResnetBlock, Upsample, make_attn, normalize

_SHARED_KEYS = {"out_ch", "in_channels", "double_z", "give_pre_end", "tanh_out", "use_linear_attn"}


def _check_config(name: str, ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int,
                  extra: dict) -> None:
    unknown = set(extra) - _SHARED_KEYS
    if unknown:
        raise TypeError(f"{name}: unknown ddconfig keys {sorted(unknown)}")
    if extra.get("use_linear_attn"):
        raise ValueError(f"{name}: use_linear_attn / attn_type='linear' is not supported; use 'vanilla' or 'none'")
    if not ch_mult:
        raise ValueError(f"{name}: ch_mult must list at least one channel multiplier")
    if int(ch) <= 0 or int(num_res_blocks) < 0:
        raise ValueError(f"{name}: ch must be positive and num_res_blocks >= 0 "
                         f"(got ch={ch}, num_res_blocks={num_res_blocks})")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution % factor:
        raise ValueError(f"{name}: resolution {resolution} is not divisible by the downsampling factor {factor}")


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int] = (), dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 attn_type: str = "vanilla", num_groups: int = 32, **ignored):
        super().__init__()
        _check_config("Encoder", ch, ch_mult, num_res_blocks, resolution, ignored)
        self.ch, self.num_resolutions, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        self.resolution, self.in_channels = resolution, in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        current_res = resolution
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * mult
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout=dropout, num_groups=num_groups))
                block_in = block_out
                if current_res in attn_resolutions:
                    stage.attn.append(make_attn(block_in, attn_type, num_groups))
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample(block_in, resamp_with_conv)
                current_res //= 2
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout=dropout, num_groups=num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, num_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout=dropout, num_groups=num_groups)
        self.norm_out = normalize(block_in, num_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int] = (), dropout: float = 0.0, resamp_with_conv: bool = True,
                 resolution: int, z_channels: int, give_pre_end: bool = False, tanh_out: bool = False,
                 attn_type: str = "vanilla", num_groups: int = 32, **ignored):
        super().__init__()
        _check_config("Decoder", ch, ch_mult, num_res_blocks, resolution, ignored)
        self.ch, self.num_resolutions, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        self.resolution, self.give_pre_end, self.tanh_out = resolution, give_pre_end, tanh_out

        block_in = ch * ch_mult[-1]
        current_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, current_res, current_res)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout=dropout, num_groups=num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, num_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout=dropout, num_groups=num_groups)

        stages: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout=dropout, num_groups=num_groups))
                block_in = block_out
                if current_res in attn_resolutions:
                    stage.attn.append(make_attn(block_in, attn_type, num_groups))
            if level != 0:
                stage.upsample = Upsample(block_in, resamp_with_conv)
                current_res *= 2
            stages.insert(0, stage)  # up[0] is the full-resolution stage, as in the original
        self.up = nn.ModuleList(stages)
        self.norm_out = normalize(block_in, num_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(F.silu(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
