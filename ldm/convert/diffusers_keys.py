"""Key names of our (the original CompVis / Stability) layout <-> diffusers' / transformers' layout.

Each map is built from the module tree of *our* model, so any widths, numbers of levels, residual
blocks and heads work. Maps are one-to-one; :func:`invert` gives the reverse direction. Tensors
keep their values; the only reshape is the VAE's mid-block attention (1×1 convolutions here,
``nn.Linear`` in diffusers), see :func:`reshape_for`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ldm.modules.attention import SpatialTransformer

RESBLOCK_UNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def invert(mapping: Mapping[str, str]) -> dict[str, str]:
    inverse = {v: k for k, v in mapping.items()}
    if len(inverse) != len(mapping):
        raise ValueError("key map is not one-to-one")
    return inverse


def _rename_resblock(rest: str) -> str:
    for ours, theirs in RESBLOCK_UNET.items():
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    raise KeyError(rest)


def unet_key_map(unet) -> dict[str, str]:
    """``UNetModel`` keys -> ``diffusers.UNet2DConditionModel`` keys."""
    per_level = unet.num_res_blocks + 1
    out = {}
    for key in unet.state_dict():
        out[key] = _unet_key(unet, key, per_level)
    return out


def _unet_key(unet, key: str, per_level: int) -> str:
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
             "label_emb.0.0": "class_embedding.linear_1", "label_emb.0.2": "class_embedding.linear_2",
             "label_emb": "class_embedding"}
    for ours, theirs in fixed.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours):]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        block, layer, rest = int(m[1]), int(m[2]), m[3]
        level, pos = divmod(block - 1, per_level)
        prefix = f"down_blocks.{level}"
        if pos == per_level - 1:  # the downsampler closing the level
            return f"{prefix}.downsamplers.0.{rest.replace('op.', 'conv.', 1)}"
        if layer == 0:
            return f"{prefix}.resnets.{pos}.{_rename_resblock(rest)}"
        return f"{prefix}.attentions.{pos}.{rest}"
    m = re.match(r"middle_block\.(\d+)\.(.+)", key)
    if m:
        layer, rest = int(m[1]), m[2]
        if layer == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{layer // 2}.{_rename_resblock(rest)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        block, layer, rest = int(m[1]), int(m[2]), m[3]
        level, pos = divmod(block, per_level)
        prefix = f"up_blocks.{level}"
        module = unet.output_blocks[block][layer]
        if layer == 0:
            return f"{prefix}.resnets.{pos}.{_rename_resblock(rest)}"
        if isinstance(module, SpatialTransformer):
            return f"{prefix}.attentions.{pos}.{rest}"
        return f"{prefix}.upsamplers.0.{rest}"
    raise KeyError(f"no diffusers name for UNet key {key!r}")


def vae_key_map(autoencoder) -> dict[str, str]:
    """``AutoencoderKL`` (first stage) keys -> ``diffusers.AutoencoderKL`` keys (loss weights left out)."""
    levels = autoencoder.decoder.num_resolutions
    out = {}
    for key in autoencoder.state_dict():
        if key.startswith("loss."):
            continue
        out[key] = _vae_key(key, levels)
    return out


def _vae_key(key: str, levels: int) -> str:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    part, rest = key.split(".", 1)
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest[len('norm_out.'):]}"
    m = re.match(r"mid\.(block_1|block_2|attn_1)\.(.+)", rest)
    if m:
        if m[1] == "attn_1":
            name, tail = m[2].split(".", 1)
            return f"{part}.mid_block.attentions.0.{VAE_ATTENTION[name]}.{tail}"
        return f"{part}.mid_block.resnets.{int(m[1][-1]) - 1}.{m[2].replace('nin_shortcut', 'conv_shortcut')}"
    m = re.match(r"(down|up)\.(\d+)\.(block|downsample|upsample|attn)\.(.+)", rest)
    if m:
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        prefix = f"{part}.{m[1]}_blocks.{level}"
        if m[3] == "block":
            return f"{prefix}.resnets.{m[4].replace('nin_shortcut', 'conv_shortcut')}"
        if m[3] == "attn":
            raise ValueError("diffusers' AutoencoderKL has no attention inside the resolution levels: "
                             "convert only first stages with attn_resolutions: []")
        return f"{prefix}.{m[3]}rs.0.{m[4]}"  # downsamplers.0.conv / upsamplers.0.conv
    raise KeyError(f"no diffusers name for autoencoder key {key!r}")


def reshape_for(key_theirs: str, value: torch.Tensor, to_diffusers: bool) -> torch.Tensor:
    """VAE mid attention: conv 1×1 weights [C, C, 1, 1] <-> linear weights [C, C]."""
    if ".mid_block.attentions.0." in key_theirs and key_theirs.endswith("weight") and "group_norm" not in key_theirs:
        return value[:, :, 0, 0] if to_diffusers else value[:, :, None, None]
    return value


def open_clip_to_hf(state_dict: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """An open_clip text tower (``model.*`` keys of FrozenOpenCLIPEmbedder, without the prefix) as
    ``transformers.CLIPTextModel`` weights with its first ``num_layers`` blocks (keys without the
    ``text_model.`` prefix older transformers versions add, see :func:`strip_text_model`)."""
    out = {"embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
           "embeddings.position_embedding.weight": state_dict["positional_embedding"],
           "final_layer_norm.weight": state_dict["ln_final.weight"],
           "final_layer_norm.bias": state_dict["ln_final.bias"]}
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state_dict[f"{src}attn.in_proj_{kind}"].chunk(3, dim=0)
            out.update({f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k,
                        f"{dst}self_attn.v_proj.{kind}": v})
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{theirs}.{kind}"] = state_dict[f"{src}{ours}.{kind}"]
    return out


def hf_to_open_clip(state_dict: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`open_clip_to_hf` (keys the CLIPTextModel does not hold are absent)."""
    sd = strip_text_model(state_dict)
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"], "ln_final.bias": sd["final_layer_norm.bias"]}
    for i in range(num_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{ours}.{kind}"] = sd[f"{src}{theirs}.{kind}"]
    return out


def strip_text_model(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys without the ``text_model.`` prefix (transformers < 5 has it, 5 does not)."""
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state_dict.items()}


def with_prefix_of(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unprefixed CLIPTextModel keys, prefixed the way ``module``'s own state dict is."""
    prefix = "text_model." if any(k.startswith("text_model.") for k in module.state_dict()) else ""
    return {prefix + k: v for k, v in state_dict.items()}
