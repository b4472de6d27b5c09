"""Reading a latent cache: the manifest check and the map-style :class:`LatentCacheDataset`."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ldm.data.latent_cache.fingerprint import state_dict_sha256
from ldm.data.latent_cache.format import (
    COND_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEAN_KEY,
    STD_KEY,
    LatentCacheError,
    LatentCacheMismatchError,
)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    root = Path(path)
    manifest_path = root / MANIFEST_NAME if root.is_dir() or not root.suffix else root
    if not manifest_path.is_file():
        raise LatentCacheError(f"no latent cache at {root}: {manifest_path.name} is missing (an unfinished or "
                               "absent cache); build one with python -m ldm.cli.cache_latents")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_NAME:
        raise LatentCacheError(f"{manifest_path} is not a latent-cache manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise LatentCacheError(f"{manifest_path}: cache format version {manifest.get('version')} is not supported "
                               f"(this code reads version {FORMAT_VERSION}); rebuild the cache")
    return manifest


def _mismatch_message(root: Path, manifest: Mapping, given: str) -> str:
    cached = manifest["first_stage"]["state_dict_sha256"]
    command = manifest.get("command")
    rebuild = _rebuild_command(command) if isinstance(command, list) else "python -m ldm.cli.cache_latents --config ..."
    return (f"latent cache {root} was encoded by a different first stage (cache manifest first-stage sha256 "
            f"{cached}, this model's {given}): its latents do not belong to this model's latent space. Rebuild the "
            f"cache with this model's first stage: {rebuild} --ckpt <this model's first-stage checkpoint> --overwrite")


def _rebuild_command(command: list) -> str:
    """The cache's own command without the ``--ckpt`` (that first stage is the wrong one) and ``--overwrite``."""
    kept, skip = [], False
    for item in map(str, command):
        if skip:
            skip = False
            continue
        if item == "--ckpt":
            skip = True
            continue
        if item.startswith("--ckpt=") or item == "--overwrite":
            continue
        kept.append(item)
    return " ".join(kept)


