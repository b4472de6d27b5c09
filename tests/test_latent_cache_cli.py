"""``python -m ldm.cli.cache_latents``: writes a cache from a tiny LDM config and checkpoint."""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ldm.cli.cache_latents import main
from ldm.data.latent_cache import (
    LatentCacheDataset,
    LatentCacheMismatchError,
    file_sha256,
    read_manifest,
    state_dict_sha256,
)
from ldm.data.shapes import ShapesDataset
from ldm.models.autoencoder import AutoencoderKL

SIZE = 16
DDCONFIG = dict(double_z=True, z_channels=2, resolution=SIZE, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)


def ldm_config(length: int = 24) -> dict:
    """A LatentDiffusion config: only first_stage_config, first_stage_key and data are read by the command."""
    return {
        "model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion",  # an original target string
                  "params": {"first_stage_key": "image", "scale_factor": 0.5,
                             "cond_stage_config": "__is_unconditional__",
                             "unet_config": {"target": "ldm.modules.unet.UNetModel", "params": {}},
                             "first_stage_config": {
                                 "target": "ldm.models.autoencoder.AutoencoderKL",
                                 "params": {"embed_dim": 2, "ddconfig": DDCONFIG,
                                            "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                                                           "params": {"disc_start": 1}}}}}},
        "data": {"target": "main.DataModuleFromConfig",
                 "params": {"batch_size": 4,
                            "train": {"target": "ldm.data.shapes.ShapesTrain",
                                      "params": {"size": SIZE, "length": length, "seed": 2}}}},
    }


@pytest.fixture()
def setup(tmp_path):
    torch.manual_seed(7)
    model = AutoencoderKL(ddconfig=DDCONFIG, lossconfig=None, embed_dim=2).eval()
    ckpt = tmp_path / "ldm.safetensors"  # a full LDM checkpoint: first-stage weights under first_stage_model.
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
              | {"model.diffusion_model.dummy": torch.zeros(1)}, str(ckpt))
    config = tmp_path / "ldm.yaml"
    config.write_text(yaml.safe_dump(ldm_config()))
    return model, ckpt, config, tmp_path


def test_cli_writes_a_cache_matching_the_checkpointed_first_stage(setup, capsys):
    model, ckpt, config, tmp = setup
    out = tmp / "cache"
    rc = main(["--config", str(config), "--ckpt", str(ckpt), "--split", "train", "--out", str(out),
               "--batch-size", "8", "--shard-size", "10", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["num_samples"] == 24 and manifest["num_entries"] == 24 and manifest["flip"] == "off"
    assert manifest["first_stage"]["state_dict_sha256"] == state_dict_sha256(model)
    assert manifest["first_stage"]["checkpoint"]["sha256"] == file_sha256(ckpt)
    assert manifest["first_stage"]["config"]["params"]["ddconfig"] == DDCONFIG
    assert manifest["source"]["dataset"] == {"target": "ldm.data.shapes.ShapesTrain",
                                             "params": {"size": SIZE, "length": 24, "seed": 2}}
    assert manifest["source"]["split"] == "train" and manifest["scale_factor"] == 0.5
    assert len(manifest["shards"]) == 3

    cache = LatentCacheDataset(out, expected_first_stage_hash=state_dict_sha256(model))
    source = ShapesDataset(size=SIZE, length=24, seed=2, split="train")
    for i in (0, 13, 23):
        item = cache[i]
        with torch.no_grad():
            mean, std = model.latent_moments(source[i]["image"][None])
        torch.testing.assert_close(item["latent_mean"], mean[0])
        torch.testing.assert_close(item["latent_std"], std[0])
        assert item["class_label"] == source[i]["class_label"] and item["caption"] == source[i]["caption"]


def test_cli_flip_both_and_refusals(setup, capsys):
    model, ckpt, config, tmp = setup
    out = tmp / "cache"
    args = ["--config", str(config), "--ckpt", str(ckpt), "--out", str(out), "--limit", "6", "--flip", "both"]
    assert main(args) == 0
    assert read_manifest(out)["num_entries"] == 12
    capsys.readouterr()
    assert main(args) == 2  # an existing cache is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--split", "validation"]) == 2
    assert "validation" in capsys.readouterr().err
    other = tmp / "other.safetensors"
    torch.manual_seed(8)
    save_file(AutoencoderKL(ddconfig=DDCONFIG, lossconfig=None, embed_dim=2).state_dict(), str(other))
    assert main(["--config", str(config), "--ckpt", str(other), "--out", str(tmp / "c2"), "--limit", "2"]) == 0
    with pytest.raises(LatentCacheMismatchError, match="different first stage"):
        LatentCacheDataset(tmp / "c2", expected_first_stage_hash=state_dict_sha256(model))
