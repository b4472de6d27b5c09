"""Checks ``main.py`` runs after building the model and data, before the Trainer starts.

Each turns a failure that used to come as a traceback — often only after training had started and an
emergency checkpoint had been written — into one ``error:`` line with the remedy:

* the training / validation datasets are built here, so missing dataset files are reported up front;
* a latent cache must have been encoded by this model's first stage (``verify_first_stage``);
* ``val_check_interval`` without validation data is dropped (it means nothing there); with validation
  data an integer interval longer than an epoch is lowered to the epoch by
  :class:`ldm.callbacks.val_interval.ClampValCheckInterval`, with a warning.
"""
from __future__ import annotations

from typing import Any

from ldm.data.contracts import check_first_stage
from ldm.util import ConfigError


def _dataset(datamodule: Any, split: str) -> Any:
    configs = getattr(datamodule, "dataset_configs", None)
    if not isinstance(configs, dict) or split not in configs or not callable(getattr(datamodule, "dataset", None)):
        return None
    try:
        dataset = datamodule.dataset(split)
    except FileNotFoundError as err:
        raise ConfigError(f"data.params.{split}: {err}") from err
    return getattr(dataset, "data", dataset)  # WrappedDataset


def preflight(model: Any, datamodule: Any, trainer_kwargs: dict, *, has_validation: bool, training: bool) -> list[str]:
    """Raise :class:`ConfigError` for a run that cannot work; return notes. Edits ``trainer_kwargs``."""
    notes: list[str] = []
    train = _dataset(datamodule, "train") if training else None
    if has_validation:
        _dataset(datamodule, "validation")
    first_stage = getattr(model, "first_stage_model", None)
    check_first_stage(train, first_stage)
    interval = trainer_kwargs.get("val_check_interval")
    if interval is not None and training:
        if not has_validation:
            trainer_kwargs.pop("val_check_interval")
            notes.append(f"lightning.trainer.val_check_interval={interval} ignored: there is no validation data")
    return notes
