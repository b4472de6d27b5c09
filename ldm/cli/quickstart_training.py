"""How the quick start trains a stage: the training-CLI command line of a step-budgeted stage, run in
this process or as a child process, and the latent model's config for one conditioner.

Shared by the driver (:mod:`ldm.cli.quickstart`), the latent-model child (:mod:`ldm.cli.quickstart_stage`)
and the benchmarks that retrain quick-start stages.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUTOENCODER_CONFIG = ROOT / "configs" / "demo" / "quickstart_autoencoder.yaml"
LDM_CONFIG = ROOT / "configs" / "demo" / "quickstart_ldm.yaml"
CONDITION_KINDS = ("class", "text")


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` of a time box in minutes."""
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_argv(config_path: Path, logroot: Path, name: str, *, steps: int, minutes: float | None, batch_size: int,
               seed: int, label: str | None, overrides: Sequence[str] = (), precision: str | None = None,
               progress_file: Path | None = None) -> list[str]:
    """``main.py`` arguments of one stage: exactly ``steps`` optimizer steps (unless ``minutes`` cuts it).
    ``label`` names the stage in the progress lines of the quick-start configs' ``quickstart_progress``
    callback (None for a config without it), which also writes its step count and rate to
    ``progress_file``."""
    progress = "lightning.callbacks.quickstart_progress.params"
    return ["-b", str(config_path), "-t", "--no-test", "-l", str(logroot), "-n", name, "-s", str(seed),
            "--max_steps", str(steps), *(["--max_time", max_time(minutes)] if minutes else []),
            *(["--precision", precision] if precision else []),
            f"data.params.batch_size={batch_size}",
            *([f"{progress}.label={label}"] if label is not None else []),
            *([f"{progress}.summary_path={progress_file}"] if progress_file is not None else []),
            *overrides]


def train_in_process(config_path: Path, logroot: Path, name: str, **stage):
    """Train one stage through the training CLI in this process (keyword arguments of :func:`train_argv`);
    returns ``(RunResult, checkpoint, seconds)``."""
    from ldm.cli.train import main as train_main

    argv = train_argv(config_path, logroot, name, **stage)
    print(f"[quickstart] python main.py {' '.join(argv)}", flush=True)
    start = time.time()
    result = train_main(argv)
    seconds = time.time() - start
    checkpoint = Path(result.paths.ckptdir) / "last.ckpt"
    if not checkpoint.is_file():
        raise RuntimeError(f"training {name} finished without writing {checkpoint}")
    return result, checkpoint, seconds


def steps_per_second(result) -> float:
    """Training steps per second of a stage, as its progress callback measured them (no setup time)."""
    from ldm.cli.quickstart_progress import StepProgress

    progress = [cb for cb in result.trainer.callbacks if isinstance(cb, StepProgress)]
    return progress[0].steps_per_second if progress else 0.0


def read_progress(path: Path) -> dict:
    """What a stage's progress callback wrote at the end (``steps``, ``seconds``, ``steps_per_second``).
    A stage that finished without writing it (its config lacks the ``quickstart_progress`` callback, or the
    file is not JSON) is an error: the report would otherwise claim 0 steps."""
    try:
        summary = json.loads(Path(path).read_text())
    except OSError as error:
        raise RuntimeError(f"the stage finished without its progress summary {path} ({error.strerror}); "
                           "its config needs the quickstart_progress callback with summary_path") from None
    except ValueError as error:
        raise RuntimeError(f"the stage's progress summary {path} is not JSON: {error}") from None
    missing = {"steps", "seconds", "steps_per_second"} - set(summary)
    if missing:
        raise RuntimeError(f"the stage's progress summary {path} lacks {sorted(missing)}")
    return summary


def late_decay_schedule(schedule: dict, steps: int, decay_fraction: float, final_factor: float) -> dict:
    """``LambdaLinearScheduler`` parameters (``schedule``: its one-cycle warm-up) extended by a linear
    anneal of the learning rate to ``final_factor`` over the last ``decay_fraction`` of ``steps``: cycle 1
    is the warm-up and the constant rate, cycle 2 (no warm-up) falls from 1 to ``final_factor``. A budget
    too short to leave the warm-up (``--fast``) keeps the warm-up only."""
    if not 0 < decay_fraction < 1 or not 0 <= final_factor <= 1:
        raise ValueError(f"lr_decay needs 0 < decay_fraction < 1 and 0 <= final_factor <= 1, "
                         f"got {decay_fraction}, {final_factor}")
    (warm_up,), (f_start,) = schedule["warm_up_steps"], schedule["f_start"]
    decay = max(1, round(steps * decay_fraction))
    return {"warm_up_steps": [warm_up, 0], "cycle_lengths": [max(steps - decay, warm_up), decay],
            "f_start": [f_start, 1.0], "f_max": [1.0, 1.0], "f_min": [1.0, float(final_factor)]}


def ldm_config_for(kind: str, out: Path, cache: Path | None = None, steps: int | None = None) -> Path:
    """``quickstart_ldm.yaml`` with the ``kind`` conditioner (class / text), written under ``out``; with
    ``cache`` the training split is that latent cache (:class:`ldm.data.latent_cache.LatentCacheDataset`);
    with ``steps`` (the stage's budget) a conditioner's ``lr_decay`` block anneals the learning rate over
    the end of that budget (:func:`late_decay_schedule`)."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(LDM_CONFIG)
    choices = config.pop("quickstart")["conditioners"]
    if kind not in choices:
        raise ValueError(f"{LDM_CONFIG}: no quickstart.conditioners.{kind}")
    choice = choices[kind]
    config.model.params.cond_stage_key = choice.cond_stage_key
    config.model.params.cond_stage_config = choice.cond_stage_config
    if "model_params" in choice:  # e.g. the text model's cross-attention UNet
        config.model.params = OmegaConf.merge(config.model.params, choice.model_params)
    if "lr_decay" in choice and steps is not None:
        schedule = OmegaConf.to_container(config.model.params.scheduler_config.params)
        config.model.params.scheduler_config.params = late_decay_schedule(schedule, int(steps), **choice.lr_decay)
    if cache is not None:
        config.data.params.train = {"target": "ldm.data.latent_cache.LatentCacheDataset",
                                    "params": {"path": str(Path(cache).resolve())}}
    path = out / "configs" / f"quickstart_ldm_{kind}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, path)
    return path
