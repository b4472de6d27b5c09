"""Where a run lives: ``<logdir>/<timestamp>_<name><postfix>/`` as in the original main.py.

::

    logs/2024-01-31T12-00-00_my-config/
        checkpoints/last.ckpt, epoch=000003.ckpt, ...   (trainstep_checkpoints/ when asked)
        configs/<ts>-project.yaml, <ts>-lightning.yaml  (one pair per start; a resume merges them all)
        images/train/, images/val/                      (ImageLogger)
        csv/ or tensorboard/ or wandb/                  (the logger)

``-r`` takes either the run directory or a checkpoint inside ``<run>/checkpoints/``.
"""
from __future__ import annotations

import datetime
import glob
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ldm.cli.config import CLIError


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


@dataclass
class RunPaths:
    logdir: Path
    nowname: str
    now: str
    resume_ckpt: Path | None = None
    resumed_configs: list[Path] = field(default_factory=list)

    @property
    def ckptdir(self) -> Path:
        return self.logdir / "checkpoints"

    @property
    def cfgdir(self) -> Path:
        return self.logdir / "configs"

    @property
    def imagedir(self) -> Path:
        return self.logdir / "images"


def run_dir_of_checkpoint(path: str | Path) -> Path | None:
    """``<run>/checkpoints/[sub/]<file>.ckpt`` -> ``<run>`` (resolved); None outside a ``checkpoints/`` folder."""
    return next((p.parent for p in Path(path).resolve().parents if p.name == "checkpoints"), None)


def _run_from_resume(resume: str) -> tuple[Path, Path]:
    path = Path(resume)
    if not path.exists():
        raise CLIError(f"-r/--resume: cannot find {resume}")
    if path.is_file():
        run_dir = run_dir_of_checkpoint(path)
        if run_dir is not None:
            return run_dir, path
        raise CLIError(
            f"-r/--resume: {resume} is not inside a run's checkpoints/ folder; pass the run directory, "
            "or start a new run from these weights with --init-from"
        )
    logdir = path.resolve()
    ckpt = logdir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise CLIError(f"-r/--resume: {logdir} has no checkpoints/last.ckpt to resume from")
    return logdir, ckpt


def resolve_run_paths(*, resume: str, name: str, postfix: str, base: list[str], logdir_root: str,
                      now: str | None = None) -> RunPaths:
    now = now or timestamp()
    if resume:
        logdir, ckpt = _run_from_resume(resume)
        configs = [Path(p) for p in sorted(glob.glob(str(logdir / "configs" / "*.yaml")))]
        return RunPaths(logdir=logdir, nowname=logdir.name, now=now, resume_ckpt=ckpt, resumed_configs=configs)
    if name:
        suffix = "_" + name
    elif base:
        suffix = "_" + Path(base[0]).stem
    else:
        suffix = ""
    nowname = now + suffix + (postfix or "")
    return RunPaths(logdir=Path(logdir_root) / nowname, nowname=nowname, now=now)


def reserve_run_directory(paths: RunPaths) -> RunPaths:
    """Create a new run's directory exclusively, so that two runs never share one.

    Two starts in the same second with the same name would otherwise write into one directory
    (checkpoints overwritten, both configs merged by a later ``-r``). ``os.mkdir`` fails when the
    directory exists; the second run then takes ``<name>_1``, ``_2``, ... . A directory that cannot
    be created (a read-only ``-l``) is a :class:`CLIError`, before anything is built.
    """
    root, name = paths.logdir.parent, paths.logdir.name
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = root / (name if n == 0 else f"{name}_{n}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            paths.logdir, paths.nowname = candidate, candidate.name
            return paths
    except OSError as err:
        raise CLIError(f"-l/--logdir: cannot create the run directory under {root}: {err.strerror or err}; "
                       "pass a writable directory with -l DIR") from err
    raise CLIError(f"-l/--logdir: {root} already holds 10000 runs named {name}; pick another -n/--name")


def check_writable_run(logdir: Path) -> None:
    """A resumed run writes into its own directory: refuse a read-only one before training."""
    for directory in (logdir, logdir / "checkpoints"):
        if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
            raise CLIError(f"-r/--resume: {directory} is not writable; the resumed run could not save checkpoints "
                           "(fix its permissions, or copy the run to a writable place and resume the copy)")


def move_to_debug_runs(logdir: Path) -> Path | None:
    """``-d``: move ``<root>/<run>`` to ``<root>/debug_runs/<run>`` (original behaviour)."""
    logdir = Path(logdir)
    if not logdir.exists():
        return None
    destination = logdir.parent / "debug_runs" / logdir.name
    os.makedirs(destination.parent, exist_ok=True)
    if destination.exists():
        shutil.rmtree(destination)
    shutil.move(str(logdir), str(destination))
    return destination
