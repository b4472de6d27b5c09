"""Attention layers: SDPA against a naive softmax attention, qkv channel orders, GroupNorm32 in fp32."""
from __future__ import annotations

import pytest
import torch

from ldm.modules.attention import AttentionBlock, CrossAttention, SpatialTransformer, naive_attention
from ldm.modules.unet_layers import GroupNorm32


def test_naive_attention_matches_hand_computation():
    q = torch.tensor([[[1.0, 0.0]]])             # one query
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two keys
    v = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])
    w = torch.softmax(torch.tensor([1.0, 0.0]) / 2 ** 0.5, dim=0)
    torch.testing.assert_close(naive_attention(q, k, v)[0, 0], w[0] * v[0, 0] + w[1] * v[0, 1])


def test_cross_attention_equals_naive_einsum_attention():
    layer = CrossAttention(query_dim=12, context_dim=7, heads=3, dim_head=4)
    x, ctx = torch.randn(2, 5, 12), torch.randn(2, 6, 7)
    split = lambda t: t.reshape(2, -1, 3, 4).transpose(1, 2)  # noqa: E731
    q, k, v = split(layer.to_q(x)), split(layer.to_k(ctx)), split(layer.to_v(ctx))
    expected = layer.to_out(naive_attention(q, k, v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(layer(x, ctx), expected, atol=1e-5, rtol=1e-5)
    # self-attention when no context and context_dim == query_dim
    self_layer = CrossAttention(query_dim=12, heads=3, dim_head=4)
    assert self_layer(x).shape == x.shape
    with pytest.raises(ValueError, match="context"):
        layer(x)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_equals_naive_attention(new_order):
    block = AttentionBlock(64, num_heads=4, use_new_attention_order=new_order)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 64, 3, 5)
    flat = x.reshape(2, 64, 15)
    qkv = block.qkv(block.norm(flat))  # [B, 3*64, T]
    heads, d = 4, 16
    if new_order:   # q/k/v outer, heads inner
        q, k, v = (t.reshape(2, heads, d, 15) for t in qkv.chunk(3, dim=1))
    else:           # heads outer, q/k/v inner
        q, k, v = qkv.reshape(2, heads, 3 * d, 15).split(d, dim=2)
    q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
    h = naive_attention(q, k, v).transpose(-1, -2).reshape(2, 64, 15)
    expected = (flat + block.proj_out(h)).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_block_head_channels_override_heads():
    assert AttentionBlock(128, num_heads=1, num_head_channels=32).num_heads == 4
    with pytest.raises(ValueError):
        AttentionBlock(96, num_head_channels=64)


def test_spatial_transformer_is_residual_and_uses_context():
    st = SpatialTransformer(32, n_heads=2, d_head=16, depth=2, context_dim=8).eval()
    x = torch.randn(1, 32, 4, 4)
    ctx = torch.randn(1, 3, 8)
    torch.testing.assert_close(st(x, ctx), x)  # proj_out starts at zero
    torch.nn.init.normal_(st.proj_out.weight, std=0.2)
    assert (st(x, ctx) - st(x, torch.randn(1, 3, 8))).abs().max() > 1e-4
    assert st.norm.eps == 1e-6


def test_groupnorm32_computes_in_fp32_under_bf16_autocast():
    norm = GroupNorm32(32, 64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 64, 4, 4) * 30 + 5).to(torch.bfloat16)
    reference = torch.nn.functional.group_norm(x.float(), 32, norm.weight, norm.bias, 1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
        out_fp32_input = norm(x.float())
    assert out.dtype == torch.bfloat16
    assert out_fp32_input.dtype == torch.float32
    assert torch.equal(out, reference.to(torch.bfloat16))
    torch.testing.assert_close(out_fp32_input, reference)


def test_fused_qkv_attention_uses_a_fused_sdpa_kernel():
    """Strided q/k/v send SDPA to its unfused math fallback; the split must hand it contiguous heads."""
    from torch.profiler import profile

    from ldm.modules.attention import AttentionBlock

    block = AttentionBlock(64, num_heads=2)
    x = torch.randn(1, 64, 8, 8, requires_grad=True)
    with profile() as prof:
        block(x).sum().backward()
    kernels = [e.key for e in prof.key_averages() if "scaled_dot_product" in e.key]
    assert any("flash" in k or "efficient" in k for k in kernels), kernels
    assert not any(k.endswith("_attention_math") for k in kernels), kernels
