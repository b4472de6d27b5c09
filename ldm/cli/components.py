"""Loggers, callbacks and checkpointing built from the ``lightning`` config section.

Each section is the CLI's defaults merged with the user's config, key by key, as in the original
main.py: ``lightning.logger`` (one node), ``lightning.callbacks`` (a mapping name -> node; set a
name to ``null`` to drop a default), ``lightning.modelcheckpoint`` (one node).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.cli.config import CLIError
from ldm.cli.logdir import RunPaths
from ldm.util import instantiate_from_config, modern_target

LOGGER_TARGETS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
}


def modernize_target(target: str) -> str:
    """Map original / pytorch_lightning 1.x targets onto Lightning 2 and this package."""
    return modern_target(target)


def _node(config: Any) -> dict:
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    node = dict(config or {})
    if "target" in node and isinstance(node["target"], str):
        node["target"] = modernize_target(node["target"])
    return node


def _merge(default: Mapping, user: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(default)), OmegaConf.create(_node(user))))


# -- logger --------------------------------------------------------------------------------
def logger_kind(target: str) -> str | None:
    lowered = target.lower()
    for kind in ("wandb", "tensorboard", "csv", "testtube"):
        if kind in lowered:
            return "csv" if kind == "testtube" else kind
    return None


def _logger_defaults(kind: str, paths: RunPaths, project: str | None, debug: bool) -> dict:
    if kind == "wandb":
        params = {"name": paths.nowname, "id": paths.nowname, "save_dir": str(paths.logdir),
                  "project": project or "latent-diffusion", "offline": bool(debug), "resume": "allow"}
    else:
        params = {"save_dir": str(paths.logdir), "name": kind}
    return {"target": LOGGER_TARGETS[kind], "params": params}


def build_logger(logger_config: Any, choice: str | None, paths: RunPaths, *, project: str | None = None,
                 debug: bool = False):
    """``--logger`` > ``lightning.logger`` > CSV. Returns a Lightning logger, or ``False`` for none."""
    if choice == "none" or logger_config is False:
        return False
    user = _node(logger_config) if logger_config else {}
    user_kind = logger_kind(user["target"]) if "target" in user else None
    if "target" in user and user_kind is None and choice is None:
        node = user  # a custom logger class: taken as written
    else:
        kind = choice or user_kind or "csv"
        same_kind = "target" not in user or user_kind == kind
        user_params = {"params": user.get("params") or {}} if same_kind else {}
        node = _merge(_logger_defaults(kind, paths, project, debug), user_params)
    try:
        return instantiate_from_config(node, node="lightning.logger")
    except ImportError as err:
        raise CLIError(f"lightning.logger {node['target']!r} needs a package that is not installed: {err}") from err


# -- callbacks -----------------------------------------------------------------------------
def default_callbacks(paths: RunPaths, *, debug: bool, with_logger: bool) -> dict[str, dict]:
    callbacks = {
        "image_logger": {
            "target": "ldm.callbacks.image_logger.ImageLogger",
            "params": {"batch_frequency": 750, "max_images": 4, "clamp": True, "save_dir": str(paths.logdir)},
        },
        "cuda_callback": {"target": "ldm.callbacks.cuda.CUDACallback"},
        "val_check_interval_clamp": {"target": "ldm.callbacks.val_interval.ClampValCheckInterval"},
        "emergency_checkpoint": {
            "target": "ldm.callbacks.emergency.EmergencyCheckpoint",
            "params": {"ckpt_path": str(paths.ckptdir / "last.ckpt"), "on_exception": not debug},
        },
    }
    if with_logger:
        callbacks["learning_rate_logger"] = {
            "target": "lightning.pytorch.callbacks.LearningRateMonitor",
            "params": {"logging_interval": "step"},
        }
    return callbacks


def _trainstep_checkpoint_defaults(paths: RunPaths) -> dict:
    return {
        "target": "lightning.pytorch.callbacks.ModelCheckpoint",
        "params": {
            "dirpath": str(paths.ckptdir / "trainstep_checkpoints"),
            "filename": "{epoch:06}-{step:09}",
            "verbose": True,
            "save_top_k": -1,
            "every_n_train_steps": 10000,
            "save_weights_only": True,
        },
    }


def build_callbacks(callbacks_config: Any, paths: RunPaths, *, debug: bool, with_logger: bool) -> list:
    defaults = default_callbacks(paths, debug=debug, with_logger=with_logger)
    user = OmegaConf.to_container(callbacks_config, resolve=True) if isinstance(callbacks_config, DictConfig) \
        else dict(callbacks_config or {})
    if "metrics_over_trainsteps_checkpoint" in user:
        defaults["metrics_over_trainsteps_checkpoint"] = _trainstep_checkpoint_defaults(paths)
    callbacks = []
    for name in list(defaults) + [n for n in user if n not in defaults]:
        if name in user and user[name] is None:
            continue  # `name: null` removes a default
        node = _merge(defaults.get(name, {}), user.get(name)) if name in defaults else _node(user[name])
        if node.get("target", "").endswith("LearningRateMonitor") and not with_logger:
            continue  # Lightning refuses it without a logger
        callbacks.append(instantiate_from_config(node, node=f"lightning.callbacks.{name}"))
    return callbacks


def build_model_checkpoint(modelcheckpoint_config: Any, paths: RunPaths, *, model_monitor: str | None,
                           has_validation: bool):
    """``last.ckpt`` plus one file per epoch; top-3 by the model's ``monitor`` only with validation data."""
    params: dict[str, Any] = {"dirpath": str(paths.ckptdir), "filename": "{epoch:06}", "verbose": True,
                              "save_last": True}
    if model_monitor and has_validation:
        params.update(monitor=model_monitor, save_top_k=3)
    default = {"target": "lightning.pytorch.callbacks.ModelCheckpoint", "params": params}
    node = _merge(default, modelcheckpoint_config)
    return instantiate_from_config(node, node="lightning.modelcheckpoint")
