"""Load a trained diffusion model for inference: from a run directory, or a checkpoint + config.

A run directory is what ``main.py`` writes (see docs/cli.md)::

    logs/<ts>_<name>/checkpoints/last.ckpt
    logs/<ts>_<name>/configs/<ts>-project.yaml      (one per start; merged in name order)

Building the model and loading its weights (safely: never pickled code unless ``trust_checkpoint=True``;
sub-model ``ckpt_path`` entries dropped) is :mod:`ldm.model_loading`; this module adds the command's
sources (``--run`` / ``--ckpt`` + ``--config``), the device, and the command's error (:class:`SampleError`).
"""
from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.cli.logdir import run_dir_of_checkpoint
from ldm.model_loading import ModelLoadError, load_trained_model


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


def load_model(run: str | None = None, ckpt: str | None = None, config: Sequence[str] | str | None = None,
               overrides: Sequence[str] = (), device: str = "auto", trust_checkpoint: bool = False) -> LoadedModel:
    """Build the model from its config, load the checkpoint's weights safely, move it to ``device``
    (``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``) and put it in eval mode. ``overrides`` are
    OmegaConf ``KEY=VALUE`` strings applied after the config files."""
    ckpt_path, config_files, run_dir = resolve_source(run, ckpt, config)
    torch_device = pick_device(device)
    try:
        trained = load_trained_model(ckpt_path, config_files, overrides, trust_checkpoint=trust_checkpoint)
    except ModelLoadError as err:
        raise SampleError(str(err)) from err
    return LoadedModel(model=trained.model.to(torch_device), config=trained.config, checkpoint=ckpt_path,
                       config_files=config_files, run_dir=run_dir, notes=trained.notes)
