"""main.py: flags, config merging, trainer arguments, errors, run layout, resume, --init-from."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import REPO_ROOT, TinyModule, subprocess_env, tiny_config, write_yaml  # noqa: E402
from ldm.cli.args import TRAINER_FLAGS, parse_args, trainer_overrides  # noqa: E402
from ldm.cli.config import CLIError, build_trainer_kwargs, merge_configs, parse_gpus  # noqa: E402
from ldm.cli.logdir import resolve_run_paths  # noqa: E402
from ldm.cli.train import main, run  # noqa: E402
from ldm.util import ConfigError  # noqa: E402


def _main_py(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], capture_output=True, text=True,
                          env=env or subprocess_env(), cwd=cwd or REPO_ROOT, timeout=120)


# -- flags ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_help_lists_every_flag():
    result = _main_py("--help")
    assert result.returncode == 0, result.stderr
    original = ["-b", "--base", "-t", "--train", "--no-test", "-r", "--resume", "-n", "--name", "-f", "--postfix",
                "-l", "--logdir", "-s", "--seed", "-d", "--debug", "-p", "--project", "--scale_lr", "--gpus",
                "--init-from", "--unsafe-load", "--logger"]
    for flag in original + [f"--{name}" for name in TRAINER_FLAGS]:
        assert f"{flag} " in result.stdout or f"{flag}," in result.stdout, flag


@pytest.mark.slow
def test_gpus_without_cuda_devices_is_one_clear_line(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    result = _main_py("-b", str(config), "-t", "--gpus", "0,1", "-l", str(tmp_path / "logs"),
                      env=subprocess_env(CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "--gpus" in lines[0] and "0,1" in lines[0] and "0 CUDA device" in lines[0]
    assert not (tmp_path / "logs").exists()


def test_override_after_base_and_optional_bool_flags():
    opt, dotlist = parse_args(["-b", "a.yaml", "b.yml", "model.params.width=7", "-t", "data.params.batch_size=3"])
    assert opt.base == ["a.yaml", "b.yml"]
    assert dotlist == ["model.params.width=7", "data.params.batch_size=3"]
    assert opt.train is True and opt.scale_lr is False and opt.no_test is False
    opt, _ = parse_args(["-t", "False", "--no-test", "--scale_lr", "true"])
    assert opt.train is False and opt.no_test is True and opt.scale_lr is True


def test_trainer_flags_are_typed_and_unknown_arguments_rejected():
    opt, _ = parse_args(["--max_steps", "9", "--limit_val_batches", "0.5", "--limit_train_batches", "3",
                         "--devices", "0,1", "--precision", "bf16-mixed", "--deterministic", "true"])
    assert trainer_overrides(opt) == {"max_steps": 9, "limit_val_batches": 0.5, "limit_train_batches": 3,
                                      "devices": [0, 1], "precision": "bf16-mixed", "deterministic": True}
    with pytest.raises(SystemExit):
        parse_args(["--max_step", "3"])  # no abbreviations, no silent typos
    with pytest.raises(SystemExit):
        parse_args(["-n", "x", "-r", "logs/run"])
    with pytest.raises(SystemExit):
        parse_args(["--init-from", "a.ckpt", "-r", "logs/run"])


# -- config merging ------------------------------------------------------------------------
def test_configs_merge_left_to_right_then_overrides(tmp_path):
    first = write_yaml(tmp_path / "a.yaml", {"model": {"target": "x.A",
                                                       "params": {"width": 1, "depth": 2, "mult": [1, 2]}},
                                             "lightning": {"trainer": {"max_steps": 5}}})
    second = write_yaml(tmp_path / "b.yaml", {"model": {"params": {"width": 4, "mult": [3]}}})
    merged = merge_configs([first, second], ["model.params.depth=9", "data.params.batch_size=16"])
    assert merged.model.target == "x.A"
    assert merged.model.params.width == 4  # later file wins
    assert list(merged.model.params.mult) == [3]  # lists are replaced, not concatenated
    assert merged.model.params.depth == 9  # dotlist wins over files
    assert merged.data.params.batch_size == 16
    assert merged.lightning.trainer.max_steps == 5
    with pytest.raises(ConfigError, match="missing.yaml"):
        merge_configs([tmp_path / "missing.yaml"])


def test_flag_beats_config_beats_default():
    kwargs, _ = build_trainer_kwargs({"max_steps": 3, "precision": "32-true", "devices": 2}, {"max_steps": 9})
    assert kwargs["max_steps"] == 9 and kwargs["precision"] == "32-true" and kwargs["devices"] == 2
    kwargs, _ = build_trainer_kwargs(None, {})
    assert kwargs == {"accelerator": "auto", "devices": 1}


def test_gpus_and_lightning1_trainer_keys_are_translated():
    kwargs, notes = build_trainer_kwargs({"gpus": "0,", "benchmark": True, "resume_from_checkpoint": "x.ckpt",
                                          "replace_sampler_ddp": False}, {}, cuda_device_count=1)
    assert kwargs == {"accelerator": "gpu", "devices": [0], "benchmark": True, "use_distributed_sampler": False}
    assert any("resume_from_checkpoint" in note for note in notes)
    kwargs, _ = build_trainer_kwargs({"accelerator": "ddp"}, {}, gpus_flag="0,1", cuda_device_count=2)
    assert kwargs["accelerator"] == "gpu" and kwargs["devices"] == [0, 1] and kwargs["strategy"] == "ddp"
    assert parse_gpus("2") == 2 and parse_gpus("0") is None and parse_gpus("1,3") == [1, 3]
    with pytest.raises(CLIError, match="GPU indices 0,1"):
        build_trainer_kwargs({}, {}, gpus_flag="0,1", cuda_device_count=1)
    with pytest.raises(ConfigError, match="max_stepz"):
        build_trainer_kwargs({"max_stepz": 3}, {})
    with pytest.raises(ConfigError, match="lightning.trainer.callbacks"):
        build_trainer_kwargs({"callbacks": []}, {})


# -- errors name what is wrong ---------------------------------------------------------------
def test_bad_target_and_missing_keys_are_named(tmp_path, capsys):
    logs = str(tmp_path / "logs")
    bad_target = tiny_config()
    bad_target["model"]["target"] = "cli_fixtures.NoSuchModel"
    with pytest.raises(ConfigError, match=r"model.*cli_fixtures\.NoSuchModel"):
        run(["-b", str(write_yaml(tmp_path / "bad.yaml", bad_target)), "-l", logs])
    no_target = tiny_config()
    del no_target["data"]["target"]
    with pytest.raises(ConfigError, match=r"data: missing required key 'target'"):
        run(["-b", str(write_yaml(tmp_path / "notarget.yaml", no_target)), "-l", logs])
    no_data = tiny_config()
    del no_data["data"]
    with pytest.raises(ConfigError, match="'data' section"):
        run(["-b", str(write_yaml(tmp_path / "nodata.yaml", no_data)), "-l", logs])
    bad_param = tiny_config(model_params={"no_such_param": 1})
    with pytest.raises(SystemExit) as exit_info:
        main(["-b", str(write_yaml(tmp_path / "badparam.yaml", bad_param)), "-l", logs])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_param" in err and "model" in err and len(err.splitlines()) == 1


def test_resume_argument_resolution(tmp_path):
    run_dir = tmp_path / "logs" / "2024-01-01T00-00-00_tiny"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "configs").mkdir()
    write_yaml(run_dir / "configs" / "2024-01-01T00-00-00-project.yaml", {"a": 1})
    with pytest.raises(CLIError, match="last.ckpt"):
        resolve_run_paths(resume=str(run_dir), name="", postfix="", base=[], logdir_root="logs")
    ckpt = run_dir / "checkpoints" / "epoch=000001.ckpt"
    ckpt.write_bytes(b"")
    paths = resolve_run_paths(resume=str(ckpt), name="", postfix="", base=[], logdir_root="logs")
    assert paths.logdir == run_dir.resolve() and paths.nowname == run_dir.name and paths.resume_ckpt == ckpt
    assert [p.name for p in paths.resumed_configs] == ["2024-01-01T00-00-00-project.yaml"]
    stray = tmp_path / "model.ckpt"
    stray.write_bytes(b"")
    with pytest.raises(CLIError, match="--init-from"):
        resolve_run_paths(resume=str(stray), name="", postfix="", base=[], logdir_root="logs")
    fresh = resolve_run_paths(resume="", name="", postfix="-x", base=["configs/my-model.yaml"],
                              logdir_root="logs", now="NOW")
    assert fresh.logdir == Path("logs/NOW_my-model-x")


# -- end to end ----------------------------------------------------------------------------
def test_train_writes_the_run_layout_then_resume_continues(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=4, callbacks={
        "image_logger": {"target": "main.ImageLogger", "params": {"batch_frequency": 2, "max_images": 2,
                                                                  "increase_log_steps": False}}}))
    logs = tmp_path / "logs"
    main(["-b", str(config), "-t", "-l", str(logs)])
    assert "base_learning_rate=1.00e-02, effective=1.00e-02 (scale_lr off)" in capsys.readouterr().out
    (run_dir,) = list(logs.iterdir())
    assert run_dir.name.endswith("_tiny")
    assert len(list((run_dir / "configs").glob("*-project.yaml"))) == 1
    assert len(list((run_dir / "configs").glob("*-lightning.yaml"))) == 1
    assert sorted(p.name for p in (run_dir / "images" / "train").glob("inputs_*.png")) == [
        "inputs_gs-000002_e-000000_b-000001.png", "inputs_gs-000004_e-000000_b-000003.png"]
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 4 and int(first["state_dict"]["steps_taken"]) == 4

    resumed = main(["-r", str(run_dir), "-t", "--max_steps", "8"])
    assert resumed.logdir == run_dir.resolve()
    assert resumed.trainer.global_step == 8
    assert resumed.model.calls == 4  # continued from step 4, did not start over
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and int(last["state_dict"]["steps_taken"]) == 8
    lightning_snapshots = sorted((run_dir / "configs").glob("*-lightning.yaml"))
    assert len(lightning_snapshots) == 2
    assert "max_steps: 8" in lightning_snapshots[-1].read_text()


def test_scale_lr_is_opt_in_and_reported(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    off = main(["-b", str(config), "-l", str(tmp_path / "a"), "--accumulate_grad_batches", "3"])
    assert off.model.learning_rate == pytest.approx(0.01)
    on = main(["-b", str(config), "-l", str(tmp_path / "b"), "--accumulate_grad_batches", "3", "--scale_lr"])
    assert on.model.learning_rate == pytest.approx(3 * 1 * 2 * 0.01)  # accumulate x devices x batch x base
    out = capsys.readouterr().out
    assert "effective=1.00e-02 (scale_lr off)" in out and "effective=6.00e-02 (scale_lr on" in out


def test_init_from_loads_weights_and_prints_the_key_report(tmp_path, capsys):
    source = TinyModule().state_dict()
    source["net.weight"] = torch.full_like(source["net.weight"], 0.5)
    source["extra.head"] = torch.zeros(2)
    del source["net.bias"]
    ckpt = tmp_path / "weights.ckpt"
    torch.save({"state_dict": source}, ckpt)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    result = main(["-b", str(config), "-l", str(tmp_path / "logs"), "--init-from", str(ckpt)])
    out = capsys.readouterr().out
    assert torch.equal(result.model.net.weight, torch.full_like(result.model.net.weight, 0.5))
    assert "missing keys" in out and "net.bias" in out
    assert "unexpected keys" in out and "extra.head" in out

    from safetensors.torch import save_file

    safe = tmp_path / "weights.safetensors"
    save_file({"net.weight": torch.full((3, 3, 1, 1), -0.25), "net.bias": torch.zeros(3)}, str(safe))
    result = main(["-b", str(config), "-l", str(tmp_path / "logs2"), "--init-from", str(safe)])
    assert torch.equal(result.model.net.weight, torch.full((3, 3, 1, 1), -0.25))
    assert "missing keys (left at their initial values): 1" in capsys.readouterr().out  # steps_taken


def test_ddp_child_processes_reuse_the_parent_timestamp(tmp_path, monkeypatch):
    """Lightning re-launches main.py per extra rank; the children must pick the parent's run dir."""
    import os

    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    monkeypatch.delenv("LDM_RUN_TIMESTAMP", raising=False)
    parent = main(["-b", str(config), "-l", str(tmp_path / "logs")])
    assert "LDM_RUN_TIMESTAMP" not in os.environ  # a parent cleans up after itself
    monkeypatch.setenv("LDM_RUN_TIMESTAMP", parent.paths.now)
    child = main(["-b", str(config), "-l", str(tmp_path / "logs")])
    assert child.logdir == parent.logdir
