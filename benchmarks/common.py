"""Shared helpers for the benchmark scripts: timing, matmul peak, FLOP counting, naive-path patches."""
from __future__ import annotations

import contextlib
import statistics
import time
import types

import torch
import torch.nn.functional as F


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


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
