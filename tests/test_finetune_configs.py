"""configs/finetune/ run through main.py, shrunk: the SD v1 config fully fine-tuned, and the SD 2 config
with the LoRA overlay, each from a base checkpoint, on a folder of image-caption pairs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from cli_fixtures import REPO_ROOT, subprocess_env
from ldm.lora import read_lora_file
from ldm.util import instantiate_from_config
from sd2_fixtures import TINY_TEXT, tiny_clip_text_dir

FINETUNE = REPO_ROOT / "configs" / "finetune"


def _pairs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, caption in enumerate(["a red square", "a blue circle", "a green cross", "a white dot"]):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


def _shrink(tmp: Path, data: Path, text: dict, heads: dict) -> Path:
    overlay = {
        "model": {"params": {
            "image_size": 8, "use_ema": True, "ema_decay": 0.9,
            "unet_config": {"params": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "attention_resolutions": [1, 2], "context_dim": 32, "use_checkpoint": False,
                                       **heads}},
            "first_stage_config": {"params": {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "resolution": 16}}},
            "cond_stage_config": {"params": text},
        }},
        "data": {"params": {"batch_size": 2, "num_workers": 0, "train": {"params": {"root": str(data), "size": 16}}}},
        "lightning": {"trainer": {"accelerator": "cpu", "max_steps": 3, "precision": "32-true",
                                  "enable_progress_bar": False, "log_every_n_steps": 1},
                      "callbacks": {"image_logger": {"params": {"batch_frequency": 1000000, "disabled": True}}}},
    }
    path = tmp / "tiny.yaml"
    OmegaConf.save(overlay, path)
    return path


def _base_checkpoint(configs, path: Path) -> dict:
    cfg = OmegaConf.merge(*[OmegaConf.load(c) for c in configs])
    cfg.model.params.ckpt_path = None
    cfg.model.params.pop("lora", None)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd


def _train(configs, logs: Path, ckpt: Path) -> Path:
    cmd = [sys.executable, "main.py", "-t", "--no-test", "-l", str(logs), "-n", "ft", "-b", *map(str, configs),
           f"model.params.ckpt_path={ckpt}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    runs = sorted(logs.glob("*_ft"))
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_full_finetune_sd_v1(tmp_path):
    data = _pairs(tmp_path / "pairs")
    clip = tiny_clip_text_dir(tmp_path / "clip")
    tiny = _shrink(tmp_path, data, {"version": clip}, {"num_heads": 2})
    configs = [FINETUNE / "sd_v1.yaml", tiny]
    base = _base_checkpoint(configs, tmp_path / "base.safetensors")
    run = _train(configs, tmp_path / "logs", tmp_path / "base.safetensors")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 3
    sd = state["state_dict"]
    unet = [k for k in base if k.startswith("model.diffusion_model.")]
    assert any(not torch.equal(sd[k], base[k]) for k in unet)  # the UNet trained
    frozen = [k for k in base if k.startswith(("first_stage_model.", "cond_stage_model."))]
    assert all(torch.equal(sd[k], base[k]) for k in frozen)


@pytest.mark.slow
def test_lora_finetune_sd_v2(tmp_path):
    data = _pairs(tmp_path / "pairs")
    tiny = _shrink(tmp_path, data, {"model_config": TINY_TEXT}, {"num_head_channels": 16})
    configs = [FINETUNE / "sd_v2_768_v.yaml", FINETUNE / "lora.yaml", tiny]
    base = _base_checkpoint(configs, tmp_path / "base.safetensors")
    run = _train(configs, tmp_path / "logs", tmp_path / "base.safetensors")
    sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    adapters = [k for k in sd if "lora_" in k and k.startswith("model.")]
    assert adapters
    for key, value in base.items():  # every base weight is untouched (peft's base_layer)
        name = key
        if key not in sd:
            module, _, leaf = key.rpartition(".")
            name = f"{module}.base_layer.{leaf}"
        if not key.startswith("model_ema."):
            assert torch.equal(sd[name], value), key
    tensors, settings = read_lora_file(run / "checkpoints" / "lora.safetensors")
    assert settings.rank == 16 and len(tensors) == len(adapters)
