"""Config files -> one merged config; the ``lightning.trainer`` section -> ``Trainer`` arguments.

Precedence, lowest first: built-in trainer defaults < config files (left to right, a resumed run's
saved configs first) < ``KEY=VALUE`` overrides < command-line trainer flags.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.config_files import load_config_file as load_config_file  # re-exported
from ldm.config_files import merge_configs as merge_configs  # re-exported
from ldm.util import ConfigError


class CLIError(RuntimeError):
    """A problem with the command line or the machine, reported as one line and exit code 2."""


# Trainer defaults of this CLI. ``devices: 1`` keeps a plain run on one device (Lightning's own
# default would grab every GPU of the machine); use --gpus / --devices for more.
TRAINER_DEFAULTS: dict[str, Any] = {"accelerator": "auto", "devices": 1}

# Lightning 1.x trainer keys found in old configs: renamed ones ...
_RENAMED_TRAINER_KEYS = {
    "replace_sampler_ddp": "use_distributed_sampler",
    "distributed_backend": "strategy",
}
# ... and removed ones, dropped with a note (they have no Lightning 2 equivalent or are set by the CLI).
_REMOVED_TRAINER_KEYS = {
    "resume_from_checkpoint": "use -r/--resume",
    "progress_bar_refresh_rate": "configure lightning.callbacks.progress_bar",
    "weights_summary": "use enable_model_summary",
    "terminate_on_nan": "removed in Lightning 2",
    "checkpoint_callback": "use enable_checkpointing / lightning.modelcheckpoint",
    "amp_backend": "removed in Lightning 2 (native AMP is used)",
    "amp_level": "removed in Lightning 2",
    "flush_logs_every_n_steps": "removed in Lightning 2",
    "prepare_data_per_node": "removed in Lightning 2",
    "auto_select_gpus": "removed in Lightning 2",
    "auto_lr_find": "removed in Lightning 2",
    "auto_scale_batch_size": "removed in Lightning 2",
    "track_grad_norm": "removed in Lightning 2",
    "move_metrics_to_cpu": "removed in Lightning 2",
    "multiple_trainloader_mode": "removed in Lightning 2",
    "stochastic_weight_avg": "use the StochasticWeightAveraging callback",
    "process_position": "removed in Lightning 2",
    "log_gpu_memory": "removed in Lightning 2",
    "weights_save_path": "removed in Lightning 2",
    "reload_dataloaders_every_epoch": "use reload_dataloaders_every_n_epochs",
    "tpu_cores": "use --accelerator tpu --devices N",
    "ipus": "removed in Lightning 2",
}
_LEGACY_STRATEGY_ACCELERATORS = {"ddp", "ddp_spawn", "ddp2", "dp", "ddp_cpu", "horovod", "ddp_sharded"}
# Trainer arguments the CLI builds itself.
_CLI_OWNED = {
    "callbacks": "put callbacks under lightning.callbacks",
    "plugins": "not configurable from YAML here",
    "default_root_dir": "set by -l/--logdir",
}


def split_lightning(config: DictConfig) -> tuple[DictConfig, DictConfig]:
    """``config`` without its ``lightning`` section, and that section (possibly empty)."""
    config = config.copy()
    lightning_config = config.pop("lightning", None)
    if lightning_config is None:
        lightning_config = OmegaConf.create()
    if not isinstance(lightning_config, DictConfig):
        raise ConfigError("lightning: expected a mapping")
    return config, lightning_config


def require_section(config: Mapping, key: str) -> Any:
    if key not in config or config[key] is None:
        raise ConfigError(f"the config has no '{key}' section (keys present: {sorted(config)})")
    return config[key]


def parse_gpus(spec: Any) -> list[int] | int | None:
    """The original ``--gpus`` syntax: ``0,1`` / ``0,`` are indices; ``2`` is a count; ``-1`` is all."""
    if spec is None or spec == "" or spec is False:
        return None
    if isinstance(spec, (list, tuple)):
        return [int(i) for i in spec]
    if isinstance(spec, int):
        return spec if spec != 0 else None
    text = str(spec).strip()
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        count = int(text)
    except ValueError as err:
        raise CLIError(f"--gpus: expected indices such as 0,1 or a count, got {spec!r}") from err
    return count if count != 0 else None


def check_gpus_available(gpus: list[int] | int, available: int) -> None:
    """Fail with one line when the machine lacks the requested CUDA devices."""
    if isinstance(gpus, list):
        wanted = f"GPU indices {','.join(map(str, gpus))}"
        ok = all(0 <= i < available for i in gpus)
    elif gpus == -1:
        wanted, ok = "all GPUs", available > 0
    else:
        wanted, ok = f"{gpus} GPU(s)", gpus <= available
    if not ok:
        raise CLIError(
            f"--gpus asks for {wanted}, but this machine has {available} CUDA device(s) visible; "
            "use fewer GPUs or --accelerator cpu"
        )


def _trainer_arguments() -> set[str]:
    import lightning as L

    return {name for name in inspect.signature(L.Trainer.__init__).parameters if name != "self"}


def build_trainer_kwargs(
    trainer_config: Mapping | None,
    overrides: Mapping[str, Any] | None = None,
    gpus_flag: Any = None,
    cuda_device_count: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Merge defaults < config ``lightning.trainer`` < flags and translate Lightning 1 keys.

    Returns the Trainer keyword arguments and notes about dropped / renamed legacy keys.
    ``gpus`` (config or ``--gpus``) becomes ``accelerator="gpu"``, ``devices`` and, for several
    devices, ``strategy="ddp"``; a machine without those devices raises :class:`CLIError`.
    """
    notes: list[str] = []
    from_config = dict(OmegaConf.to_container(trainer_config, resolve=True)) if isinstance(
        trainer_config, DictConfig) else dict(trainer_config or {})
    for old, new in _RENAMED_TRAINER_KEYS.items():
        if old in from_config:
            from_config.setdefault(new, from_config.pop(old))
            notes.append(f"lightning.trainer.{old} is now {new}")
    for old, why in _REMOVED_TRAINER_KEYS.items():
        if old in from_config:
            from_config.pop(old)
            notes.append(f"lightning.trainer.{old} ignored ({why})")
    accelerator = from_config.get("accelerator")
    if isinstance(accelerator, str) and accelerator in _LEGACY_STRATEGY_ACCELERATORS:
        from_config.setdefault("strategy", accelerator)
        from_config.pop("accelerator")
        notes.append(f"lightning.trainer.accelerator={accelerator} is a strategy in Lightning 2")

    kwargs: dict[str, Any] = dict(TRAINER_DEFAULTS)
    kwargs.update(from_config)
    kwargs.update(dict(overrides or {}))

    gpus = parse_gpus(gpus_flag if gpus_flag is not None else kwargs.pop("gpus", None))
    kwargs.pop("gpus", None)
    if gpus is not None:
        if cuda_device_count is None:
            import torch

            cuda_device_count = torch.cuda.device_count()
        check_gpus_available(gpus, cuda_device_count)
        kwargs["accelerator"] = "gpu"
        kwargs["devices"] = gpus
        count = len(gpus) if isinstance(gpus, list) else (cuda_device_count if gpus == -1 else gpus)
        if count > 1 and kwargs.get("strategy") in (None, "auto"):
            kwargs["strategy"] = "ddp"

    for key, why in _CLI_OWNED.items():
        if key in kwargs:
            raise ConfigError(f"lightning.trainer.{key}: {why}")
    known = _trainer_arguments()
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"lightning.trainer: unknown Lightning 2 Trainer argument(s) {unknown}; "
            "see `python main.py --help` for the trainer flags"
        )
    return kwargs, notes
