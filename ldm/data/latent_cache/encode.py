"""The encoding driver: run a dataset through the frozen first stage into a :class:`LatentCacheWriter`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.data.latent_cache.fingerprint import state_dict_sha256
from ldm.data.latent_cache.format import FLIP_MODES
from ldm.data.latent_cache.writer import LatentCacheWriter


@torch.no_grad()
def encode_dataset(first_stage: nn.Module, dataset: Any, out_dir: str | os.PathLike, *, image_key: str = "image",
                   flip: str = "off", batch_size: int = 16, shard_size: int = 1000, num_workers: int = 0,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, limit: int | None = None,
                   info: Mapping[str, Any] | None = None, overwrite: bool = False,
                   progress: bool = False) -> dict[str, Any]:
    """Encode ``dataset`` (dict samples, ``image_key`` a ``C×H×W`` tensor in [-1, 1]) with the frozen
    ``first_stage`` (eval mode, no gradients) into a cache at ``out_dir``; returns the manifest.

    The first stage's ``latent_moments`` gives ``(mean, std)`` per image; ``flip="both"`` also encodes
    the mirrored image. ``info`` is merged into the manifest (source config, checkpoint, ...); the
    first stage's state-dict hash and class are always recorded.
    """
    from torch.utils.data import DataLoader, IterableDataset, Subset

    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    if not callable(getattr(first_stage, "latent_moments", None)):
        raise TypeError(f"{type(first_stage).__name__} has no latent_moments(x) -> (mean, std); "
                        "use AutoencoderKL, VQModelInterface or IdentityFirstStage")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    first_stage = first_stage.to(device).eval()
    if isinstance(dataset, IterableDataset):  # streams (webdataset shards): number samples as they come
        total, source = None, dataset
        if int(num_workers) > 1:
            raise ValueError("an iterable dataset is encoded with num_workers <= 1 (its order defines the indices)")
    else:
        total = len(dataset)
        source = Subset(dataset, range(total if limit is None else min(int(limit), total)))
    loader = DataLoader(source, batch_size=int(batch_size), shuffle=False, num_workers=int(num_workers),
                        collate_fn=list)
    writer = LatentCacheWriter(out_dir, shard_size=shard_size, dtype=dtype, overwrite=overwrite)
    image_size = None
    position = 0
    for samples in loader:
        if limit is not None:
            samples = samples[:max(0, int(limit) - position)]
            if not samples:
                break
        images = []
        for offset, sample in enumerate(samples):
            if not isinstance(sample, Mapping) or image_key not in sample:
                raise KeyError(f"dataset sample {position + offset} has no {image_key!r} entry "
                               f"(keys: {sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__})")
            image = torch.as_tensor(sample[image_key])
            if image.ndim != 3:
                raise ValueError(f"sample {image_key!r} must be C×H×W, got shape {tuple(image.shape)}")
            images.append(image.float())
        x = torch.stack(images).to(device)
        image_size = image_size or list(x.shape[-2:])
        if flip == "both":
            x = torch.cat([x, x.flip(-1)])
        mean, std = first_stage.latent_moments(x)
        mean, std = mean.float().cpu(), std.float().cpu()
        for offset, sample in enumerate(samples):
            conditioning = {k: v for k, v in sample.items() if k != image_key and not k.startswith("__")}
            if "__key__" in sample:  # a webdataset sample's key
                conditioning["source_key"] = sample["__key__"]
            source_index = position + offset
            writer.add(mean[offset], std[offset], conditioning, source_index, flipped=False)
            if flip == "both":
                mirrored = offset + len(samples)
                writer.add(mean[mirrored], std[mirrored], conditioning, source_index, flipped=True)
        position += len(samples)
        if progress:
            print(f"\rencoded {position}/{len(source) if total is not None else '?'}", end="", flush=True)
    if progress:
        print()
    record = dict(info or {})
    first = dict(record.get("first_stage") or {})
    first.setdefault("class", f"{type(first_stage).__module__}.{type(first_stage).__qualname__}")
    first["state_dict_sha256"] = state_dict_sha256(first_stage)
    record["first_stage"] = first
    source = dict(record.get("source") or {})
    source.update({"image_key": image_key, "image_size": image_size, "num_source_samples": total})
    record["source"] = source
    record.update({"flip": flip, "num_samples": position})
    return writer.finish(record)
