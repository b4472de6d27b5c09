"""Skip, count and report unreadable samples instead of crashing a long run.

A map-style dataset built on :class:`SkippingDataset` implements ``load(index)``. When that raises
one of :data:`~ldm.data.image_ops.UNREADABLE_ERRORS`, ``__getitem__`` warns
(:class:`CorruptImageWarning`), counts the file and returns the next readable sample instead
(``index + 1``, ``index + 2``, ... wrapping around). With ``strict=True`` it raises
:class:`CorruptImageError` at once.

The count lives in shared memory (:class:`SkipCounter`), so skips that happen inside DataLoader
worker processes are visible on the dataset object in the main process:
``dataset.num_skipped`` and ``dataset.skip_report()``.
"""
from __future__ import annotations

import multiprocessing
import warnings
from multiprocessing import context as mp_context
from typing import Any

from torch.utils.data import Dataset, get_worker_info

from ldm.data.image_ops import UNREADABLE_ERRORS


class CorruptImageWarning(RuntimeWarning):
    """An unreadable sample was skipped."""


class CorruptImageError(RuntimeError):
    """An unreadable sample was met in strict mode (or no readable sample was left)."""


class SkipCounter:
    """A process-shared counter of skipped samples, plus this process's list of skipped names.

    The count is a lock-free shared array with one slot per DataLoader worker id (and one for the
    main process); each process only increments its own slot, so no lock is needed and the
    counter works with both the fork and the spawn start methods. It travels to DataLoader
    workers (fork: inherited; spawn: sent while the worker starts). Pickled in any other situation
    (e.g. saved with a checkpoint, ``ddp_spawn``) it becomes a fresh counter holding the current count.
    """

    SLOTS = 64

    def __init__(self, start: int = 0):
        self._slots = multiprocessing.RawArray("q", self.SLOTS + 1)
        self._slots[self.SLOTS] = int(start)
        self.names: list[str] = []

    @property
    def value(self) -> int:
        return int(sum(self._slots))

    def add(self, name: str) -> int:
        info = get_worker_info()
        slot = info.id % self.SLOTS if info is not None else self.SLOTS
        self._slots[slot] += 1
        if name not in self.names:
            self.names.append(name)
        return self.value

    def __reduce__(self):
        if mp_context.get_spawning_popen() is not None:
            return (_rebuild_counter, (self._slots, list(self.names)))
        return (_fresh_counter, (self.value, list(self.names)))


def _rebuild_counter(slots, names):
    counter = SkipCounter.__new__(SkipCounter)
    counter._slots = slots
    counter.names = names
    return counter


def _fresh_counter(count, names):
    counter = SkipCounter(count)
    counter.names = names
    return counter


class SkipReporting:
    """``num_skipped`` / ``skipped_files`` / ``skip_report()`` over a ``self._skips`` :class:`SkipCounter`."""

    _skips: SkipCounter

    @property
    def num_skipped(self) -> int:
        """How many times an unreadable sample was skipped (summed over DataLoader workers)."""
        return self._skips.value

    @property
    def skipped_files(self) -> list[str]:
        """Names of the unreadable samples this process has met (workers keep their own lists)."""
        return list(self._skips.names)

    def skip_report(self) -> str:
        names = self.skipped_files
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        detail = f" ({shown})" if names else ""
        return f"{type(self).__name__}: {self.num_skipped} unreadable sample(s) skipped{detail}"


class SkippingDataset(SkipReporting, Dataset):
    """Base class: subclasses implement ``__len__``, ``load(index) -> dict`` and ``name_of(index)``."""

    def __init__(self, strict: bool = False, max_skips_per_item: int = 50):
        self.strict = bool(strict)
        self.max_skips_per_item = int(max_skips_per_item)
        self._skips = SkipCounter()

    # -- to implement ---------------------------------------------------------------------
    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        return f"sample {index}"

    # -- shared behaviour -----------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, Any]:
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {length}")
        index %= length
        attempts = min(length, self.max_skips_per_item + 1)
        for offset in range(attempts):
            current = (index + offset) % length
            try:
                return self.load(current)
            except UNREADABLE_ERRORS as err:
                name = self.name_of(current)
                if self.strict:
                    raise CorruptImageError(f"{type(self).__name__}: cannot read {name}: {err!r} "
                                            "(strict=True; set strict: false to skip unreadable files)") from err
                count = self._skips.add(name)
                warnings.warn(f"{type(self).__name__}: skipping unreadable {name}: {err!r} "
                              f"({count} skipped so far)", CorruptImageWarning, stacklevel=2)
        raise CorruptImageError(f"{type(self).__name__}: {attempts} consecutive samples from index {index} "
                                "are unreadable; check the dataset files")
