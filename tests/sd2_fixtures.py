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
