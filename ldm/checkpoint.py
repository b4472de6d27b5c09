"""Safe checkpoint reading and weight initialisation with a key report.

Loading never executes code from a file: ``.safetensors`` files are read with
``safetensors``; pickled ``.ckpt``/``.pt``/``.pth`` files go through
``torch.load(weights_only=True)`` with only the few non-tensor globals Lightning
checkpoints need allow-listed. A checkpoint crafted to run code on unpickling raises
:class:`UnsafeCheckpointError`.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint needs arbitrary code execution to load, and was refused."""


def _safe_globals() -> list:
    """Non-tensor objects that ordinary Lightning checkpoints pickle (hyper-parameters, versions)."""
    allowed: list = []
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode, ValueNode

        allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, ValueNode]
    except ImportError:  # pragma: no cover
        pass
    try:
        from lightning.fabric.utilities.data import AttributeDict

        allowed.append(AttributeDict)
    except ImportError:  # pragma: no cover
        pass
    import collections
    import typing

    allowed += [collections.defaultdict, collections.OrderedDict, typing.Any, dict, list, tuple, set]
    try:
        import pathlib

        allowed += [pathlib.PosixPath, pathlib.WindowsPath, pathlib.Path]
    except Exception:  # pragma: no cover
        pass
    return allowed


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load`` that refuses pickled code. Raises :class:`UnsafeCheckpointError` on such files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains objects that would run code when unpickled "
            f"({str(err).splitlines()[0]}). Only load checkpoints you trust; convert them to "
            f".safetensors, or pass trust_checkpoint=True (``--unsafe-load``) to load it anyway."
        ) from err


def load_state_dict(path: str | os.PathLike, *, map_location="cpu", trust_checkpoint: bool = False) -> dict:
    """Read a model state dict from ``.safetensors`` or a (Lightning) ``.ckpt``/``.pt``/``.pth`` file.

    Returns the ``state_dict`` entry of Lightning checkpoints, or the dict itself for bare weights.
    ``trust_checkpoint=True`` falls back to full unpickling (only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    if trust_checkpoint:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    else:
        obj = safe_torch_load(path, map_location=map_location)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)


@dataclass
class KeyReport:
    """What happened when weights were loaded into a module."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    loaded: int = 0

    def __str__(self) -> str:
        def block(title: str, keys: list[str]) -> str:
            if not keys:
                return f"  {title}: 0"
            shown = "\n".join(f"    {k}" for k in keys[:20])
            more = f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else ""
            return f"  {title}: {len(keys)}\n{shown}{more}"

        return "\n".join(
            [
                f"weights loaded: {self.loaded} tensors",
                block("missing keys (left at their initial values)", self.missing),
                block("unexpected keys (in the checkpoint, not in the model)", self.unexpected),
                block("ignored keys (dropped by ignore_keys)", self.ignored),
            ]
        )


def filter_keys(state_dict: Mapping, ignore_keys: Iterable[str] = ()) -> tuple[dict, list[str]]:
    """Drop every key that starts with one of ``ignore_keys``; return (kept, dropped)."""
    ignore_keys = tuple(ignore_keys or ())
    kept, dropped = {}, []
    for key, value in state_dict.items():
        if ignore_keys and key.startswith(ignore_keys):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def load_weights(
    module: torch.nn.Module,
    source: str | os.PathLike | Mapping,
    *,
    ignore_keys: Iterable[str] = (),
    strict: bool = False,
    trust_checkpoint: bool = False,
    verbose: bool = True,
) -> KeyReport:
    """Initialise ``module`` from a checkpoint path or state dict (weights only, no trainer state).

    Prints a report of missing / unexpected / ignored keys. With ``strict=True`` any missing or
    unexpected key is an error.
    """
    state_dict = source if isinstance(source, Mapping) else load_state_dict(source, trust_checkpoint=trust_checkpoint)
    state_dict, ignored = filter_keys(state_dict, ignore_keys)
    own = module.state_dict()
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ValueError("shape mismatch while loading weights:\n  " + "\n  ".join(mismatched))
    result = module.load_state_dict(state_dict, strict=False)
    report = KeyReport(
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
        ignored=ignored,
        loaded=len(state_dict) - len(result.unexpected_keys),
    )
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"strict loading failed for {type(module).__name__}:\n{report}")
    if verbose:
        origin = source if not isinstance(source, Mapping) else "state dict"
        print(f"[{type(module).__name__}] initialised from {origin}\n{report}")
    return report
