"""Latent cache: encode a dataset once with the frozen first stage, then train ``LatentDiffusion``
from the stored latents with no encoder in the step (LDM Sec. 3.2: ``z = E(x)`` is fixed once the
first stage is trained, so it can be computed ahead of time).

Per sample the cache keeps the first stage's latent *moments* (``latent_moments`` of
``docs/architecture.md``), so training still draws ``z = mean + std * eps`` every time it sees the
sample (the KL posterior sample of LDM Sec. 3.1 / Eq. (25)'s regulariser):

* KL (``AutoencoderKL``): posterior mean and std;
* VQ (``VQModelInterface``): the pre-quantisation latent, std zero (not stored);
* identity: the pixels, std zero (not stored);

together with the sample's conditioning inputs (``class_label``, ``caption``, ``mask``,
``LR_image``, ...: every key but the image).

Layout of a cache directory::

    manifest.json                     what, how and from which first stage (written last)
    latents-000000.safetensors ...    shards: ``latent_mean`` [N,C,h,w], ``latent_std`` (stochastic
                                      first stages only), ``source_index`` [N], ``flipped`` [N],
                                      ``cond.<name>`` tensors; strings and other JSON values in the
                                      shard metadata (``extras``: one dict per row)

Shards are safetensors (no pickle). The manifest records the first stage's config, the sha256 of its
state dict (:func:`state_dict_sha256`), the checkpoint file's sha256, the preprocessing (dataset
target/params, image size), the latent shape and the flip mode; :class:`LatentCacheDataset` refuses
a first stage whose hash differs (:class:`LatentCacheMismatchError`).

Horizontal flips: ``flip="both"`` stores every sample twice (as is, and mirrored; spatial
conditioning tensors are mirrored too, captions are not), so training keeps the random-flip
augmentation by picking an orientation per draw; ``flip="off"`` stores one orientation and the
augmentation is off.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

FORMAT_NAME = "ldm-latent-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "latents-{:06d}.safetensors"

MEAN_KEY = "latent_mean"
STD_KEY = "latent_std"
COND_PREFIX = "cond."
FLIP_MODES = ("off", "both")
# keys a first stage's state dict may hold that never affect encoding (the training loss: LPIPS, discriminator)
HASH_EXCLUDED_PREFIXES = ("loss.",)


class LatentCacheError(RuntimeError):
    """A latent cache is missing, incomplete or malformed."""


class LatentCacheMismatchError(LatentCacheError):
    """The cache was encoded by a different first stage than the one in use."""


# ----------------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------------
def state_dict_sha256(state: nn.Module | Mapping[str, torch.Tensor],
                      exclude_prefixes: Iterable[str] = HASH_EXCLUDED_PREFIXES) -> str:
    """sha256 over the sorted key names and, for each, the tensor's dtype, shape and raw bytes.

    ``loss.*`` keys (the autoencoder's training loss) are left out: they do not change ``E(x)``,
    and a first stage built for inference replaces that loss by an identity.
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    exclude = tuple(exclude_prefixes)
    digest = hashlib.sha256()
    for key in sorted(state):
        if exclude and key.startswith(exclude):
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(key.encode("utf-8"))
        digest.update(f"{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# consuming
# ----------------------------------------------------------------------------------------------
def has_cached_latents(batch: Mapping) -> bool:
    """Whether a batch carries cached latent moments instead of images."""
    return isinstance(batch, Mapping) and MEAN_KEY in batch


def cached_moments(batch: Mapping, n: int | None = None, device: str | torch.device | None = None):
    """``(mean, std)`` float tensors from a cached batch (first ``n`` rows), or None for an image batch."""
    if not has_cached_latents(batch):
        return None
    mean = batch[MEAN_KEY][:n].float()
    std = batch[STD_KEY][:n].float() if STD_KEY in batch else torch.zeros_like(mean)
    return (mean, std) if device is None else (mean.to(device), std.to(device))


def sample_cached_latent(batch: Mapping, n: int | None = None, device: str | torch.device | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The unscaled latent sample ``z = mean + std * eps`` of a cached batch (multiply by the model's
    ``scale_factor`` before diffusion). Raises KeyError for a batch without cached latents."""
    moments = cached_moments(batch, n, device)
    if moments is None:
        raise KeyError(f"batch has no {MEAN_KEY!r}: not a latent-cache batch (keys: {sorted(batch)})")
    mean, std = moments
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise
