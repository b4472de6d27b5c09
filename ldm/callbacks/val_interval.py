"""Clamp an integer ``val_check_interval`` to the epoch length instead of failing.

Lightning refuses ``val_check_interval: N`` (validate every N training batches) when an epoch has
fewer than N batches. Configs written for large datasets (``val_check_interval: 1000``) then fail on
a small folder of images. This callback measures the epoch (the train loader's length, after
``limit_train_batches``) at ``setup`` and lowers the interval to it, with a warning: validation
then runs once per epoch. Iterable datasets without a length are left alone.
"""
from __future__ import annotations

import math

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


def epoch_batches(trainer) -> int | None:
    """Training batches per epoch, or None when the loader has no length."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "train_dataloader"):
        return None
    try:
        batches = len(datamodule.train_dataloader())
    except (TypeError, NotImplementedError):
        return None
    if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
        batches = math.ceil(batches / trainer.world_size)  # each rank sees its share
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return max(1, math.floor(batches * float(limit))) if limit else 0


class ClampValCheckInterval(Callback):
    def setup(self, trainer, pl_module, stage: str) -> None:
        interval = trainer.val_check_interval
        if stage != "fit" or not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
            return
        batches = epoch_batches(trainer)
        if batches and interval > batches:
            rank_zero_warn(f"val_check_interval={interval} is longer than an epoch ({batches} training batches): "
                           f"validating every {batches} batches (once per epoch) instead")
            trainer.val_check_interval = batches
