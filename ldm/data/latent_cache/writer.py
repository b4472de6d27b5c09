"""Writing a latent cache: entries -> safetensors shards, then ``manifest.json`` last."""
from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.data.latent_cache.format import (
    COND_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEAN_KEY,
    SHARD_PATTERN,
    STD_KEY,
    LatentCacheError,
)


def _json_value(value: Any) -> Any:
    """A JSON-able version of a non-tensor sample value, or raise TypeError."""
    if isinstance(value, np.generic):
        return value.item()
    json.dumps(value)
    return value


def _as_tensor(value: Any) -> torch.Tensor | None:
    """Tensors, arrays and numbers become tensors; anything else (strings, dicts, None) stays an extra."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (bool, np.bool_)):
        return torch.tensor(bool(value))
    if isinstance(value, (int, np.integer)):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, (float, np.floating)):
        return torch.tensor(float(value), dtype=torch.float64)
    return None


def _mirror(value: torch.Tensor) -> torch.Tensor:
    """Horizontally flip a spatial (``…×H×W``) conditioning tensor; scalars and vectors are kept."""
    return value.flip(-1) if value.ndim >= 2 else value


class LatentCacheWriter:
    """Accumulate encoded entries and write them as safetensors shards of ``shard_size`` rows.

    ``add(mean, std, conditioning, source_index, flipped)`` takes one entry; :meth:`finish` writes
    the last shard and then ``manifest.json`` (so an interrupted run leaves no loadable cache).
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 1000, dtype: torch.dtype = torch.float32,
                 overwrite: bool = False):
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"latent dtype must be float32, float16 or bfloat16, got {dtype}")
        self.out_dir = Path(out_dir)
        if (self.out_dir / MANIFEST_NAME).exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} already holds a latent cache; pass overwrite=True (--overwrite) "
                                  "to replace it")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in [self.out_dir / MANIFEST_NAME, *self.out_dir.glob("latents-*.safetensors")]:
            old.unlink(missing_ok=True)
        self.shard_size = int(shard_size)
        self.dtype = dtype
        self.shards: list[dict[str, Any]] = []
        self.num_entries = 0
        self.latent_shape: tuple[int, ...] | None = None
        self.stochastic = False
        self.tensor_specs: dict[str, dict[str, Any]] = {}
        self.extra_keys: set[str] = set()
        self._rows: list[dict[str, Any]] = []

    def add(self, mean: torch.Tensor, std: torch.Tensor, conditioning: Mapping[str, Any], source_index: int,
            flipped: bool = False) -> None:
        if self.latent_shape is None:
            self.latent_shape = tuple(mean.shape)
        if tuple(mean.shape) != self.latent_shape or tuple(std.shape) != self.latent_shape:
            raise ValueError(f"latent shape {tuple(mean.shape)} / std {tuple(std.shape)} differs from the cache's "
                             f"{self.latent_shape}: every image must have the same size (set the dataset's size/crop)")
        tensors: dict[str, torch.Tensor] = {}
        extras: dict[str, Any] = {}
        for name, value in conditioning.items():
            tensor = _as_tensor(value)
            if tensor is None:
                try:
                    extras[name] = _json_value(value)
                except TypeError as err:
                    raise TypeError(f"sample key {name!r}: cannot store a {type(value).__name__} in the latent cache "
                                    "(tensors, numbers, strings and JSON values only)") from err
                self.extra_keys.add(name)
                continue
            tensor = _mirror(tensor) if flipped else tensor
            spec = {"dtype": str(tensor.dtype).replace("torch.", ""), "shape": list(tensor.shape)}
            known = self.tensor_specs.setdefault(name, spec)
            if known != spec:
                raise ValueError(f"sample key {name!r}: {spec} differs from earlier samples' {known}; "
                                 "conditioning tensors must have one shape and dtype")
            tensors[name] = tensor.contiguous()
        self.stochastic = self.stochastic or bool((std != 0).any())
        self._rows.append({"mean": mean.detach().cpu().to(self.dtype), "std": std.detach().cpu().to(self.dtype),
                           "tensors": tensors, "extras": extras, "index": int(source_index), "flipped": bool(flipped)})
        if len(self._rows) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        from safetensors.torch import save_file

        rows, self._rows = self._rows, []
        missing = [(name, i) for i, row in enumerate(rows) for name in self.tensor_specs if name not in row["tensors"]]
        if missing:
            raise ValueError(f"sample key {missing[0][0]!r} is missing from some samples; conditioning keys must be "
                             "present in every sample")
        payload = {
            MEAN_KEY: torch.stack([r["mean"] for r in rows]),
            "source_index": torch.tensor([r["index"] for r in rows], dtype=torch.int64),
            "flipped": torch.tensor([r["flipped"] for r in rows], dtype=torch.bool),
        }
        std = torch.stack([r["std"] for r in rows])
        if bool((std != 0).any()):
            payload[STD_KEY] = std
        for name in self.tensor_specs:
            payload[COND_PREFIX + name] = torch.stack([r["tensors"][name] for r in rows])
        name = SHARD_PATTERN.format(len(self.shards))
        save_file(payload, str(self.out_dir / name),
                  metadata={"format": FORMAT_NAME, "extras": json.dumps([r["extras"] for r in rows])})
        self.shards.append({"file": name, "count": len(rows)})
        self.num_entries += len(rows)

    def finish(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Write the last shard and the manifest (``info`` adds ``first_stage``, ``source``, ``flip`` ...)."""
        self._flush()
        if self.num_entries == 0:
            raise LatentCacheError("no samples were encoded: the dataset split is empty")
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **dict(info),
            "latent": {"shape": list(self.latent_shape), "dtype": str(self.dtype).replace("torch.", ""),
                       "stochastic": self.stochastic},
            "num_entries": self.num_entries,
            "keys": {"tensors": self.tensor_specs, "extras": sorted(self.extra_keys)},
            "shards": self.shards,
        }
        manifest.setdefault("num_samples", self.num_entries)
        tmp = self.out_dir / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.out_dir / MANIFEST_NAME)
        return manifest
