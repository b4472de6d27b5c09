"""Stage 1 <-> stage 2 configs fit together, and every configs/custom/ template trains on its data layout."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ldm.util  # noqa: F401  (registers the num_class_folders resolver)
from cli_fixtures import REPO_ROOT
from doc_commands import write_class_folders

LDM_CONFIGS = sorted((REPO_ROOT / "configs" / "ldm").glob("*.yaml"))
CUSTOM = REPO_ROOT / "configs" / "custom"
ARCHITECTURE_KEYS = ("embed_dim", "n_embed", "ddconfig")
AUTOENCODER_FAMILY = {"ldm.models.autoencoder.VQModel": "vq", "ldm.models.autoencoder.VQModelInterface": "vq",
                      "ldm.models.autoencoder.AutoencoderKL": "kl"}


def architecture(params) -> dict:
    return {key: OmegaConf.to_container(params)[key] for key in ARCHITECTURE_KEYS if key in params}


def stage1_of(path: Path) -> Path:
    match = re.search(r"^# Stage 1: (configs/autoencoder/\S+\.yaml)", path.read_text(), re.MULTILINE)
    assert match, f"{path.name}: no '# Stage 1: configs/autoencoder/...' header"
    return REPO_ROOT / match.group(1)


@pytest.mark.parametrize("path", [p for p in LDM_CONFIGS if "first_stage_config" in p.read_text()],
                         ids=lambda p: p.name)
def test_every_ldm_config_names_an_autoencoder_config_with_its_first_stage(path):
    first_stage = OmegaConf.load(path).model.params.first_stage_config
    autoencoder_path = stage1_of(path)
    autoencoder = OmegaConf.load(autoencoder_path).model
    assert AUTOENCODER_FAMILY[first_stage.target] == AUTOENCODER_FAMILY[autoencoder.target]
    assert architecture(first_stage.params) == architecture(autoencoder.params)
    # the family and factor are in the file name: autoencoder_vq_f4 <-> ...-f4 with a VQ first stage
    factor = 2 ** (len(autoencoder.params.ddconfig.ch_mult) - 1)
    assert autoencoder_path.stem == f"autoencoder_{AUTOENCODER_FAMILY[autoencoder.target]}_f{factor}"
    assert path.stem.endswith(f"-f{factor}")
    assert path.stem in autoencoder_path.read_text().split("model:")[0], "the autoencoder header names its partner"


STAGE2_TEMPLATES = {"ldm_uncond.yaml": "autoencoder.yaml", "ldm_class.yaml": "autoencoder.yaml",
                    "ldm_caption.yaml": "autoencoder.yaml", "ldm_webdataset.yaml": "autoencoder_webdataset.yaml"}


@pytest.mark.parametrize("stage2, stage1", STAGE2_TEMPLATES.items())
def test_custom_templates_pair_and_carry_the_recipe(stage2, stage1):
    ldm_config, ae_config = OmegaConf.load(CUSTOM / stage2), OmegaConf.load(CUSTOM / stage1)
    assert architecture(ldm_config.model.params.first_stage_config.params) == architecture(ae_config.model.params)
    params = ldm_config.model.params
    assert params.parameterization == "v" and params.min_snr_gamma == 5.0
    if "class" in stage2:
        assert params.conditioning_key == "adm"
    image_size = ae_config.data.params.train.params.size
    factor = 2 ** (len(ae_config.model.params.ddconfig.ch_mult) - 1)
    assert params.image_size == params.unet_config.params.image_size == image_size // factor
    for config in (ldm_config, ae_config):
        for split in ("train", "validation"):
            dataset = config.data.params[split].params
            assert "flip_p" in dataset, f"{split}: flips must be chosen explicitly"
            assert dataset.size == image_size
        assert OmegaConf.to_container(config.data.params.train.params)["root"] is None   # the one thing to set
        assert OmegaConf.to_container(config.data.params.validation.params)["root"] == \
            "${data.params.train.params.root}"


def _write_pairs(root: Path) -> Path:
    write_class_folders(root, classes=2, per_class=6)
    for image in root.rglob("*.png"):
        image.with_suffix(".txt").write_text(f"a square of {image.parent.name}")
    return root


def _write_shards(root: Path) -> Path:
    import torch

    from ldm.data.webdataset import write_webdataset

    samples = [{"image": torch.rand(3, 32, 32) * 2 - 1, "caption": f"picture {i}"} for i in range(12)]
    write_webdataset(samples, str(root / "shard-%06d.tar"), maxcount=6)
    return root


@pytest.mark.parametrize("template", ["autoencoder.yaml", "autoencoder_webdataset.yaml", "ldm_uncond.yaml",
                                      "ldm_class.yaml", "ldm_caption.yaml", "ldm_webdataset.yaml"])
def test_custom_template_trains_with_only_its_root_set(template, tmp_path):
    from ldm.cli.train import run

    root = _write_shards(tmp_path / "shards") if "webdataset" in template else _write_pairs(tmp_path / "images")
    result = run(["-b", str(CUSTOM / template), "-t", "-l", str(tmp_path / "logs"), "--max_steps", "1",
                  "--enable_progress_bar", "false", "--enable_model_summary", "false",
                  f"data.params.train.params.root={root}", "data.params.batch_size=4", "data.params.num_workers=0",
                  "lightning.trainer.limit_val_batches=1"])
    assert result.trainer.global_step >= 1
    if template == "ldm_class.yaml":
        assert result.model.cond_stage_model.n_classes == 2  # counted from the folder


@pytest.mark.parametrize("template, overlay", [("autoencoder.yaml", "one_gpu_autoencoder.yaml"),
                                               ("autoencoder_webdataset.yaml", "one_gpu_autoencoder.yaml"),
                                               *((name, "one_gpu_ldm.yaml") for name in STAGE2_TEMPLATES)])
def test_one_gpu_overlays_keep_the_architecture(template, overlay):
    from ldm.cli.config import merge_configs

    base = OmegaConf.load(CUSTOM / template)
    merged = merge_configs([str(CUSTOM / template), str(CUSTOM / overlay)], [])
    assert merged.model == base.model  # so stage 1 and stage 2 still fit each other
    assert merged.lightning.trainer.accelerator == "gpu" and merged.lightning.trainer.devices == 1
    assert merged.data.params.batch_size > base.data.params.batch_size
    assert merged.data.params.train == base.data.params.train
