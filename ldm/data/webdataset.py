"""Streaming webdataset shards (``.tar`` files of ``<key>.jpg|png`` + ``<key>.txt|cls|json|*.npy``).

``WebImageDataset`` is an ``IterableDataset`` built on the ``webdataset`` package. Shards are
split first across distributed ranks (``wds.split_by_node``) and then across DataLoader workers
(``wds.split_by_worker``), so with ``resampled=False`` every sample is seen exactly once per
epoch over all ranks and workers - give at least ``world_size × num_workers`` shards, or some
workers idle. Unequal shard sizes give ranks unequal sample counts; for DDP either use
``resampled=True`` with ``epoch_length`` (each rank then draws the same number of samples) or
shards of equal size.

Samples are dicts like the map-style datasets': ``image`` float ``3×H×W`` in [-1, 1], ``caption``
(from ``.txt``, or a ``caption``/``text`` field of ``.json``), ``class_label`` (``.cls``),
``json`` (the metadata dict), any ``<name>.npy`` entry as tensor ``name``, and ``__key__``.
Undecodable samples are skipped, counted (``num_skipped``) and warned about; ``strict=True``
raises instead.

``write_webdataset(samples, pattern)`` writes such shards (tests, latent caches).
"""
from __future__ import annotations

import glob
import io
import json
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ldm.data.image_files import WEBDATASET_IMAGE_KEYS
from ldm.data.image_ops import UNREADABLE_ERRORS, ImagePreprocessor, decode_image, to_tensor
from ldm.data.robust import CorruptImageError, CorruptImageWarning, SkipCounter, SkipReporting


def expand_urls(urls: str | Sequence[str]) -> list[str] | str:
    """A directory -> its ``*.tar`` files; a glob -> its matches; brace patterns are left to webdataset."""
    if isinstance(urls, (list, tuple)):
        return [os.fspath(u) for u in urls]
    urls = os.fspath(urls)
    if os.path.isdir(urls):
        found = sorted(glob.glob(os.path.join(urls, "*.tar")))
        if not found:
            raise FileNotFoundError(f"no .tar shards in {os.path.abspath(urls)}")
        return found
    if any(ch in urls for ch in "*?[") and "{" not in urls:
        found = sorted(glob.glob(urls))
        if not found:
            raise FileNotFoundError(f"no shards match {urls}")
        return found
    return urls


