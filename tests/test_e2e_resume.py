"""Crash-safe resume: SIGKILL a training run after it has written checkpoints, resume with ``-r``.

The resumed run must start exactly where ``last.ckpt`` left off - same global step, optimiser state,
EMA weights, model weights and ``scale_factor`` (not re-estimated) - then keep training; and no
``.ckpt`` on disk may ever be truncated (each loads with :func:`ldm.checkpoint.safe_torch_load`).

:class:`DumpStartState` is loaded by the resumed training subprocess from this file (``PYTHONPATH``
holds ``tests/``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "fixtures" / "e2e_tiny_ldm.yaml"


class DumpStartState(L.Callback):
    """Saves the state the trainer resumed into, at ``on_train_start``, to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save({"global_step": int(trainer.global_step),
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}}, self.path)


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _assert_all_checkpoints_load(run_dir: Path) -> list[Path]:
    from ldm.checkpoint import safe_torch_load

    files = sorted(run_dir.rglob("*.ckpt"))
    for path in files:
        checkpoint = safe_torch_load(path)  # raises on a truncated / partial file
        assert "state_dict" in checkpoint and "global_step" in checkpoint, path
    return files


def _assert_same_tensors(expected: dict, actual: dict, what: str) -> None:
    assert set(expected) == set(actual), f"{what}: keys differ"
    for key, value in expected.items():
        assert torch.equal(value.cpu(), actual[key].cpu()), f"{what}: {key} differs"


def _assert_same_optimizer(expected: dict, actual: dict) -> None:
    assert expected["param_groups"] == actual["param_groups"]
    assert set(expected["state"]) == set(actual["state"]) and expected["state"]
    for index, state in expected["state"].items():
        for name, value in state.items():
            other = actual["state"][index][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), f"optimizer state {index}.{name}"


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_last_checkpoint(tmp_path):
    from ldm.checkpoint import safe_torch_load

    logs, dump = tmp_path / "logs", tmp_path / "start_state.pt"
    train = [sys.executable, "main.py", "-b", str(TINY_CONFIG), "-t", "-l", str(logs), "-n", "resume",
             "--max_steps", "100000",
             "lightning.modelcheckpoint.params.every_n_train_steps=2",
             "lightning.modelcheckpoint.params.save_top_k=-1",
             "lightning.modelcheckpoint.params.filename=ckpt-{step:06}"]
    proc = subprocess.Popen(train, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            if len(list(logs.glob("*/checkpoints/ckpt-step=*.ckpt"))) >= 3:  # several checkpoints exist
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended early: {proc.stderr.read().decode()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # mid-way, possibly while a checkpoint is being written
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    runs = [p for p in logs.iterdir() if p.is_dir()]
    assert len(runs) == 1
    run_dir = runs[0]
    _assert_all_checkpoints_load(run_dir)
    last = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")
    killed_step = int(last["global_step"])
    assert killed_step >= 4 and killed_step % 2 == 0  # last.ckpt is written with the every-2-steps checkpoints

    resume = [sys.executable, "main.py", "-r", str(run_dir), "-t", "--max_steps", str(killed_step + 4),
              "lightning.callbacks.start_dump.target=test_e2e_resume.DumpStartState",
              f"lightning.callbacks.start_dump.params.path={dump}"]
    done = subprocess.run(resume, check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    start = torch.load(dump, weights_only=True)
    assert start["global_step"] == killed_step                                 # same step
    _assert_same_optimizer(last["optimizer_states"][0], start["optimizer"])     # same Adam moments
    ema = {k: v for k, v in last["state_dict"].items() if k.startswith("model_ema.")}
    assert ema
    _assert_same_tensors(ema, {k: v for k, v in start["state_dict"].items() if k.startswith("model_ema.")}, "EMA")
    _assert_same_tensors(last["state_dict"], start["state_dict"], "weights")    # incl. scale_factor
    assert float(start["state_dict"]["scale_factor"]) != 1.0

    files = _assert_all_checkpoints_load(run_dir)
    assert [p for p in logs.iterdir() if p.is_dir()] == [run_dir]              # same run directory
    final = safe_torch_load(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == killed_step + 4                             # it went on training
    assert {f"ckpt-step={killed_step + 2:06}.ckpt", f"ckpt-step={killed_step + 4:06}.ckpt"} <= {p.name for p in files}
