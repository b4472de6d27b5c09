"""``--precision auto``: the fastest precision the hardware runs natively.

:func:`resolve_precision` maps ``"auto"`` to a Lightning precision name:

* CUDA: ``bf16-mixed`` where the GPU has bf16 tensor cores (Ampere and newer:
  ``torch.cuda.is_bf16_supported(including_emulation=False)``), ``16-mixed`` on older GPUs with
  fp16 tensor cores (compute capability 7.x, e.g. V100 / T4), else ``32``.
* CPU: ``bf16-mixed`` where oneDNN has bf16 kernels (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``:
  x86 CPUs with AVX-512, fastest with AVX-512 BF16 or AMX, e.g. Intel Xeon Sapphire Rapids / AMD
  Zen 4), else ``32``. Without those kernels every bf16 convolution falls back to PyTorch's
  reference implementation: on an AMD EPYC with AVX2 only, one forward pass of a small
  celebahq-f4-shaped UNet took 27 s in bf16-mixed against 0.5 s in fp32 (issue #13); with oneDNN
  switched off on an Intel Xeon (AMX) one 3x3 convolution of 8x128x32x32 took 35.8 s against 0.39 s
  (93x; ``python -m benchmarks.bench_bf16_fallback --threads 1``, docs/performance.md).
* MPS and anything else: ``32``.

:func:`warn_if_slow` warns once when ``bf16-mixed`` is asked for explicitly on a CPU without those
kernels. :func:`resolve_trainer_precision` does both for a dict of ``lightning.Trainer`` arguments
(what ``main.py`` calls); other entry points (the quick start) call :func:`resolve_precision`.
The capability checks are the small functions :func:`cpu_has_native_bf16` and :func:`cuda_precision`,
so tests can replace them.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch

__all__ = [
    "AUTO",
    "cpu_has_native_bf16",
    "cuda_precision",
    "device_type_for",
    "resolve_precision",
    "resolve_trainer_precision",
    "warn_if_slow",
]

AUTO = "auto"
_BF16_NAMES = {"bf16", "bf16-mixed", "bf16-true"}
_warned = False


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), printed beside
    every benchmark table and in the quick-start report."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls on this CPU (AVX-512 or better)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_precision() -> str:
    """``bf16-mixed`` / ``16-mixed`` / ``32`` for the current CUDA device (see the module docstring)."""
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16-mixed"
    major, _ = torch.cuda.get_device_capability()
    return "16-mixed" if major >= 7 else "32"


def device_type_for(accelerator: Any) -> str:
    """The device type a Trainer with ``accelerator`` will run on: ``cuda``, ``mps``, ``cpu`` or ``other``."""
    name = str(accelerator or AUTO).lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name in ("cpu", "mps"):
        return name
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return "other"


def resolve_precision(precision: Any, accelerator: Any = AUTO) -> Any:
    """``"auto"`` -> the precision for the hardware ``accelerator`` selects; anything else unchanged."""
    if str(precision).lower() != AUTO:
        return precision
    device = device_type_for(accelerator)
    if device == "cuda":
        return cuda_precision()
    if device == "cpu":
        return "bf16-mixed" if cpu_has_native_bf16() else "32"
    return "32"


def warn_if_slow(precision: Any, accelerator: Any = AUTO) -> bool:
    """Warn (once per process, on local rank 0) when bf16 is asked for on a CPU without native bf16
    kernels; returns whether that is the case."""
    global _warned
    slow = (str(precision).lower() in _BF16_NAMES and device_type_for(accelerator) == "cpu"
            and not cpu_has_native_bf16())
    if slow and not _warned and os.environ.get("LOCAL_RANK", "0") == "0":
        _warned = True
        warnings.warn(
            f"precision={precision} on a CPU without native bf16 (no AVX-512 / AMX; "
            "torch.ops.mkldnn._is_mkldnn_bf16_supported() is False): convolutions fall back to PyTorch's "
            "reference kernels, about 50x slower than fp32 (27 s vs 0.5 s for one UNet forward on an AMD EPYC "
            "with AVX2). Use --precision 32 (or --precision auto).", UserWarning, stacklevel=2)
    return slow


def resolve_trainer_precision(trainer_kwargs: dict) -> str | None:
    """Resolve ``trainer_kwargs["precision"]`` in place; returns a note when ``auto`` was resolved."""
    precision = trainer_kwargs.get("precision")
    if precision is None:
        return None
    accelerator = trainer_kwargs.get("accelerator", AUTO)
    resolved = resolve_precision(precision, accelerator)
    warn_if_slow(resolved, accelerator)
    if resolved == precision:
        return None
    trainer_kwargs["precision"] = resolved
    return f"precision auto -> {resolved} ({device_type_for(accelerator)})"
