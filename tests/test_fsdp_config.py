"""FSDP from YAML (``ldm.fsdp``): wrap policy on UNet blocks, mixed precision, activation
checkpointing; on the CPU ``main.py`` refuses FSDP in one line (exit code 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldm.fsdp import build_strategy, unet_fsdp_strategy
from ldm.modules.attention import AttentionBlock, SpatialTransformer
from ldm.modules.unet_blocks import ResBlock
from ldm.util import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_strategy_wraps_and_checkpoints_the_named_unet_blocks():
    strategy = unet_fsdp_strategy(activation_checkpointing=["ResBlock"], mixed_precision="bf16",
                                  sharding_strategy="SHARD_GRAD_OP")
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {ResBlock, SpatialTransformer, AttentionBlock}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {ResBlock}
    mp = strategy.mixed_precision
    assert mp.param_dtype == mp.reduce_dtype == mp.buffer_dtype == torch.bfloat16
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert strategy.kwargs["use_orig_params"] is True  # frozen first stage + trainable UNet in one root unit


def test_defaults_leave_precision_to_the_trainer_and_accept_class_paths():
    strategy = unet_fsdp_strategy(wrap=["ldm.modules.attention.BasicTransformerBlock"])
    assert strategy.mixed_precision is None and not strategy._activation_checkpointing_kwargs
    assert {c.__name__ for c in strategy.kwargs["auto_wrap_policy"]._module_classes} == {"BasicTransformerBlock"}


@pytest.mark.parametrize("kwargs, match", [({"wrap": ["ResBlok"]}, "ResBlok"),
                                            ({"mixed_precision": "int8"}, "mixed_precision")])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        unet_fsdp_strategy(**kwargs)


def test_build_strategy_instantiates_only_target_mappings():
    assert build_strategy({"strategy": "ddp"}) == {"strategy": "ddp"}
    built = build_strategy({"strategy": {"target": "ldm.fsdp.unet_fsdp_strategy", "params": {"wrap": ["ResBlock"]}},
                            "devices": 2})
    assert type(built["strategy"]).__name__ == "FSDPStrategy" and built["devices"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["--strategy", "fsdp"],
                                      ["lightning.trainer.strategy.target=ldm.fsdp.unet_fsdp_strategy"]])
def test_fsdp_on_the_cpu_is_one_line_and_exit_code_2(tmp_path, strategy):
    env_path = f"{ROOT / 'tests'}:{ROOT}"
    proc = subprocess.run([sys.executable, "main.py", "-b", "tests/fixtures/e2e_tiny_ldm.yaml", "-t", "-l",
                           str(tmp_path), "--accelerator", "cpu", "--devices", "2", *strategy], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("main.py: error:")]
    assert len(errors) == 1 and "requires a GPU accelerator" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
