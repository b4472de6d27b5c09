"""A Stable-Diffusion-shaped :class:`LatentDiffusion` <-> a diffusers ``StableDiffusionPipeline`` folder.

``to_diffusers(model)`` builds diffusers' / transformers' own modules — ``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextModel`` + ``CLIPTokenizer`` and a ``DDIMScheduler`` with the model's
betas — whose configs are read off our built modules (any widths, levels, residual blocks, head
counts, ``use_linear_in_transformer``, ``disable_self_attentions``, class / noise-level embeddings),
and copies the weights through the one-to-one maps of :mod:`ldm.convert.diffusers_keys`.
``from_diffusers`` reverses it into a model built from our config.

The text encoder: a FrozenCLIPEmbedder's ``CLIPTextModel`` is saved as is. A FrozenOpenCLIPEmbedder's
tower becomes a ``CLIPTextModel`` (fused ``in_proj`` split into q/k/v); with ``layer: penultimate``
it keeps all but the last block, so ``last_hidden_state`` (after ``final_layer_norm``) is our
condition. Tensors a ``CLIPTextModel`` has no place for (the skipped block, ``text_projection``,
``logit_scale``) go to ``text_encoder/ldm_open_clip_extra.safetensors`` so the round trip is exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ldm.convert.diffusers_keys import (
    hf_to_open_clip,
    open_clip_to_hf,
    reshape_for,
    strip_text_model,
    unet_key_map,
    vae_key_map,
    with_prefix_of,
)

OPEN_CLIP_EXTRA = "ldm_open_clip_extra.safetensors"
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


class ConversionError(ValueError):
    """The model has a feature the diffusers layout cannot express."""


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as err:  # pragma: no cover - a test extra
        raise ImportError("the diffusers conversion needs the 'diffusers' package: pip install diffusers") from err


# ---------------------------------------------------------------------------------------------- UNet
def unet_config(unet) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config computing what our ``UNetModel`` computes."""
    a = unet._attn
    problems = []
    if not a["spatial"] or unet.context_dim is None:
        problems.append("use_spatial_transformer: true with a context_dim (diffusers' UNet cross-attends)")
    if unet.channel_mult[0] != 1:
        problems.append("channel_mult[0] == 1 (diffusers' conv_in outputs block_out_channels[0])")
    if unet.dims != 2 or unet.predict_codebook_ids:
        problems.append("dims: 2 and no n_embed")
    first_res = unet.input_blocks[1][0]
    if first_res.use_scale_shift_norm or any(getattr(b[0], "updown", False) for b in unet.input_blocks[1:]):
        problems.append("use_scale_shift_norm: false and resblock_updown: false")
    if unet.middle_block[1].transformer_blocks[0].disable_self_attn:
        problems.append("disable_middle_self_attn: false")
    if problems:
        raise ConversionError("this UNet cannot be expressed as a diffusers UNet2DConditionModel; it needs "
                              + "; ".join(problems))
    per_level = unet.num_res_blocks + 1
    levels = len(unet.channel_mult)
    heads, only_cross, has_attn = [], [], []
    for level in range(levels):
        block = unet.input_blocks[1 + level * per_level]
        attn = block[1] if len(block) > 1 else None
        has_attn.append(attn is not None)
        if attn is not None:
            tb = attn.transformer_blocks[0]
            if tb.attn1.heads * (tb.attn1.to_q.out_features // tb.attn1.heads) != attn.in_channels:
                raise ConversionError("diffusers needs heads x head width == channels in every transformer")
            heads.append(tb.attn1.heads)
            only_cross.append(tb.disable_self_attn)
        else:
            heads.append(1)
            only_cross.append(False)
    mid = unet.middle_block[1]
    heads[-1] = mid.transformer_blocks[0].attn1.heads if not has_attn[-1] else heads[-1]
    if has_attn[-1] and heads[-1] != mid.transformer_blocks[0].attn1.heads:
        raise ConversionError("the middle transformer's head count differs from the last level's")
    config = dict(
        sample_size=unet.image_size if isinstance(unet.image_size, int) else None,
        in_channels=unet.in_channels, out_channels=unet.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if h else "DownBlock2D" for h in has_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if h else "UpBlock2D" for h in reversed(has_attn)),
        block_out_channels=tuple(unet.model_channels * m for m in unet.channel_mult),
        layers_per_block=unet.num_res_blocks, cross_attention_dim=unet.context_dim,
        attention_head_dim=tuple(heads),  # diffusers' SD UNets take the head COUNT under this name
        use_linear_projection=bool(a["linear"]), transformer_layers_per_block=int(a["depth"]),
        only_cross_attention=tuple(only_cross), mid_block_only_cross_attention=False,
        flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, norm_num_groups=32,
    )
    if unet.num_classes == "sequential":
        config.update(class_embed_type="projection",
                      projection_class_embeddings_input_dim=unet.label_emb[0][0].in_features)
    elif unet.num_classes is not None:
        config.update(num_class_embeds=int(unet.num_classes))
    return config


