"""The quick start's child processes: single-threaded environments, side-by-side runs that fail loudly,
and finding the run directory a child created."""
from __future__ import annotations

import sys
import time

import pytest

from ldm.cli.quickstart_processes import (
    THREAD_VARIABLES,
    StageFailed,
    child_environment,
    new_run_directory,
    run_side_by_side,
)


def test_child_environment_fixes_the_thread_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    env = child_environment(1)
    assert all(env[name] == "1" for name in THREAD_VARIABLES)
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYTHONPATH"]


def test_children_see_one_torch_thread(tmp_path):
    out = tmp_path / "threads.txt"
    code = f"import torch; open({str(out)!r}, 'w').write(str(torch.get_num_threads()))"
    run_side_by_side({"probe": [sys.executable, "-c", code]}, threads=1)
    assert out.read_text() == "1"


def test_a_failing_stage_stops_the_others_and_names_itself(tmp_path):
    marker = tmp_path / "finished"
    slow = [sys.executable, "-c", f"import time; time.sleep(20); open({str(marker)!r}, 'w').write('x')"]
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    start = time.monotonic()
    with pytest.raises(StageFailed, match=r"text LDM stage failed \(exit code 3\)"):
        run_side_by_side({"class LDM": slow, "text LDM": failing})
    assert time.monotonic() - start < 15 and not marker.exists()  # the slow one was stopped, not awaited


def test_new_run_directory_finds_the_one_the_child_wrote(tmp_path):
    old = tmp_path / "2026-01-01T00-00-00_quickstart_autoencoder"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.ckpt").write_bytes(b"x")
    before = set(tmp_path.glob("*_quickstart_autoencoder*"))
    new = tmp_path / "2026-01-01T00-00-00_quickstart_autoencoder_1"
    (new / "checkpoints").mkdir(parents=True)
    with pytest.raises(StageFailed, match="found none"):  # no checkpoint yet: training did not finish
        new_run_directory(tmp_path, "quickstart_autoencoder", before)
    (new / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert new_run_directory(tmp_path, "quickstart_autoencoder", before) == new


def test_the_stage_child_gets_the_drivers_budget_and_the_cache(tmp_path):
    from omegaconf import OmegaConf

    from ldm.cli.quickstart import budget_from_args, build_parser
    from ldm.cli.quickstart_stage import read_budget, write_budget
    from ldm.cli.quickstart_training import ldm_config_for

    budget = budget_from_args(build_parser().parse_args(["--class-steps", "123", "--set", "a.b=1"]))
    assert read_budget(write_budget(budget, tmp_path / "budget.json")) == budget
    config = OmegaConf.load(ldm_config_for("text", tmp_path, cache=tmp_path / "cache"))
    assert config.data.params.train.target == "ldm.data.latent_cache.LatentCacheDataset"
    assert config.data.params.train.params.path == str((tmp_path / "cache").resolve())
    assert config.model.params.conditioning_key == "crossattn" and "quickstart" not in config


def test_a_missing_or_broken_progress_summary_is_an_error_not_zero_steps(tmp_path):
    from ldm.cli.quickstart_training import read_progress

    with pytest.raises(RuntimeError, match="without its progress summary"):
        read_progress(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="is not JSON"):
        read_progress(tmp_path / "broken.json")
    (tmp_path / "partial.json").write_text('{"steps": 3}')
    with pytest.raises(RuntimeError, match="lacks"):
        read_progress(tmp_path / "partial.json")
    (tmp_path / "good.json").write_text('{"steps": 3, "seconds": 1.5, "steps_per_second": 2.0}')
    assert read_progress(tmp_path / "good.json")["steps"] == 3


def test_the_latent_models_anneal_their_learning_rate_over_the_end_of_the_budget(tmp_path):
    from omegaconf import OmegaConf

    from ldm.cli.quickstart_training import ldm_config_for
    from ldm.util import instantiate_from_config

    config = OmegaConf.load(ldm_config_for("class", tmp_path, steps=1000))
    schedule = instantiate_from_config(config.model.params.scheduler_config)
    # warm-up over 100 steps from 1%, constant 1 until step 700, then linear to 0.1 at step 1000
    assert schedule.schedule(0) == pytest.approx(0.01)
    assert schedule.schedule(50) == pytest.approx(0.01 + 0.99 * 50 / 100)
    assert schedule.schedule(400) == pytest.approx(1.0) and schedule.schedule(700) == pytest.approx(1.0)
    assert schedule.schedule(850) == pytest.approx(1.0 - 0.9 * 150 / 300)
    assert schedule.schedule(1000) == pytest.approx(0.1) and schedule.schedule(5000) == pytest.approx(0.1)
    # the text model anneals the same way; without a budget (steps=None) the config keeps its plain
    # warm-up-then-constant schedule; --fast (3 steps) keeps the warm-up only
    text = OmegaConf.load(ldm_config_for("text", tmp_path, steps=1000)).model.params.scheduler_config.params
    assert list(text.cycle_lengths) == [700, 300] and list(text.f_min) == [1.0, 0.1]
    plain = OmegaConf.load(ldm_config_for("class", tmp_path)).model.params.scheduler_config.params
    assert list(plain.cycle_lengths) == [10000000000000]
    fast_config = OmegaConf.load(ldm_config_for("class", tmp_path, steps=3))
    fast = instantiate_from_config(fast_config.model.params.scheduler_config)
    assert fast.schedule(2) == pytest.approx(0.01 + 0.99 * 2 / 100)
