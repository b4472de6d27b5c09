"""Atomic checkpoint writes, and refusal of checkpoints that run code when unpickled."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ldm.callbacks.checkpoint_io as checkpoint_io  # noqa: E402
from cli_fixtures import TinyModule, tiny_config, write_yaml  # noqa: E402
from ldm.callbacks import AtomicCheckpointIO  # noqa: E402
from ldm.checkpoint import UnsafeCheckpointError, load_weights  # noqa: E402
from ldm.cli.train import main  # noqa: E402


class _RunsCode:
    """Unpickling this calls exec(), which creates ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"net.weight": torch.zeros(3, 3, 1, 1)}, "global_step": 4,
                "payload": _RunsCode(marker)}, path)
    return path


def test_crafted_checkpoint_really_runs_code_when_fully_unpickled(tmp_path):
    """Guards the other tests: the crafted file is dangerous, so refusing it means something."""
    marker = tmp_path / "pwned"
    torch.load(_crafted_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_crafted_checkpoint_is_refused_everywhere(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError):
        AtomicCheckpointIO().load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(TinyModule(), evil)
    assert not marker.exists()


def test_resume_from_a_crafted_checkpoint_is_refused_and_left_alone(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "logs" / "2024-01-01T00-00-00_tiny"
    write_yaml(run_dir / "configs" / "2024-01-01T00-00-00-project.yaml", tiny_config())
    (run_dir / "checkpoints").mkdir()
    evil = _crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    original_bytes = evil.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["-r", str(run_dir), "-t"])
    assert exit_info.value.code == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    assert evil.read_bytes() == original_bytes  # no emergency checkpoint written over it

    with pytest.raises(SystemExit):
        main(["-b", str(write_yaml(tmp_path / "tiny.yaml", tiny_config())), "-l", str(tmp_path / "init"),
              "--init-from", str(evil)])
    assert not marker.exists()


def test_atomic_save_replaces_the_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(2)}, target)
    io.save_checkpoint({"global_step": 2, "w": torch.full((2,), 2.0)}, target)
    loaded = io.load_checkpoint(target)
    assert loaded["global_step"] == 2 and torch.equal(loaded["w"], torch.full((2,), 2.0))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_failure_mid_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.arange(1000.0)}, target)
    good_bytes = target.read_bytes()

    def crash_after_some_bytes(obj, handle, *args, **kwargs):
        handle.write(good_bytes[: len(good_bytes) // 3])  # a partial file, as on a kill or a full disk
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", crash_after_some_bytes)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == good_bytes
    assert io.load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temporary file is gone


def test_trusted_load_is_opt_in(tmp_path):
    marker = tmp_path / "ran"
    evil = _crafted_checkpoint(tmp_path / "trusted.ckpt", marker)
    loaded = AtomicCheckpointIO(trust_checkpoint=True).load_checkpoint(evil)
    assert loaded["global_step"] == 4 and marker.exists()
