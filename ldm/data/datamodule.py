"""``DataModuleFromConfig``: the original ``main.DataModuleFromConfig`` on Lightning 2.

Each split (``train``, ``validation``, ``test``, ``predict``) is a ``target``/``params`` config
built with :func:`ldm.util.instantiate_from_config`. Only configured splits get a dataloader
method, so Lightning runs no validation loop when no validation set is configured (and callbacks
must not monitor validation metrics then).

Map-style datasets: the training loader shuffles; under DDP Lightning swaps in a
``DistributedSampler``. Iterable datasets (e.g. :class:`~ldm.data.webdataset.WebImageDataset`)
get neither shuffle nor sampler: they split their shards over ranks and workers themselves.
Batches are dicts (:func:`collate`): tensors stacked, numbers made tensors, strings and other
objects kept as lists.
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from ldm.data.dataset_config import SPLITS
from ldm.util import instantiate_from_config

_STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",),
                 "predict": ("predict",), None: SPLITS}


class WrappedDataset(Dataset):
    """Make any object with ``__len__`` and ``__getitem__`` a torch ``Dataset`` (original ``wrap``)."""

    def __init__(self, dataset):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def _collatable(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray, int, float, bool, np.number)) and not isinstance(value, str)


def _collate_values(values: list[Any]) -> Any:
    if all(_collatable(v) for v in values):
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) > 1:
            return values  # ragged tensors (e.g. images of different sizes) stay a list
        return default_collate(values)
    return values


def collate(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Dict samples -> a dict batch. Tensors are stacked (``B×…``), numbers become tensors,
    strings (captions), dicts, ``None`` and anything else stay Python lists of length ``B``."""
    if not samples:
        return {}
    if not all(isinstance(s, Mapping) for s in samples):
        return default_collate(samples)
    keys: list[str] = []
    for sample in samples:
        keys.extend(k for k in sample if k not in keys)
    return {key: _collate_values([sample.get(key) for sample in samples]) for key in keys}


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker distinct numpy / ``random`` streams derived from torch's worker seed
    (which Lightning's ``seed_everything(workers=True)`` also makes depend on the rank)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    if dataset is not None and hasattr(dataset, "on_worker_init"):
        dataset.on_worker_init(worker_id, info.num_workers)


class DataModuleFromConfig(pl.LightningDataModule):
    """Build dataloaders from dataset configs (original parameter names).

    Args:
        batch_size: per-process batch size.
        train, validation, test, predict: dataset configs (``target`` + ``params``), or ``None``.
        wrap: wrap datasets in :class:`WrappedDataset` (for plain sequences).
        num_workers: DataLoader workers; default ``min(2 * batch_size, cpu count)``.
        shuffle_test_loader, shuffle_val_dataloader: shuffle those loaders (map-style only).
        use_worker_init_fn: accepted for compatibility; workers are always seeded by
            :func:`worker_init_fn`.
        pin_memory: default: when CUDA is available. persistent_workers: default: ``num_workers > 0``.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(self, batch_size: int, train: Mapping | None = None, validation: Mapping | None = None,
                 test: Mapping | None = None, predict: Mapping | None = None, wrap: bool = False,
                 num_workers: int | None = None, shuffle_test_loader: bool = False, use_worker_init_fn: bool = False,
                 shuffle_val_dataloader: bool = False, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, drop_last: bool = False):
        super().__init__()
        if int(batch_size) <= 0:
            raise ValueError(f"DataModuleFromConfig: batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)
        default_workers = min(2 * self.batch_size, os.cpu_count() or 1)
        self.num_workers = int(num_workers) if num_workers is not None else default_workers
        if self.num_workers < 0:
            raise ValueError(f"DataModuleFromConfig: num_workers must be >= 0, got {num_workers}")
        self.wrap = bool(wrap)
        self.shuffle_test_loader = bool(shuffle_test_loader)
        self.shuffle_val_dataloader = bool(shuffle_val_dataloader)
        self.use_worker_init_fn = bool(use_worker_init_fn)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = self.num_workers > 0 if persistent_workers is None else bool(persistent_workers)
        self.drop_last = bool(drop_last)
        given = {"train": train, "validation": validation, "test": test, "predict": predict}
        self.dataset_configs = {split: cfg for split, cfg in given.items() if cfg is not None}
        for split, cfg in self.dataset_configs.items():
            if not isinstance(cfg, Mapping) or "target" not in cfg:
                raise ValueError(f"DataModuleFromConfig: data.params.{split} must be a mapping with a 'target' "
                                 f"key, got {cfg!r}")
        self.datasets: dict[str, Any] = {}
        # Only configured splits get a loader (so Lightning skips e.g. validation when there is none).
        if "train" in self.dataset_configs:
            self.train_dataloader = self._train_dataloader
        if "validation" in self.dataset_configs:
            self.val_dataloader = self._val_dataloader
        if "test" in self.dataset_configs:
            self.test_dataloader = self._test_dataloader
        if "predict" in self.dataset_configs:
            self.predict_dataloader = self._predict_dataloader

    # -- datasets -------------------------------------------------------------------------
    def dataset(self, split: str):
        """The dataset of ``split``, built on first use."""
        if split not in self.dataset_configs:
            raise KeyError(f"DataModuleFromConfig: no '{split}' dataset configured "
                           f"(configured: {sorted(self.dataset_configs)})")
        if split not in self.datasets:
            dataset = instantiate_from_config(self.dataset_configs[split], node=f"data.params.{split}")
            if self.wrap and not isinstance(dataset, IterableDataset):
                dataset = WrappedDataset(dataset)
            self.datasets[split] = dataset
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            if split in self.dataset_configs:
                self.dataset(split)

    # -- loaders --------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        iterable = isinstance(dataset, IterableDataset)
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False if iterable else shuffle,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=worker_init_fn if workers > 0 else None,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            drop_last=drop_last,
        )

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=self.drop_last)

    def _val_dataloader(self, shuffle: bool | None = None) -> DataLoader:
        return self._loader("validation", shuffle=self.shuffle_val_dataloader if shuffle is None else shuffle)

    def _test_dataloader(self, shuffle: bool | None = None) -> DataLoader:
        return self._loader("test", shuffle=self.shuffle_test_loader if shuffle is None else shuffle)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("predict", shuffle=shuffle)

    # -- reporting ------------------------------------------------------------------------
    def skipped_counts(self) -> dict[str, int]:
        """Unreadable samples skipped so far, per split (datasets that count them)."""
        counts = {}
        for split, dataset in self.datasets.items():
            inner = dataset.data if isinstance(dataset, WrappedDataset) else dataset
            if hasattr(inner, "num_skipped"):
                counts[split] = int(inner.num_skipped)
        return counts

    def teardown(self, stage: str | None = None) -> None:
        counts = {split: n for split, n in self.skipped_counts().items() if n}
        if counts:
            rank_zero_warn(f"DataModuleFromConfig: unreadable samples were skipped: {counts} "
                           "(set strict: true in a dataset's params to make them fatal)")
        elif self.datasets:
            rank_zero_info("DataModuleFromConfig: no unreadable samples were met")
