"""Checkpoint IO that never leaves a half-written file and never runs code while loading.

Saving writes the whole checkpoint to a temporary file in the target's directory, flushes it to
disk, then ``os.replace``-s it over the target (atomic on POSIX and Windows). A crash or a full
disk mid-write leaves the previous checkpoint untouched; the temporary file it leaves is removed
when the run starts or resumes (:func:`remove_stale_temporaries`). The file mode follows the umask
(0644 under umask 022), like the configs next to it.

Loading goes through :func:`ldm.checkpoint.safe_torch_load` (``torch.load(weights_only=True)``
with the few globals Lightning checkpoints need), so resuming with ``-r`` refuses a checkpoint
crafted to execute code. ``trust_checkpoint=True`` (``--unsafe-load``) allows full unpickling.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files a killed save left in ``directory`` (and below).

    Called when a run starts or resumes: run directories are never shared between runs (see
    :func:`ldm.cli.logdir.reserve_run_directory`), so no other process is writing them.
    """
    removed = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for path in root.rglob(f".*{TEMP_SUFFIX}"):
        if path.is_file() and path.name.count(".") >= 3:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary sibling, fsync, then rename over ``path``."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a checkpoint gets the mode of any file the user writes
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.remove(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable where the platform allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Pass as ``Trainer(plugins=[AtomicCheckpointIO()])``."""

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if not _is_local(path):  # remote file systems: Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if not _is_local(path):
            return super().load_checkpoint(path, weights_only=not self.trust_checkpoint)
        location = "cpu" if map_location is None else map_location
        if self.trust_checkpoint:
            return torch.load(path, map_location=location, weights_only=False)
        from ldm.checkpoint import safe_torch_load

        return safe_torch_load(path, map_location=location)
