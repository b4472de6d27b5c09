"""Shared helpers for the benchmark scripts: timing, matmul peak, FLOP counting, naive-path patches."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm.precision import cpu_has_native_bf16, cpu_model

#: the repository's root folder (configs/, main.py)
REPO_ROOT = Path(__file__).resolve().parents[1]
#: the trainer's precision name for an autocast dtype (``None``: fp32, no autocast)
PRECISION_NAMES = {None: "32", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}


def add_threads_argument(parser) -> None:
    """``--threads N``: torch CPU threads; 0 (the default) keeps PyTorch's own choice."""
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (0 / None: leave PyTorch's default)."""
    if threads:
        torch.set_num_threads(threads)


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype``, or a no-op context for ``None`` (fp32)."""
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16-related instruction-set flags (``amx_bf16``, ``avx512_bf16``), as Linux reports them."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]


def describe_device(device: torch.device | str) -> str:
    """One line naming the hardware a table was measured on, and whether it runs bf16 natively: printed
    beside every benchmark table (CPU bf16 speed differs by ~50x between CPU kinds, ldm/precision.py)."""
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}), bf16 {'native' if bf16 else 'not native'}"
    flags = cpu_bf16_flags()
    isa = torch.backends.cpu.get_cpu_capability()
    if cpu_has_native_bf16():
        bf16 = f"bf16 native (oneDNN; {', '.join(flags) if flags else 'AVX-512, emulated bf16 dot products'})"
    else:
        bf16 = "bf16 NOT native (no AVX-512/AMX: bf16 rows run PyTorch's slow reference kernels)"
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads, ISA {isa}, {bf16}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, warmup: int = 1, repeats: int = 3, reduce=statistics.median) -> float:
    """Wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, reduced by
    ``reduce`` (median by default; ``min`` where noise from a shared machine only adds)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return reduce(times)


def interleaved_min(calls: dict, device: torch.device, repeats: int) -> dict:
    """Minimum seconds of each call over ``repeats`` rounds that run every call once, in turn, so that
    load from other processes on a shared machine hits all modes alike (noise only adds time)."""
    for fn in calls.values():  # warm-up: kernel selection, allocator
        fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for key, fn in calls.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Measured FLOP/s of a large square matmul: the machine's practical peak for ``dtype``."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, warmup=2, repeats=10, reduce=min)  # a peak: best of 10
    return 2 * n**3 / seconds


def count_flops(fn) -> int:
    """Model FLOPs of one call, counted by ``torch.utils.flop_counter`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _einsum_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """The original's attention: explicit ``q·kᵀ`` matrix, softmax, then ``·v`` (no fused kernel)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    weights = torch.einsum("...id,...jd->...ij", q, k) * scale
    return torch.einsum("...ij,...jd->...id", weights.softmax(dim=-1), v)


@contextlib.contextmanager
def naive_attention(*modules):
    """Route ``F.scaled_dot_product_attention`` of the given modules to an einsum implementation."""
    shim = types.SimpleNamespace(**{name: getattr(F, name) for name in dir(F) if not name.startswith("__")})
    shim.scaled_dot_product_attention = _einsum_attention
    saved = [(m, m.F) for m in modules]
    for m, _ in saved:
        m.F = shim
    try:
        yield
    finally:
        for m, original in saved:
            m.F = original


def set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Turn gradient checkpointing on or off in every block that supports it."""
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = enabled


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Hand memory freed by earlier work back to the OS (glibc keeps small freed blocks resident)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside ``with PeakMemory(device) as peak:`` in MiB (``peak.mib``).

    CUDA: ``torch.cuda.max_memory_allocated`` (weights included). CPU (Linux): how far the process's
    resident set grew above its size at entry (gradients, optimiser state, activations; weights built
    before entry are not counted). Freed heap memory is returned to the OS first, and the resident set is
    sampled every millisecond by a thread; ``None`` where ``/proc`` is missing.
    """

    def __init__(self, device: torch.device, interval: float = 1e-3):
        self.device, self.interval, self.mib = device, interval, None
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            _release_free_heap()
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.mib = (max(self._peak, _rss_bytes()) - self._base) / 2**20
        return False