def _copy(source: dict, mapping: dict, to_diffusers: bool) -> dict:
    return {dst: reshape_for(dst if to_diffusers else src, source[src], to_diffusers).clone()
            for src, dst in mapping.items()}


def unet_to_diffusers(unet):
    from diffusers import UNet2DConditionModel

    theirs = UNet2DConditionModel(**unet_config(unet))
    mapping = unet_key_map(unet)
    theirs.load_state_dict(_copy(unet.state_dict(), mapping, True), strict=True)
    return theirs.eval()


# ---------------------------------------------------------------------------------------------- VAE
def vae_config(first_stage, scale_factor: float) -> dict[str, Any]:
    enc, dec = first_stage.encoder, first_stage.decoder
    if any(len(stage.attn) for stage in list(enc.down) + list(dec.up)):
        raise ConversionError("diffusers' AutoencoderKL has no attention inside the levels: "
                              "attn_resolutions must be []")
    if first_stage.embed_dim != dec.z_shape[1]:
        raise ConversionError(f"diffusers' AutoencoderKL needs embed_dim == z_channels "
                              f"({first_stage.embed_dim} vs {dec.z_shape[1]})")
    ch_mult = [stage.block[-1].out_channels // enc.ch for stage in enc.down]
    levels = len(ch_mult)
    return dict(in_channels=enc.in_channels, out_channels=dec.conv_out.out_channels,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(enc.ch * m for m in ch_mult), layers_per_block=enc.num_res_blocks,
                latent_channels=first_stage.embed_dim, norm_num_groups=enc.norm_out.num_groups,
                sample_size=enc.resolution, scaling_factor=float(scale_factor))


def vae_to_diffusers(first_stage, scale_factor: float):
    from diffusers import AutoencoderKL

    theirs = AutoencoderKL(**vae_config(first_stage, scale_factor))
    theirs.load_state_dict(_copy(first_stage.state_dict(), vae_key_map(first_stage), True), strict=True)
    return theirs.eval()


# ---------------------------------------------------------------------------------------------- text
def _open_clip_layers(cond) -> tuple[int, int]:
    total = len(cond.model.transformer.resblocks)
    return total, total - cond.layer_idx


def text_to_diffusers(cond):
    """(CLIPTextModel, CLIPTokenizer, extra tensors) for our text conditioner."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.conditioners.clip import FrozenCLIPEmbedder
    from ldm.modules.conditioners.open_clip import FrozenOpenCLIPEmbedder

    if isinstance(cond, FrozenCLIPEmbedder):
        if cond.layer != "last":
            raise ConversionError(f"StableDiffusionPipeline conditions on the last hidden state; this "
                                  f"FrozenCLIPEmbedder uses layer={cond.layer!r}")
        model = cond.transformer if isinstance(cond.transformer, CLIPTextModel) else cond.transformer.text_model
        cond.tokenizer.model_max_length = cond.max_length  # the pipeline pads / truncates to this
        return model, cond.tokenizer, {}
    if not isinstance(cond, FrozenOpenCLIPEmbedder):
        raise ConversionError(f"the text encoder must be FrozenCLIPEmbedder or FrozenOpenCLIPEmbedder, "
                              f"got {type(cond).__name__}")
    m = cond.model
    total, keep = _open_clip_layers(cond)
    width = m.token_embedding.weight.shape[1]
    block = m.transformer.resblocks[0]
    act = type(block.mlp.gelu).__name__ if hasattr(block.mlp, "gelu") else "GELU"
    config = CLIPTextConfig(vocab_size=m.vocab_size, hidden_size=width,
                            intermediate_size=block.mlp.c_fc.out_features, num_hidden_layers=keep,
                            num_attention_heads=block.attn.num_heads, max_position_embeddings=m.context_length,
                            hidden_act="quick_gelu" if act == "QuickGELU" else "gelu",
                            layer_norm_eps=m.ln_final.eps, projection_dim=m.text_projection.shape[1],
                            pad_token_id=0, bos_token_id=49406, eos_token_id=49407)
    text = CLIPTextModel(config)
    ours = m.state_dict()
    weights = with_prefix_of(text, {k: v.clone() for k, v in open_clip_to_hf(ours, keep).items()})
    missing, unexpected = text.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ConversionError(f"OpenCLIP -> CLIPTextModel: missing {missing}, unexpected {unexpected}")
    used = set(hf_to_open_clip(open_clip_to_hf(ours, keep), keep))
    extra = {k: v for k, v in ours.items() if k not in used and k != "attn_mask"}
    tokenizer = open_clip_tokenizer()
    tokenizer.model_max_length = cond.max_length
    return text.eval(), tokenizer, extra


def open_clip_tokenizer():
    """A ``CLIPTokenizer`` with open_clip's BPE vocabulary (shipped with open_clip, no download);
    like open_clip it pads with token 0 (``!``)."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = open_clip.tokenizer.SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token="!",
                             model_max_length=77)


