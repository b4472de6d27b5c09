"""Attention layers of the UNet, all computed with ``torch.nn.functional.scaled_dot_product_attention``.

* :class:`AttentionBlock` — spatial self-attention of the ADM/LDM UNet (``norm``, 1-D conv ``qkv``
  C→3C, ``proj_out``), with the original's two channel orders of the fused ``qkv`` tensor
  ("legacy": heads outer, q/k/v inner; "new": q/k/v outer, heads inner).
* :class:`SpatialTransformer` — LDM Sec. 3.3: ``proj_in`` (1×1 conv), ``depth`` transformer blocks of
  self-attention, cross-attention to the conditioning ``context`` (LDM Eq. (3):
  ``softmax(QKᵀ/√d)·V`` with ``Q = W_Q·φ(z_t)``, ``K = W_K·τ_θ(y)``, ``V = W_V·τ_θ(y)``) and a GEGLU
  feed-forward, then ``proj_out``. Module names reproduce the original state-dict keys.
  Stable Diffusion 2.x options: ``use_linear`` (``proj_in``/``proj_out`` are ``nn.Linear`` applied to
  the tokens instead of 1×1 convolutions) and ``disable_self_attn`` (``attn1`` attends to the
  context as well, as in the x4 upscaler's high-resolution levels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.unet_layers import GroupNorm32, conv_nd, maybe_checkpoint, normalization, zero_module


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference ``softmax(q kᵀ / √d) v`` on ``[..., T, d]`` tensors (used by tests and for clarity)."""
    scale = q.shape[-1] ** -0.5
    weights = torch.einsum("...td,...sd->...ts", q.float() * scale, k.float()).softmax(dim=-1)
    return torch.einsum("...ts,...sd->...td", weights, v.float()).to(q.dtype)


def split_fused_qkv(qkv: torch.Tensor, num_heads: int, legacy_order: bool):
    """Split a fused ``[B, 3·H·d, T]`` tensor into q, k, v of shape ``[B, H, T, d]``."""
    b, width, length = qkv.shape
    if width % (3 * num_heads) != 0:
        raise ValueError(f"qkv width {width} is not divisible by 3 x num_heads={num_heads}")
    d = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(b, num_heads, 3 * d, length).split(d, dim=2)
    else:
        q, k, v = (part.reshape(b, num_heads, d, length) for part in qkv.chunk(3, dim=1))
    # contiguous [B, H, T, d]: with the head dim strided, SDPA falls back to its unfused math path
    # (measured on CPU in bf16: 2x slower attention, plus a mask/where pass); the copy is cheap.
    return tuple(t.transpose(-1, -2).contiguous() for t in (q, k, v))


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, residual (ADM UNet attention block)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels != 0:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if self.num_heads < 1 or channels % self.num_heads != 0:
            raise ValueError(f"channels {channels} cannot be split into {self.num_heads} heads")
        self.use_checkpoint = use_checkpoint
        self.legacy_order = not use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, 3 * channels, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, enabled=self.use_checkpoint and self.training)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        q, k, v = split_fused_qkv(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, d]
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` to ``context`` (self-attention when ``context`` is None)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        self.context_dim = context_dim if context_dim is not None else query_dim
        self.query_dim = query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            if self.context_dim != self.query_dim:
                raise ValueError(
                    f"this cross-attention layer expects a context of width {self.context_dim} "
                    "(conditioning 'crossattn'), but context=None was passed")
            context = x
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context has width {context.shape[-1]}, expected {self.context_dim} (context_dim)")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} != input batch {x.shape[0]}")
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Gated GELU: ``a · gelu(g)`` with ``[a, g] = proj(x)`` (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """``net = [GEGLU | Linear+GELU, Dropout, Linear]`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to ``context``, GEGLU feed-forward."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 context_dim: int | None = None, gated_ff: bool = True, use_checkpoint: bool = False,
                 disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim=context_dim if disable_self_attn else None, heads=n_heads,
                                    dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        enabled = self.use_checkpoint and self.training
        if context is None:
            return maybe_checkpoint(self._forward, x, enabled=enabled)
        return maybe_checkpoint(self._forward, x, context, enabled=enabled)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context=context if self.disable_self_attn else None)
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, cross-attending to ``context`` (LDM Sec. 3.3)."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 dropout: float = 0.0, context_dim: int | None = None, use_checkpoint: bool = False,
                 use_linear: bool = False, disable_self_attn: bool = False):
        super().__init__()
        if n_heads < 1 or d_head < 1:
            raise ValueError(f"SpatialTransformer needs n_heads >= 1 and d_head >= 1, got {n_heads}, {d_head}")
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)
        self.use_linear = use_linear
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim,
                                  use_checkpoint=use_checkpoint, disable_self_attn=disable_self_attn)
            for _ in range(depth))
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.use_linear:
            tokens = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))
        else:
            tokens = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context)
        if self.use_linear:
            return x + rearrange(self.proj_out(tokens), "b (h w) c -> b c h w", h=h, w=w)
        return x + self.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w))