class LatentCacheDataset(Dataset):
    """Map-style dataset over a latent cache.

    Items are dicts with ``latent_mean`` and ``latent_std`` (float ``C×h×w``, unscaled), ``flipped``,
    ``source_index`` and the stored conditioning inputs under their original names (0-d integer,
    float and bool tensors come back as Python numbers, like the source dataset gave them). A
    consumer draws ``z = scale_factor * (latent_mean + latent_std * eps)`` (:func:`sample_cached_latent`).

    Args:
        path: the cache directory.
        expected_first_stage_hash: the :func:`state_dict_sha256` of the first stage that will decode
            these latents; a different one raises :class:`LatentCacheMismatchError`. (Or call
            :meth:`verify_first_stage` with the module.)
        flip: ``"random"`` (default for caches built with ``--flip both``): one item per source sample,
            each draw picks an orientation with probability 1/2 (random horizontal-flip augmentation);
            ``"all"``: every stored entry (both orientations) is an item; ``"off"``: unflipped only.
        keys: conditioning keys to return (default: all stored).
    """

    def __init__(self, path: str | os.PathLike, expected_first_stage_hash: str | None = None, flip: str | None = None,
                 keys: Iterable[str] | None = None):
        self.root = Path(path)
        self.manifest = read_manifest(self.root)
        if expected_first_stage_hash is not None and expected_first_stage_hash != self.first_stage_hash:
            raise LatentCacheMismatchError(_mismatch_message(self.root, self.manifest, expected_first_stage_hash))
        stored_flip = self.manifest.get("flip", "off")
        if flip is None:
            flip = "random" if stored_flip == "both" else "off"
        if flip not in ("random", "all", "off"):
            raise ValueError(f"flip must be 'random', 'all' or 'off', got {flip!r}")
        if flip != "off" and stored_flip != "both":
            raise ValueError(f"flip={flip!r} needs a cache built with --flip both; {self.root} was built with "
                             f"flip={stored_flip!r} (flip augmentation is off for it). Rebuild with --flip both.")
        self.flip = flip
        stored = self.manifest["keys"]
        available = set(stored["tensors"]) | set(stored["extras"])
        self.keys = sorted(available) if keys is None else list(keys)
        unknown = [k for k in self.keys if k not in available]
        if unknown:
            raise KeyError(f"latent cache {self.root} holds no conditioning key(s) {unknown}; "
                           f"stored: {sorted(available)}")
        self._load_index()
        self._handles: dict[int, Any] = {}

    # -- index -----------------------------------------------------------------------------------
    def _load_index(self) -> None:
        from safetensors import safe_open

        self._extras: list[list[dict]] = []
        self._has_std: list[bool] = []
        locations: dict[tuple[int, bool], tuple[int, int]] = {}
        for shard_id, shard in enumerate(self.manifest["shards"]):
            file = self.root / shard["file"]
            if not file.is_file():
                raise LatentCacheError(f"latent cache {self.root}: shard {shard['file']} is missing; rebuild the cache")
            with safe_open(str(file), framework="pt") as handle:
                indices = handle.get_tensor("source_index").tolist()
                flipped = handle.get_tensor("flipped").tolist()
                self._has_std.append(STD_KEY in handle.keys())
                self._extras.append(json.loads((handle.metadata() or {}).get("extras", "[]")))
            if len(indices) != shard["count"]:
                raise LatentCacheError(f"latent cache {self.root}: shard {shard['file']} holds {len(indices)} rows, "
                                       f"the manifest says {shard['count']}; rebuild the cache")
            for row, (index, is_flipped) in enumerate(zip(indices, flipped)):
                locations[(index, bool(is_flipped))] = (shard_id, row)
        sources = sorted({index for index, _ in locations})
        if self.flip == "all":
            self._items = [[locations[key]] for key in sorted(locations)]
        elif self.flip == "off":
            self._items = [[locations[(i, False)]] for i in sources]
        else:
            self._items = [[locations[(i, False)], locations[(i, True)]] for i in sources]

    # -- checks ----------------------------------------------------------------------------------
    @property
    def first_stage_hash(self) -> str:
        return self.manifest["first_stage"]["state_dict_sha256"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent"]["shape"])

    def verify_first_stage(self, first_stage: nn.Module | str) -> None:
        """Raise :class:`LatentCacheMismatchError` unless ``first_stage`` (a module or a hash) is the
        first stage that encoded this cache."""
        given = first_stage if isinstance(first_stage, str) else state_dict_sha256(first_stage)
        if given != self.first_stage_hash:
            raise LatentCacheMismatchError(_mismatch_message(self.root, self.manifest, given))

    # -- items -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles are per process (DataLoader workers reopen)
        return state

    def _handle(self, shard_id: int):
        handle = self._handles.get(shard_id)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(self.root / self.manifest["shards"][shard_id]["file"]), framework="pt")
            self._handles[shard_id] = handle
        return handle

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a latent cache of {len(self)} items")
        choices = self._items[index]
        shard_id, row = choices[0] if len(choices) == 1 else choices[random.random() < 0.5]
        handle = self._handle(shard_id)
        mean = handle.get_slice(MEAN_KEY)[row:row + 1][0].float()
        std = handle.get_slice(STD_KEY)[row:row + 1][0].float() if self._has_std[shard_id] else torch.zeros_like(mean)
        extras = self._extras[shard_id][row]
        item: dict[str, Any] = {MEAN_KEY: mean, STD_KEY: std,
                                "flipped": bool(handle.get_slice("flipped")[row:row + 1][0]),
                                "source_index": int(handle.get_slice("source_index")[row:row + 1][0])}
        for key in self.keys:
            if key in extras:
                item[key] = extras[key]
                continue
            value = handle.get_slice(COND_PREFIX + key)[row:row + 1][0]
            item[key] = value.item() if value.ndim == 0 else value
        return item