class WebImageDataset(SkipReporting, IterableDataset):
    """Stream dict samples from webdataset shards.

    Args:
        urls: a brace pattern (``"shards/train-{000000..000009}.tar"``), a list of paths/URLs, a
            directory of ``.tar`` files, or a glob. ``root``: the same (the name the other datasets use).
        size, random_crop, flip_p, interpolation, crop_size: as for image folders.
        shuffle_buffer: samples kept in the shuffle buffer (0: no sample shuffling).
        shardshuffle: shuffle the shard order each epoch (seeded by ``seed`` and the epoch).
        resampled: draw shards with replacement forever; pair with ``epoch_length``.
        epoch_length: samples per epoch on each rank (split over its workers); also ``len()``.
        strict: raise on an undecodable sample instead of skipping it.
    """

    def __init__(self, urls: str | Sequence[str] | None = None, size: int | None = None, random_crop: bool = False,
                 flip_p: float = 0.0, interpolation: str = "bicubic", crop_size: int | None = None,
                 shuffle_buffer: int = 0, shardshuffle: bool = False, resampled: bool = False,
                 epoch_length: int | None = None, seed: int = 0, strict: bool = False,
                 caption_key: str = "txt", class_key: str = "cls", root: str | None = None):
        if (urls is None) == (root is None):
            raise ValueError("WebImageDataset: give exactly one of `urls` and `root` (its alias: a folder of .tar "
                             "shards, a glob or a brace pattern)")
        self.urls = expand_urls(urls if root is None else root)
        self.preprocess = ImagePreprocessor(size=size, random_crop=random_crop, flip_p=flip_p,
                                            interpolation=interpolation, crop_size=crop_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.shardshuffle = bool(shardshuffle)
        self.resampled = bool(resampled)
        self.epoch_length = None if epoch_length is None else int(epoch_length)
        self.seed = int(seed)
        self.strict = bool(strict)
        self.caption_key, self.class_key = caption_key, class_key
        self.epoch = 0
        self._iterations = 0  # new shuffle order on every pass, also inside persistent workers
        self._skips = SkipCounter()


    def set_epoch(self, epoch: int) -> None:
        """Re-seed shard/sample shuffling for a new epoch (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("WebImageDataset has no length unless epoch_length is set")
        return self.epoch_length

    # -- pipeline -------------------------------------------------------------------------
    def _skip(self, name: str, err: BaseException) -> None:
        if self.strict:
            raise CorruptImageError(f"{type(self).__name__}: cannot decode {name}: {err!r} (strict=True)") from err
        count = self._skips.add(name)
        warnings.warn(f"{type(self).__name__}: skipping undecodable {name}: {err!r} ({count} skipped so far)",
                      CorruptImageWarning, stacklevel=2)

    def _handler(self, err: BaseException) -> bool:
        """webdataset error handler for unreadable shards / tar members: skip (count) or raise."""
        self._skip("shard data", err)
        return True

    def _pipeline(self, seed: int):
        import webdataset as wds

        shardshuffle = 100 if (self.shardshuffle and not self.resampled) else False
        return wds.WebDataset(
            self.urls,
            resampled=self.resampled,
            shardshuffle=shardshuffle,
            nodesplitter=None if self.resampled else wds.split_by_node,
            workersplitter=None if self.resampled else wds.split_by_worker,
            handler=self._handler,
            empty_check=False,
            seed=seed,
        )

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        name = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
        image_key = next((k for k in WEBDATASET_IMAGE_KEYS if k in raw), None)
        if image_key is None:
            raise ValueError(f"sample {name} has no image entry (looked for {WEBDATASET_IMAGE_KEYS}; "
                             f"has {sorted(raw)})")
        sample: dict[str, Any] = {"image": to_tensor(self.preprocess(decode_image(raw[image_key]))),
                                  "__key__": raw.get("__key__")}
        meta = json.loads(raw["json"]) if "json" in raw else None
        if meta is not None:
            sample["json"] = meta
        if self.caption_key in raw:
            sample["caption"] = raw[self.caption_key].decode("utf-8").strip()
        elif isinstance(meta, dict) and any(k in meta for k in ("caption", "text")):
            sample["caption"] = str(meta.get("caption", meta.get("text")))
        if self.class_key in raw:
            sample["class_label"] = int(raw[self.class_key].decode("utf-8").strip())
        elif isinstance(meta, dict) and "class_label" in meta:
            sample["class_label"] = int(meta["class_label"])
        for key, value in raw.items():
            if key.endswith(".npy") or key == "npy":
                sample[key[:-4] or "npy"] = torch.from_numpy(np.load(io.BytesIO(value), allow_pickle=False))
        return sample

    def _quota(self) -> int | None:
        """Samples this worker yields per epoch when ``epoch_length`` is set."""
        if self.epoch_length is None:
            return None
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        per_worker = self.epoch_length // workers
        return per_worker + (1 if worker < self.epoch_length % workers else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        self._iterations += 1
        seed = self.seed + 1_000_003 * self.epoch + self._iterations
        stream: Iterable[dict[str, Any]] = iter(self._pipeline(seed))
        if self.shuffle_buffer > 0:
            info = get_worker_info()
            rng = random.Random(seed * 997 + (info.id if info else 0))
            stream = wds.filters.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(stream)
        quota = self._quota()
        produced = 0
        for raw in stream:
            if quota is not None and produced >= quota:
                return
            try:
                sample = self.decode(raw)
            except UNREADABLE_ERRORS + (KeyError, UnicodeDecodeError, json.JSONDecodeError) as err:
                self._skip(f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}", err)
                continue
            produced += 1
            yield sample


# ---------------------------------------------------------------------------------------------
# writing


def _image_bytes(image: Any, image_format: str) -> bytes:
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)
        array = ((np.clip(array, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(image_format, image_format.upper()))
    return buffer.getvalue()


def _npy_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_sample(sample: dict[str, Any], key: str, image_format: str = "png") -> dict[str, Any]:
    """A dict sample (``image`` tensor in [-1, 1] / PIL / uint8 array, ``caption``, ``class_label``, ...)
    -> a webdataset record: ``image`` -> ``.png``/``.jpg``, ``caption`` -> ``.txt``, ``class_label`` -> ``.cls``,
    other tensors/arrays -> ``<name>.npy``, remaining JSON-able values -> ``.json``."""
    if "." in key:
        raise ValueError(f"webdataset keys must not contain '.', got {key!r}")
    record: dict[str, Any] = {"__key__": key}
    meta: dict[str, Any] = {}
    for name, value in sample.items():
        if name == "image":
            record[image_format] = _image_bytes(value, image_format)
        elif name == "caption":
            record["txt"] = str(value).encode("utf-8")
        elif name == "class_label":
            record["cls"] = str(int(value)).encode("utf-8")
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            record[f"{name}.npy"] = _npy_bytes(value)
        elif not name.startswith("__"):
            meta[name] = value
    if meta:
        record["json"] = json.dumps(meta).encode("utf-8")
    return record


def write_webdataset(samples: Iterable[dict[str, Any]], pattern: str, maxcount: int = 1000,
                     image_format: str = "png") -> list[str]:
    """Write dict samples into shards named by ``pattern`` (``"out/shard-%06d.tar"``); returns the paths.

    Records are pre-encoded by :func:`encode_sample` (``image_format`` ``png`` is lossless).
    """
    import webdataset as wds

    if "%" not in pattern:
        raise ValueError(f"pattern needs a %-format shard number, e.g. 'out/shard-%06d.tar'; got {pattern!r}")
    os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, encoder=False) as writer:
        for index, sample in enumerate(samples):
            writer.write(encode_sample(sample, sample.get("__key__") or f"{index:09d}", image_format))
            if not written or written[-1] != writer.fname:
                written.append(writer.fname)
    return written

