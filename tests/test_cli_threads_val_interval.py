"""main.py --threads, and an integer val_check_interval longer than the epoch (clamped with a warning)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import tiny_config, write_yaml
from ldm.cli.args import parse_args
from ldm.cli.train import run


def test_threads_sets_torch_threads(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=1))
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        run(["-b", str(config), "-t", "--threads", str(target), "-l", str(tmp_path / "logs")])
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_threads_rejects_non_positive(bad, capsys):
    with pytest.raises(SystemExit) as err:
        parse_args(["--threads", bad])
    assert err.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_val_check_interval_longer_than_epoch_is_clamped(tmp_path):
    # 16 images, batch 2 -> 8 batches per epoch; Lightning alone refuses val_check_interval=1000
    config = tiny_config(validation=True, max_steps=10, model_params={"monitor": "val/loss"})
    config["lightning"]["trainer"]["val_check_interval"] = 1000
    path = write_yaml(tmp_path / "tiny.yaml", config)
    with pytest.warns(UserWarning, match=r"val_check_interval=1000 is longer than an epoch \(8 training batches\)"):
        result = run(["-b", str(path), "-t", "-l", str(tmp_path / "logs"), "--num_sanity_val_steps", "0"])
    assert result.trainer.val_check_interval == 8
    assert result.trainer.global_step == 10
    assert "val/loss" in result.trainer.callback_metrics


def test_val_check_interval_with_limit_train_batches(tmp_path):
    config = tiny_config(validation=True, max_steps=6)
    config["lightning"]["trainer"].update(val_check_interval=5, limit_train_batches=3)
    path = write_yaml(tmp_path / "tiny.yaml", config)
    with pytest.warns(UserWarning, match=r"\(3 training batches\)"):
        result = run(["-b", str(path), "-t", "-l", str(tmp_path / "logs"), "--num_sanity_val_steps", "0"])
    assert result.trainer.val_check_interval == 3
