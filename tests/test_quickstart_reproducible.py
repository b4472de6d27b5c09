"""The quick start is step-budgeted and seeded: the same command gives the same numbers.

Two ``--fast`` runs with the same seed must report identical step counts, PSNR, accuracies, histogram
and TV (``ldm.cli.quickstart_report.reproducible_numbers``); the report must state the seed, the steps
of each stage, the wall time, the threads and the CPU. Plus the pieces: the step-budget flags, the
progress line, the learning-rate anneal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fast_runs(outs: list[Path], seed: int) -> list[dict]:
    """``--fast --seed seed`` into each of ``outs``, as separate processes running side by side."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([sys.executable, "-m", "ldm.cli.quickstart", "--fast", "--seed", str(seed), "--out",
                               str(out), "--threads", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for out in outs]
    reports = []
    for proc, out in zip(procs, outs):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
        assert "steps/s" in stdout and "[quickstart] text LDM: step 3/3 (100%)" in stdout
        reports.append(json.loads((out / "report.json").read_text()))
    return reports


@pytest.mark.slow
def test_two_fast_runs_with_the_same_seed_report_identical_numbers(tmp_path):
    from ldm.cli.quickstart_report import reproducible_numbers

    first, second = _fast_runs([tmp_path / "a", tmp_path / "b"], seed=7)
    numbers = reproducible_numbers(first)
    assert numbers == reproducible_numbers(second)
    assert numbers["autoencoder.steps"] == numbers["class_conditional.train_steps"] \
        == numbers["text_conditional.train_steps"] == 3
    assert len(numbers) > 20 and numbers["autoencoder.psnr_db"] > 0

    # what the report states about the run and the machine
    assert first["seed"] == 7 and first["threads"] == 1 and first["seconds_total"] > 0
    assert first["autoencoder"]["steps_budget"] == 3 and first["text_conditional"]["steps_budget"] == 3
    assert first["machine"]["torch_threads"] == 1 and first["machine"]["cpu_model"]
    assert isinstance(first["machine"]["native_cpu_bf16"], bool)
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "Seed 7" in markdown and first["machine"]["cpu_model"] in markdown and "1 thread(s)" in markdown
    assert "text LDM 3 steps" in markdown


def test_step_budget_flags(capsys):
    from ldm.cli.quickstart import budget_from_args, build_parser

    def budget(*argv):
        return budget_from_args(build_parser().parse_args(list(argv)))

    default = budget()
    assert (default.ae_steps, default.class_steps, default.text_steps) == (2400, 6000, 3000)
    assert default.ae_minutes is None and default.ldm_minutes is None  # no time box unless asked for
    both = budget("--ldm-steps", "50", "--text-steps", "40", "--ae-minutes", "2.5")
    assert (both.class_steps, both.text_steps, both.ae_minutes) == (50, 40, 2.5)
    assert budget("--fast").steps("text") == 3
    with pytest.raises(SystemExit) as exit_info:
        budget("--ae-steps", "0")
    assert exit_info.value.code == 2 and "error: --ae-steps must be positive" in capsys.readouterr().err


def test_precision_flag_reaches_every_stage(monkeypatch, tmp_path):
    """``--precision`` is handed to the training CLI of each stage; without it the configs decide
    (the latent models say 32, the autoencoder auto)."""
    from omegaconf import OmegaConf

    import ldm.cli.quickstart as quickstart
    import ldm.cli.quickstart_training as training
    import ldm.cli.train as train

    seen = []

    def fake_train(argv):
        seen.append(list(argv))
        raise RuntimeError("stop here")

    monkeypatch.setattr(train, "main", fake_train)
    for precision in ("bf16-mixed", None):
        budget = quickstart.budget_from_args(quickstart.build_parser().parse_args(
            [] if precision is None else ["--precision", precision]))
        assert budget.precision == precision
        with pytest.raises(RuntimeError, match="stop here"):
            training.train_in_process(training.LDM_CONFIG, tmp_path, "x", steps=1, minutes=None, batch_size=2, seed=0,
                              label="x", precision=budget.precision)
    with_flag, without = seen
    assert with_flag[with_flag.index("--precision") + 1] == "bf16-mixed" and "--precision" not in without
    assert OmegaConf.load(training.LDM_CONFIG).lightning.trainer.precision == 32
    assert OmegaConf.load(training.AUTOENCODER_CONFIG).lightning.trainer.precision == "auto"


def test_progress_line_and_eta():
    from ldm.cli.quickstart_progress import StepProgress, format_eta

    assert format_eta(75) == "1:15" and format_eta(3725) == "1:02:05" and format_eta(-3) == "0:00"
    progress = StepProgress(label="text LDM")
    line = progress.line(step=1000, budget=3000, elapsed=100.0)  # 10 steps/s, 2000 steps left
    assert line == "[quickstart] text LDM: step 1000/3000 (33%), 10.0 steps/s, ETA 3:20"
    assert "ETA" not in progress.line(step=3000, budget=3000, elapsed=300.0)


def test_linear_lr_decay_factor():
    from ldm.cli.quickstart_progress import LinearLRDecay

    decay = LinearLRDecay(decay_fraction=0.3, final_factor=0.1)
    assert decay.factor(0, 1000) == 1.0 and decay.factor(700, 1000) == 1.0
    assert decay.factor(850, 1000) == pytest.approx(0.55) and decay.factor(1000, 1000) == pytest.approx(0.1)
    assert decay.factor(5000, 1000) == pytest.approx(0.1) and decay.factor(10, 0) == 1.0
    with pytest.raises(ValueError, match="decay_fraction"):
        LinearLRDecay(decay_fraction=0.0)
