"""The quick start's fixed parallelism: every stage runs in single-threaded processes.

Why: the order of floating-point sums in a kernel depends on the number of threads that share it, so a
stage trained on 2 threads is a different model from the same stage on 1 - and choosing threads by how
busy the machine is made the quick start's numbers depend on the load (docs/quality.md). A fixed thread
count is not enough: two spinning OpenMP threads on a core that another process also wants run many
times slower. Processes of one thread each degrade gracefully instead: on a busy machine they share the
free core and take about twice as long, and every number stays the same.

So the autoencoder trains as a 2-rank DDP job (``--strategy ddp --devices 2``, gloo, 1 thread per rank),
and the class- and text-conditional models train side by side, one single-threaded process each.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ldm.cli.quickstart_training import ROOT

#: the threading variables every child gets (OpenMP, MKL, OpenBLAS, and torch's own default)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class StageFailed(RuntimeError):
    """A child process of the quick start exited with an error."""


def child_environment(threads: int = 1) -> dict[str, str]:
    """This process's environment with ``threads`` threads per child, offline hubs, and the repository
    importable (the children are started as ``python -m ...`` / ``python main.py``)."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


def main_py(args: Sequence[str]) -> list[str]:
    """The command line of ``python main.py <args>`` with this interpreter."""
    return [sys.executable, str(ROOT / "main.py"), *args]


def run_side_by_side(commands: Mapping[str, Sequence[str]], threads: int = 1) -> None:
    """Start every command at once (``label -> argv``), wait for all; their output goes to ours.

    The first failure stops the others and raises :class:`StageFailed` naming the stage and its exit
    code; Ctrl-C stops them all."""
    env = child_environment(threads)
    running: dict[str, subprocess.Popen] = {}
    try:
        for label, argv in commands.items():
            print(f"[quickstart] {label}: {' '.join(map(str, argv))}", flush=True)
            running[label] = subprocess.Popen([str(a) for a in argv], env=env)
        pending = dict(running)
        while pending:
            for label, proc in list(pending.items()):
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                del pending[label]
                if code != 0:
                    raise StageFailed(f"the quick start's {label} stage failed (exit code {code}); "
                                      "its error is printed above")
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def new_run_directory(logroot: Path, name: str, before: set[Path]) -> Path:
    """The run directory a child training process created under ``logroot`` (``<time>_<name>[_N]``),
    given the directories that existed before it started."""
    created = [p for p in Path(logroot).glob(f"*_{name}*") if p.is_dir() and p not in before]
    with_checkpoint = [p for p in created if (p / "checkpoints" / "last.ckpt").is_file()]
    if len(with_checkpoint) != 1:
        raise StageFailed(f"expected one new run directory {logroot}/*_{name} with checkpoints/last.ckpt, "
                          f"found {sorted(map(str, with_checkpoint)) or 'none'}")
    return with_checkpoint[0]
