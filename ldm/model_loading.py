"""Build a trained model from its config and load a checkpoint's weights into it, safely.

Weights are read with :func:`ldm.checkpoint.load_state_dict`, which never runs pickled code
(``torch.load(weights_only=True)`` / safetensors) unless ``trust_checkpoint=True``.
Sub-model ``ckpt_path`` entries in the config (e.g. the first stage's autoencoder checkpoint)
are dropped before building: a full checkpoint already holds those weights, and the original
files need not exist on this machine.

No command-line words here: the sampling command (:mod:`ldm.cli.load_model`, which adds run
directories and devices), ``convert`` (:mod:`ldm.convert`) and ``merge-lora`` (:mod:`ldm.lora`) build on it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: sub-model configs whose ``params.ckpt_path`` the full checkpoint supersedes
SUB_MODEL_CONFIGS = ("first_stage_config", "cond_stage_config", "unet_config")


class ModelLoadError(ValueError):
    """A checkpoint or config that cannot make the model (missing file, unsafe or unfitting weights)."""


@dataclass
class TrainedModel:
    model: Any                       # in eval mode, on the CPU
    config: Any                      # the merged OmegaConf config
    notes: list[str] = field(default_factory=list)


def drop_sub_checkpoints(model_config, notes: list[str]) -> None:
    """Set the model's and its sub-models' ``params.ckpt_path`` to None (a note for each)."""
    params = model_config.get("params") or {}
    if params.get("ckpt_path"):
        notes.append(f"model.params.ckpt_path={params['ckpt_path']} ignored: the given checkpoint is loaded instead")
        params["ckpt_path"] = None
    for name in SUB_MODEL_CONFIGS:
        sub = params.get(name)
        if hasattr(sub, "get") and (sub.get("params") or {}).get("ckpt_path"):
            notes.append(f"model.params.{name}.params.ckpt_path ignored: the checkpoint holds those weights")
            sub["params"]["ckpt_path"] = None


def check_report(report, checkpoint: Path) -> None:
    """Missing weights other than EMA shadows mean the checkpoint does not fit the config."""
    missing = [k for k in report.missing if not k.startswith("model_ema.")]
    if missing:
        prefixes = sorted({".".join(k.split(".")[:2]) for k in missing})
        raise ModelLoadError(f"checkpoint {checkpoint} lacks {len(missing)} weight(s) the config's model needs "
                             f"(under {', '.join(prefixes[:6])}); is it the checkpoint of this config?")


def build_trained_model(model_config, checkpoint: str | Path, *, trust_checkpoint: bool = False,
                        notes: list[str] | None = None):
    """The model of ``model_config`` (the ``model:`` node) with ``checkpoint``'s weights, in eval mode.
    Sub-model checkpoints are dropped from ``model_config`` (in place); ``notes`` collects what was done."""
    from ldm.checkpoint import UnsafeCheckpointError, load_state_dict, load_weights
    from ldm.util import instantiate_from_config

    checkpoint = Path(checkpoint)
    notes = [] if notes is None else notes
    if not checkpoint.is_file():
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    drop_sub_checkpoints(model_config, notes)
    try:
        state_dict = load_state_dict(checkpoint, trust_checkpoint=trust_checkpoint)
    except UnsafeCheckpointError as err:
        raise ModelLoadError(str(err)) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise ModelLoadError(f"cannot read checkpoint {checkpoint}: {err}") from err
    model = instantiate_from_config(model_config, node="model")
    try:
        report = load_weights(model, state_dict, verbose=False)
    except ValueError as err:  # shape mismatches
        raise ModelLoadError(f"checkpoint {checkpoint} does not fit the config's model: {err}") from err
    check_report(report, checkpoint)
    notes.append(f"loaded {report.loaded} tensors from {checkpoint}")
    return model.eval()


def load_trained_model(checkpoint: str | Path, config_files: Sequence[str | Path], overrides: Sequence[str] = (),
                       *, trust_checkpoint: bool = False) -> TrainedModel:
    """:func:`build_trained_model` from config files (merged left to right, then the ``KEY=VALUE``
    ``overrides``; a config error is a :class:`ldm.util.ConfigError`)."""
    from ldm.config_files import merge_configs

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    for path in config_files:
        if not Path(path).is_file():
            raise ModelLoadError(f"config file not found: {path}")
    merged = merge_configs(config_files, overrides)
    if "model" not in merged or merged.model is None:
        raise ModelLoadError(f"the config ({', '.join(map(str, config_files))}) has no 'model' section")
    notes: list[str] = []
    model = build_trained_model(merged.model, checkpoint, trust_checkpoint=trust_checkpoint, notes=notes)
    return TrainedModel(model=model, config=merged, notes=notes)
