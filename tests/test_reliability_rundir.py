"""Issue 14 items 3 and 8 (and the read-only ``-l`` of item 9): run directories are never shared,
checkpoint modes follow the umask, stale temporary files go away, an unwritable log root is one line."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import tiny_config, write_yaml  # noqa: E402
from ldm.callbacks.checkpoint_io import atomic_torch_save, remove_stale_temporaries  # noqa: E402
from ldm.cli.logdir import RunPaths, reserve_run_directory  # noqa: E402
from ldm.cli.train import main  # noqa: E402


def test_reserving_the_same_run_name_twice_gives_two_directories(tmp_path):
    first = reserve_run_directory(RunPaths(logdir=tmp_path / "NOW_tiny", nowname="NOW_tiny", now="NOW"))
    second = reserve_run_directory(RunPaths(logdir=tmp_path / "NOW_tiny", nowname="NOW_tiny", now="NOW"))
    assert first.logdir == tmp_path / "NOW_tiny" and second.logdir == tmp_path / "NOW_tiny_1"
    assert second.nowname == "NOW_tiny_1" and first.logdir.is_dir() and second.logdir.is_dir()


def test_two_runs_started_in_the_same_second_do_not_share_a_directory(tmp_path, monkeypatch):
    import ldm.cli.train as train

    monkeypatch.setattr(train, "timestamp", lambda: "2030-01-01T00-00-00")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=2))
    a = main(["-b", str(config), "-t", "-l", str(tmp_path / "logs")])
    b = main(["-b", str(config), "-t", "-l", str(tmp_path / "logs")])
    assert a.logdir != b.logdir
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["2030-01-01T00-00-00_tiny",
                                                                      "2030-01-01T00-00-00_tiny_1"]
    for run in (a, b):
        assert len(list((run.logdir / "configs").glob("*-project.yaml"))) == 1
        assert (run.logdir / "checkpoints" / "last.ckpt").is_file()


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    with pytest.raises(SystemExit):
        main(["-b", str(config), "-l", str(tmp_path / "logs"), "model.target=cli_fixtures.NoSuchModel"])
    assert list((tmp_path / "logs").iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == mode


def test_stale_temporaries_are_removed_when_a_run_resumes(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=2))
    run = main(["-b", str(config), "-t", "-l", str(tmp_path / "logs")])
    ckptdir = run.logdir / "checkpoints"
    stale = [ckptdir / ".last.ckpt.k3j2_x9.tmp", ckptdir / "trainstep_checkpoints" / ".e.ckpt.abc.tmp"]
    stale[1].parent.mkdir(exist_ok=True)
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = ckptdir / ".notes.txt"
    keep.write_text("mine")
    main(["-r", str(run.logdir), "-t", "--max_steps", "3"])
    assert not any(p.exists() for p in stale) and keep.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_unwritable_log_root_is_one_line_before_building_anything(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        main(["-b", str(config), "-t", "-l", str(blocker / "logs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "-l DIR" in err and str(blocker) in err
