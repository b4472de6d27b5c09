"""Shared helpers for the SD 2.x tests: the original configs, shrunk to tiny sizes, and a tiny
random OpenCLIP text tower (open_clip's BPE vocabulary ships with the package: no download)."""
from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import OmegaConf

SD2_CONFIGS = Path(__file__).parent / "fixtures" / "sd2_configs"
SD2_NAMES = ("v2-inference", "v2-inference-v", "v2-inpainting-inference", "x4-upscaling")

TINY_TEXT = dict(embed_dim=32, vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
#: the text tower of OpenCLIP ViT-H-14 (SD 2's conditioner), built on the meta device only
VIT_H_TEXT = dict(embed_dim=1024, vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24))


def original_model_node(name: str, text_config: dict = VIT_H_TEXT) -> dict:
    """The config's ``model`` node, with the OpenCLIP tower built from ``text_config`` (no download)."""
    node = OmegaConf.to_container(OmegaConf.load(SD2_CONFIGS / f"{name}.yaml").model)
    node["params"]["cond_stage_config"]["params"]["model_config"] = copy.deepcopy(text_config)
    return node


def tiny_model_node(name: str) -> dict:
    """The original config with every width shrunk (same classes, same options, same key layout rules)."""
    node = original_model_node(name, TINY_TEXT)
    p = node["params"]
    unet = p["unet_config"]["params"]
    unet.update(model_channels=32, channel_mult=[1, 2], context_dim=32, use_checkpoint=False, image_size=8)
    if "num_head_channels" in unet:
        unet["num_head_channels"] = 16
    else:
        unet["num_heads"] = 2
    if "disable_self_attentions" in unet:
        unet["disable_self_attentions"] = [True, False]
        unet["attention_resolutions"] = [1, 2]
    else:
        unet["attention_resolutions"] = [1, 2]
    dd = p["first_stage_config"]["params"]["ddconfig"]
    dd.update(ch=32, ch_mult=[1, 2], resolution=16)
    p["image_size"] = 8
    return node


SD1_CONFIG = Path(__file__).parent / "fixtures" / "ldm_configs" / "sd-v1-inference.yaml"


def tiny_clip_text_dir(path: Path, width: int = 32) -> str:
    """A tiny random CLIPTextModel + a CLIPTokenizer built offline from open_clip's BPE vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.convert.diffusers_sd import open_clip_tokenizer

    tokenizer = open_clip_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"  # SD v1's tokenizer pads with the end token
    tokenizer.save_pretrained(path)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77)
    CLIPTextModel(config).save_pretrained(path)
    return str(path)


def tiny_sd1_node(clip_dir: str) -> dict:
    """SD v1's config, shrunk: 3 levels (no attention at the first), 1 residual block, 4 heads of 8."""
    node = OmegaConf.to_container(OmegaConf.load(SD1_CONFIG).model)
    p = node["params"]
    p["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                                      attention_resolutions=[2, 4], num_heads=4, context_dim=32,
                                      use_checkpoint=False, image_size=8)
    p["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2], resolution=16)
    p["cond_stage_config"]["params"] = {"version": clip_dir}
    p["image_size"] = 8
    return node
