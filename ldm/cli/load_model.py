"""Load a trained diffusion model for inference: from a run directory, or a checkpoint + config.

A run directory is what ``main.py`` writes (see docs/cli.md)::

    logs/<ts>_<name>/checkpoints/last.ckpt
    logs/<ts>_<name>/configs/<ts>-project.yaml      (one per start; merged in name order)

Weights are read with :func:`ldm.checkpoint.load_state_dict`, which never runs pickled code
(``torch.load(weights_only=True)`` / safetensors) unless ``trust_checkpoint=True``.
Sub-model ``ckpt_path`` entries in the config (e.g. the first stage's autoencoder checkpoint)
are dropped before building: a stage-2 checkpoint already holds those weights, and the
original files need not exist on the sampling machine.
"""
from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.cli.logdir import run_dir_of_checkpoint

#: sub-model configs whose ``params.ckpt_path`` the full checkpoint supersedes
SUB_MODEL_CONFIGS = ("first_stage_config", "cond_stage_config", "unet_config")


class SampleError(ValueError):
    """A problem with the sampling command's inputs (files, flags, model/mode mismatch)."""


@dataclass
class LoadedModel:
    model: Any
    config: Any                      # the merged OmegaConf config
    checkpoint: Path
    config_files: list[Path]
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def pick_device(name: str = "auto"):
    """``auto`` -> CUDA, else MPS, else CPU; an explicit device that is not available is an error."""
    import torch

    name = (name or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SampleError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
    if name == "mps" and not mps_ok:
        raise SampleError("--device mps: the MPS backend is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise SampleError(f"--device {name!r}: {err}; use auto, cpu, cuda, cuda:N or mps") from err


def resolve_source(run: str | None = None, ckpt: str | None = None,
                   config: Sequence[str] | str | None = None) -> tuple[Path, list[Path], Path | None]:
    """``(checkpoint, config files, run dir)`` from ``--run DIR`` or ``--ckpt PATH --config YAML``.

    ``--run`` also accepts a checkpoint inside ``<run>/checkpoints/``; extra ``--config`` files are
    merged after the run's own configs.
    """
    configs = [config] if isinstance(config, str) else list(config or [])
    run_dir = None
    if run:
        path = Path(run)
        if not path.exists():
            raise SampleError(f"--run: {run} does not exist (expected a run directory such as logs/<ts>_<name>)")
        if path.is_file():
            run_dir = run_dir_of_checkpoint(path)
            if run_dir is None:
                raise SampleError(f"--run: {run} is a file outside a run's checkpoints/ folder; "
                                  "use --ckpt and --config")
            ckpt_path = path
        else:
            run_dir = path.resolve()
            ckpt_path = Path(ckpt) if ckpt else run_dir / "checkpoints" / "last.ckpt"
        run_configs = sorted(Path(p) for p in glob.glob(str(run_dir / "configs" / "*-project.yaml")))
        if not run_configs:
            raise SampleError(f"--run: {run_dir} has no configs/*-project.yaml (is it a run directory of main.py?)")
        configs = run_configs + [Path(c) for c in configs]
    else:
        if not ckpt:
            raise SampleError("no model given: pass --run DIR (a run directory of main.py) "
                              "or --ckpt PATH --config YAML")
        if not configs:
            raise SampleError("--ckpt needs --config YAML (the model's config), or use --run DIR")
        ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        where = f" (run directory {run_dir})" if run_dir is not None else ""
        raise SampleError(f"checkpoint not found: {ckpt_path}{where}")
    for c in configs:
        if not Path(c).is_file():
            raise SampleError(f"config file not found: {c}")
    return ckpt_path, [Path(c) for c in configs], run_dir


def _drop_sub_checkpoints(model_config, notes: list[str]) -> None:
    params = model_config.get("params") or {}
    if params.get("ckpt_path"):
        notes.append(f"model.params.ckpt_path={params['ckpt_path']} ignored: the given checkpoint is loaded instead")
        params["ckpt_path"] = None
    for name in SUB_MODEL_CONFIGS:
        sub = params.get(name)
        if hasattr(sub, "get") and (sub.get("params") or {}).get("ckpt_path"):
            notes.append(f"model.params.{name}.params.ckpt_path ignored: the checkpoint holds those weights")
            sub["params"]["ckpt_path"] = None


def _check_report(report, checkpoint: Path) -> None:
    """Missing weights other than EMA shadows mean the checkpoint does not fit the config."""
    missing = [k for k in report.missing if not k.startswith("model_ema.")]
    if missing:
        prefixes = sorted({".".join(k.split(".")[:2]) for k in missing})
        raise SampleError(f"checkpoint {checkpoint} lacks {len(missing)} weight(s) the config's model needs "
                          f"(under {', '.join(prefixes[:6])}); is it the checkpoint of this config?")


def load_model(run: str | None = None, ckpt: str | None = None, config: Sequence[str] | str | None = None,
               overrides: Sequence[str] = (), device: str = "auto", trust_checkpoint: bool = False) -> LoadedModel:
    """Build the model from its config, load the checkpoint's weights safely, move it to ``device``
    (``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``) and put it in eval mode. ``overrides`` are
    OmegaConf ``KEY=VALUE`` strings applied after the config files."""
    from ldm.checkpoint import UnsafeCheckpointError, load_state_dict, load_weights
    from ldm.cli.config import merge_configs
    from ldm.util import instantiate_from_config

    ckpt_path, config_files, run_dir = resolve_source(run, ckpt, config)
    torch_device = pick_device(device)
    merged = merge_configs(config_files, overrides)
    if "model" not in merged or merged.model is None:
        raise SampleError(f"the config ({', '.join(map(str, config_files))}) has no 'model' section")
    notes: list[str] = []
    _drop_sub_checkpoints(merged.model, notes)
    try:
        state_dict = load_state_dict(ckpt_path, trust_checkpoint=trust_checkpoint)
    except UnsafeCheckpointError as err:
        raise SampleError(str(err)) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise SampleError(f"cannot read checkpoint {ckpt_path}: {err}") from err
    model = instantiate_from_config(merged.model, node="model")
    try:
        report = load_weights(model, state_dict, verbose=False)
    except ValueError as err:  # shape mismatches
        raise SampleError(f"checkpoint {ckpt_path} does not fit the config's model: {err}") from err
    _check_report(report, ckpt_path)
    notes.append(f"loaded {report.loaded} tensors from {ckpt_path}")
    model = model.to(torch_device).eval()
    return LoadedModel(model=model, config=merged, checkpoint=ckpt_path, config_files=config_files,
                       run_dir=run_dir, notes=notes)
