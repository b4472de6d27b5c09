"""Where the quick start runs: how many torch threads to use, and a description of the CPU for the report.

On a 2-core CPU that other processes keep busy, PyTorch's default of one intra-op thread per core is
catastrophically slow (docs/quality.md, "CPU threads"), so the quick start uses the cores that are idle
*now* (:func:`pick_threads`). The thread count changes only the speed and the order of floating-point
sums, not the number of training steps: the stages are step budgets.
"""
from __future__ import annotations

import os
import time

from ldm.precision import cpu_has_native_bf16, cpu_model


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from ``/proc/stat``, or None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def busy_cores(window: float = 1.0) -> float:
    """How many cores other processes keep busy *now*: the non-idle share of all CPUs over ``window``
    seconds (``/proc/stat``). Not the 1-minute load average: right after ``scripts/setup_env.sh`` that
    still counts the finished pip install and made the quick start run on one core of two."""
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(window)
    after = _cpu_times()
    idle, total = after[0] - before[0], after[1] - before[1]
    return cores * (1 - idle / total) if total > 0 else 0.0


def pick_threads(requested: int, busy: float | None = None) -> int:
    """``requested`` if > 0, else the cores not busy now (:func:`busy_cores`), at least 1."""
    cores = os.cpu_count() or 1
    if requested > 0:
        return requested
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


def machine_info(threads: int, busy: float | None = None) -> dict:
    """What the report states about the machine: CPU model and cores, torch threads and version, bf16."""
    import torch

    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count() or 1, "torch_threads": threads,
            "torch_version": torch.__version__, "native_cpu_bf16": cpu_has_native_bf16()}
    if busy is not None:
        info["busy_cores_at_start"] = round(busy, 2)
    return info
