"""The README's "Training your own models" chain, run end to end on shrunk copies of its configs:
stage 1 (VQ-f4 autoencoder) -> stage 2 (celebahq-f4, first stage = the stage-1 run directory) -> sample.

The commands are read from the README and run in-process. Changes, for a CPU test: the two configs
are copied with tiny sizes (16² images from a generated folder, narrow networks, 16 codes) into a
temporary ``configs/``, ``--gpus 0,1`` is dropped, training stops after 2 steps, sampling draws
2 images with 2 steps.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import REPO_ROOT
from doc_commands import (
    code_block,
    commands,
    replace_value,
    run_commands,
    write_class_folders,
)

STAGE1, STAGE2 = "configs/autoencoder/autoencoder_vq_f4.yaml", "configs/ldm/celebahq-f4.yaml"
TINY_DDCONFIG = {"resolution": 16, "ch": 16, "num_res_blocks": 1, "num_groups": 8}
TINY_DATA = {"batch_size": 4, "num_workers": 0, "wrap": False}
TINY_LIGHTNING = {"trainer": {"benchmark": False},
                  "callbacks": {"image_logger": {"params": {"batch_frequency": 100000}}}}


def shrunk_copies(tmp_path: Path, images: Path) -> None:
    folder = {"target": "ldm.data.folder.ImageFolderDataset", "params": {"root": str(images), "size": 16}}
    ae = OmegaConf.merge(OmegaConf.load(REPO_ROOT / STAGE1), {
        "model": {"params": {"n_embed": 16, "ddconfig": TINY_DDCONFIG,
                             "lossconfig": {"params": {"disc_num_layers": 1, "disc_ndf": 8, "perceptual_weight": 0.0,
                                                       "perceptual_backbone": "random"}}}},
        "data": {"params": TINY_DATA}, "lightning": TINY_LIGHTNING})
    ldm = OmegaConf.merge(OmegaConf.load(REPO_ROOT / STAGE2), {
        "model": {"params": {"image_size": 4,
                             "first_stage_config": {"params": {"n_embed": 16, "ddconfig": TINY_DDCONFIG}},
                             "unet_config": {"params": {"image_size": 4, "model_channels": 32, "channel_mult": [1, 2],
                                                        "attention_resolutions": [2], "num_res_blocks": 1}}}},
        "data": {"params": TINY_DATA}, "lightning": TINY_LIGHTNING})
    for config, path in ((ae, STAGE1), (ldm, STAGE2)):
        for split in ("train", "validation"):
            config.data.params[split] = folder  # replace, not merge: another dataset class
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, tmp_path / path)


def shrink(tool: str, argv: list[str]) -> list[str]:
    if tool == "main.py":
        index = argv.index("--gpus")
        argv = argv[:index] + argv[index + 2:]
        return argv + ["--max_steps", "2", "--enable_progress_bar", "false", "--enable_model_summary", "false",
                       "lightning.trainer.limit_val_batches=1"]
    return replace_value(argv, "--n_samples", "2") + ["--steps", "2", "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_readme_two_stage_chain(tmp_path, monkeypatch):
    readme = (REPO_ROOT / "README.md").read_text()
    lines = commands(code_block(readme, "## Training your own models"))
    python = [line for line in lines if line.startswith("python")]
    assert [line.split(" ")[:4] for line in python] == [
        ["python", "main.py", "--base", STAGE1], ["python", "main.py", "--base", STAGE2],
        ["python", "-m", "ldm.cli.sample", "uncond"]]
    assert "model.params.first_stage_config.params.ckpt_path=logs/<timestamp>_vq-f4" in python[1]
    monkeypatch.chdir(tmp_path)
    shrunk_copies(tmp_path, write_class_folders(tmp_path / "images", classes=2, per_class=8, size=16))

    run_commands(lines, shrink)

    (ae_run,) = (tmp_path / "logs").glob("*_vq-f4")
    (ldm_run,) = (tmp_path / "logs").glob("*_celebahq-f4")
    assert (ae_run / "checkpoints" / "last.ckpt").is_file() and (ldm_run / "checkpoints" / "last.ckpt").is_file()
    snapshot = OmegaConf.load(max((ldm_run / "configs").glob("*-project.yaml")))
    assert Path(snapshot.model.params.first_stage_config.params.ckpt_path).resolve() == ae_run.resolve()
    samples = sorted((tmp_path / "outputs" / "celebahq" / "samples").glob("*.png"))
    assert len(samples) == 2 and Image.open(samples[0]).size == (16, 16)
