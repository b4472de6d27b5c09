"""docs/custom-data.md followed exactly: its command block runs on a generated class-folder dataset.

The commands are read from the doc (so the doc and this test cannot drift apart) and run in-process
with only these changes, for speed: 2 training steps per stage, batch 4, no loader workers, 2 samples
per class with 2 sampler steps, a random CNN instead of Inception for FID (no weights offline).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
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

DOC = REPO_ROOT / "docs" / "custom-data.md"
FAST_TRAINING = ["--max_steps", "2", "--enable_progress_bar", "false", "--enable_model_summary", "false",
                 "data.params.batch_size=4", "data.params.num_workers=0", "lightning.trainer.limit_val_batches=1"]


def shrink(tool: str, argv: list[str]) -> list[str]:
    if tool == "main.py":
        return argv + FAST_TRAINING
    if tool == "ldm.cli.sample":
        return replace_value(argv, "--n_samples", "2") + ["--steps", "2", "--device", "cpu", "--no-progress"]
    if "--feature-extractor" in argv:
        argv = replace_value(argv, "--feature-extractor", "random-cnn")
    return argv + ["--num-samples", "12", "--device", "cpu", "--num-workers", "0"]


@pytest.mark.slow
def test_doc_chain_on_generated_class_folders(tmp_path, monkeypatch):
    lines = commands(code_block(DOC.read_text(), "## The whole chain"))
    assert [line.split(" ")[:3] for line in lines if line.startswith("python")] == [
        ["python", "main.py", "-b"], ["python", "-m", "ldm.cli.evaluate"], ["python", "main.py", "-b"],
        ["python", "-m", "ldm.cli.sample"], ["python", "-m", "ldm.cli.evaluate"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    write_class_folders(tmp_path / "data" / "my_classes", classes=3, per_class=12)

    variables = run_commands(lines, shrink)

    ae, ldm_run = Path(variables["AE"]), Path(variables["LDM"])
    assert ae.name.endswith("_my-ae") and (ae / "checkpoints" / "last.ckpt").is_file()
    assert ldm_run.name.endswith("_my-ldm") and (ldm_run / "checkpoints" / "last.ckpt").is_file()
    reconstruction = json.loads((ae / "reconstruction.json").read_text())
    assert reconstruction["mode"] == "autoencoder" and math.isfinite(reconstruction["metrics"]["psnr"])
    samples = sorted((tmp_path / "outputs" / "my-samples" / "samples").glob("*.png"))
    assert len(samples) >= 6  # 2 per class, classes 0, 1, 2
    assert Image.open(samples[0]).size == (32, 32)
    metrics = json.loads((tmp_path / "outputs" / "my-samples" / "metrics.json").read_text())["metrics"]
    assert {"fid", "kid_mean", "precision", "recall"} <= set(metrics)
    # the class count came from the folder (3 classes + the null class of guidance)
    from omegaconf import OmegaConf

    import ldm.util  # noqa: F401  (registers the num_class_folders resolver)

    snapshot = OmegaConf.load(max((ldm_run / "configs").glob("*-project.yaml")))
    assert snapshot.model.params.cond_stage_config.params.n_classes == 3
    assert snapshot.model.params.first_stage_config.params.ckpt_path == str(ae)