# ---------------------------------------------------------------------------------------------- scheduler
def scheduler_for(model):
    """``DDIMScheduler`` with the model's exact betas and parameterisation (deterministic DDIM, SD's
    ``steps_offset=1`` / ``set_alpha_to_one=False``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.double().tolist(),
                         prediction_type=PREDICTION_TYPES[model.parameterization], clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


# ---------------------------------------------------------------------------------------------- pipeline
def to_diffusers(model) -> dict[str, Any]:
    """The diffusers / transformers components of a Stable-Diffusion-shaped LatentDiffusion."""
    _require_diffusers()
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.models.sd2 import LatentUpscaleDiffusion

    if model.conditioning_key not in ("crossattn", "hybrid", "hybrid-adm"):
        raise ConversionError(f"StableDiffusionPipeline needs a text-conditioned model (conditioning_key "
                              f"crossattn), got {model.conditioning_key!r}")
    if not isinstance(model.first_stage_model, AutoencoderKL):
        raise ConversionError("StableDiffusionPipeline needs a KL autoencoder first stage")
    text, tokenizer, extra = text_to_diffusers(model.cond_stage_model)
    parts = {"unet": unet_to_diffusers(model.model.diffusion_model),
             "vae": vae_to_diffusers(model.first_stage_model, float(model.scale_factor)),
             "text_encoder": text, "tokenizer": tokenizer, "scheduler": scheduler_for(model),
             "open_clip_extra": extra}
    if isinstance(model, LatentUpscaleDiffusion):
        from diffusers import DDPMScheduler

        low = model.low_scale_model
        parts["low_res_scheduler"] = DDPMScheduler(num_train_timesteps=low.schedule.num_timesteps,
                                                   trained_betas=low.schedule.betas.tolist())
        parts["max_noise_level"] = low.max_noise_level
    return parts


def pipeline_from(parts: dict):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, StableDiffusionUpscalePipeline

    common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                  unet=parts["unet"], scheduler=parts["scheduler"])
    if "low_res_scheduler" in parts:  # the x4 upscaler
        return StableDiffusionUpscalePipeline(**common, low_res_scheduler=parts["low_res_scheduler"],
                                              max_noise_level=parts["max_noise_level"])
    cls = StableDiffusionInpaintPipeline if parts["unet"].config.in_channels == 9 else StableDiffusionPipeline
    return cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_diffusers(model, out: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    parts = to_diffusers(model)
    out = Path(out)
    pipeline_from(parts).save_pretrained(str(out), safe_serialization=True)
    if parts["open_clip_extra"]:
        save_file({k: v.contiguous().clone() for k, v in parts["open_clip_extra"].items()},
                  str(out / "text_encoder" / OPEN_CLIP_EXTRA))
    return out


def export_diffusers(config, ckpt, out, *, ema: bool = False, trust_checkpoint: bool = False) -> Path:
    """``convert to-diffusers``: build the model from ``config``, load ``ckpt`` safely, write ``out``."""
    from ldm.model_loading import load_trained_model

    model = load_trained_model(ckpt, [config], trust_checkpoint=trust_checkpoint).model
    if ema:
        if not model.use_ema:
            raise ValueError("--ema: the config's model has no EMA (use_ema: false)")
        model.model_ema.copy_to(model.model)
    return save_diffusers(model, out)


# ---------------------------------------------------------------------------------------------- reverse
def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return load_file(str(folder / name))
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            from ldm.checkpoint import safe_torch_load

            return dict(safe_torch_load(folder / name))
    raise FileNotFoundError(f"{folder}: no diffusion_pytorch_model.safetensors / model.safetensors")


def diffusers_to_state_dict(model, folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Our model's state dict with the UNet, VAE and text-encoder weights of a diffusers folder;
    everything diffusers does not store (schedule buffers, EMA) comes from ``model``."""
    from ldm.modules.conditioners.clip import FrozenCLIPEmbedder

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers folder (no model_index.json)")
    sd = dict(model.state_dict())
    unet = model.model.diffusion_model
    theirs = _read_weights(folder / "unet")
    _fill(sd, "model.diffusion_model.", unet_key_map(unet), theirs, "unet")
    _fill(sd, "first_stage_model.", vae_key_map(model.first_stage_model), _read_weights(folder / "vae"), "vae")
    text = _read_weights(folder / "text_encoder")
    text = strip_text_model(text)
    cond = model.cond_stage_model
    if isinstance(cond, FrozenCLIPEmbedder):
        prefix = "cond_stage_model.transformer.text_model."
        for key in [k for k in sd if k.startswith(prefix)]:
            name = key[len(prefix):]
            if name not in text:
                raise KeyError(f"text_encoder weights lack {name!r}")
            sd[key] = text[name]
    else:
        total, keep = _open_clip_layers(cond)
        converted = hf_to_open_clip(text, keep)
        extra_file = folder / "text_encoder" / OPEN_CLIP_EXTRA
        if extra_file.is_file():
            from safetensors.torch import load_file

            converted.update(load_file(str(extra_file)))
        else:
            print(f"[convert] {extra_file} not found: the OpenCLIP block(s) and projection diffusers does not "
                  "use keep the config's initial values")
        for name, value in converted.items():
            sd[f"cond_stage_model.model.{name}"] = value
    ema_keys = [k for k in sd if k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")]
    for key in ema_keys:  # the EMA of an imported model starts at its weights
        del sd[key]
    return sd


def _fill(sd: dict, prefix: str, ours_to_theirs: dict, theirs: dict, what: str) -> None:
    missing = [t for t in ours_to_theirs.values() if t not in theirs]
    if missing:
        raise KeyError(f"{what}: the diffusers weights lack {len(missing)} tensor(s) this config needs "
                       f"(e.g. {missing[0]!r}); does the config match the folder?")
    for ours, name in ours_to_theirs.items():
        value = reshape_for(name, theirs[name], to_diffusers=False)
        if tuple(value.shape) != tuple(sd[prefix + ours].shape):
            raise ValueError(f"{what}: {name} has shape {tuple(value.shape)}, the config's model expects "
                             f"{tuple(sd[prefix + ours].shape)} ({prefix + ours})")
        sd[prefix + ours] = value


def import_diffusers(folder, config, out) -> int:
    """``convert from-diffusers``: fill the config's model from a diffusers folder; write ``out``."""
    from omegaconf import OmegaConf

    from ldm.convert.safetensors_io import save_safetensors
    from ldm.model_loading import drop_sub_checkpoints
    from ldm.util import instantiate_from_config

    _require_diffusers()
    cfg = OmegaConf.load(config)
    drop_sub_checkpoints(cfg.model, [])
    model = instantiate_from_config(cfg.model, node="model")
    sd = diffusers_to_state_dict(model, folder)
    model.load_state_dict(sd, strict=True)  # every key fits the config's model
    sd = model.state_dict()
    out = Path(out)
    if out.suffix == ".safetensors":
        save_safetensors(sd, out)
    elif out.suffix in (".ckpt", ".pt", ".pth"):
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": sd}, out)
    else:
        raise ValueError(f"--out must end in .safetensors or .ckpt, got {out}")
    return len(sd)
