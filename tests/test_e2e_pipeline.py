"""The quick start end to end, shrunk with ``--fast``: ``python -m ldm.cli.quickstart --fast --out DIR``.

It must train the autoencoder, find its checkpoint for the two latent diffusion runs, sample, and
write the grids (real PNGs of the expected size) and a report with every key, all numbers finite.
Quality is not asserted at this size (a few training steps); the ranges are.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CLASS_KEYS = {"oracle_accuracy_cfg", "oracle_accuracy_scale1", "oracle_accuracy_ddim_fast_steps_cfg",
              "oracle_accuracy_dpm_solver_fast_steps_cfg", "guidance_scale", "ddim_steps", "fast_steps",
              "train_steps", "train_seconds", "checkpoint", "scale_factor", "unconditional"}
TEXT_KEYS = {"oracle_accuracy_cfg", "oracle_accuracy_scale1", "oracle_accuracy_dpm_solver_fast_steps_cfg",
             "train_steps", "checkpoint", "scale_factor", "captions"}


def _numbers(value, where="report"):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{where}[{index}]")


@pytest.mark.slow
def test_quickstart_fast_runs_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "ldm.cli.quickstart", "--fast", "--out", str(out), "--threads", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"image grid: {out / 'grid.png'}" in proc.stdout
    assert str(out / "report.md") in proc.stdout

    report = json.loads((out / "report.json").read_text())
    assert {"autoencoder", "class_conditional", "text_conditional", "targets", "grid", "grid_text"} <= set(report)
    assert CLASS_KEYS <= set(report["class_conditional"])
    assert TEXT_KEYS <= set(report["text_conditional"])
    assert {"total_variation", "class_histogram", "data_class_histogram", "undecidable_fraction"} \
        <= set(report["class_conditional"]["unconditional"])
    for where, number in _numbers(report):
        assert math.isfinite(number), f"{where} = {number}"

    # the LDM runs used the autoencoder the first stage just wrote
    ae_ckpt = Path(report["autoencoder"]["checkpoint"])
    assert ae_ckpt.is_file() and ae_ckpt.name == "last.ckpt"
    for kind in ("class", "text"):
        part = report[f"{kind}_conditional"]
        assert Path(part["checkpoint"]).is_file() and part["train_steps"] == 3
        config = next(Path(part["run"], "configs").glob("*-project.yaml")).read_text()
        assert str(ae_ckpt) in config
        for key in ("oracle_accuracy_cfg", "oracle_accuracy_scale1"):
            assert 0.0 <= part[key] <= 1.0
    unconditional = report["class_conditional"]["unconditional"]
    assert abs(sum(unconditional["data_class_histogram"]) - 1) < 1e-6
    assert abs(sum(unconditional["class_histogram"]) + unconditional["undecidable_fraction"] - 1) < 1e-6
    assert 0.0 <= unconditional["total_variation"] <= 1.0
    assert report["autoencoder"]["psnr_db"] > 0
    assert set(report["targets"]) >= {"autoencoder_psnr_db", "class_oracle_accuracy_cfg", "text_oracle_accuracy_cfg"}

    # grids: 12 classes × 1 sample (--fast) of 32×32 images, 1-pixel padding
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (1 * 33 + 1, 12 * 33 + 1)
    with Image.open(out / "grid_text.png") as grid:
        assert grid.size[1] == 33 + 1
    markdown = (out / "report.md").read_text()
    assert "Autoencoder PSNR" in markdown and "DPM-Solver++" in markdown and "TV distance" in markdown

    # the benchmark's table reads the same report
    from benchmarks.bench_quality import format_table

    table = format_table(report)
    assert "autoencoder PSNR" in table and f"{report['autoencoder']['psnr_db']:.2f}" in table


def test_report_helpers_closed_form():
    from ldm.cli.quickstart_eval import sample_histogram, total_variation
    from ldm.cli.quickstart_machine import pick_threads
    from ldm.cli.quickstart_training import max_time

    # TV(p, q) = 1/2 sum |p - q|: disjoint supports -> 1, identical -> 0, undecidable mass counts fully
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == 1.0
    assert total_variation([0.25] * 4, [0.25] * 4) == 0.0
    assert total_variation([0.5, 0.0], [0.5, 0.5], p_extra=0.5) == 0.5
    histogram, undecidable = sample_histogram([0, 0, 11, -1])
    assert histogram[0] == 0.5 and histogram[11] == 0.25 and sum(histogram) == 0.75 and undecidable == 0.25
    assert max_time(3.5) == "00:00:03:30" and max_time(90) == "00:01:30:00"
    assert pick_threads(3) == 3 and 1 <= pick_threads(0) <= (os.cpu_count() or 1)
    cores = os.cpu_count() or 1
    assert pick_threads(0, busy=0.3) == cores and pick_threads(0, busy=cores + 2.0) == 1
    assert pick_threads(0, busy=1.0) == max(1, cores - 1)


def test_busy_cores_sees_a_process_spinning_now():
    from ldm.cli.quickstart import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(window=1.0) >= 0.7  # one core kept busy, whatever else the machine does
    finally:
        spinner.kill()
        spinner.wait()
