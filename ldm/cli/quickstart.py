"""The quick start: one command from nothing to a trained latent diffusion model, samples and a report.

``python -m ldm.cli.quickstart [--out logs/quickstart] [--seed 23] [--fast]`` (``bash scripts/quickstart.sh``):

1. **Stage 1** - trains the KL-f4 autoencoder of ``configs/demo/quickstart_autoencoder.yaml`` on the
   embedded shapes data through the training CLI (``main.py``, a 2-rank DDP job) and measures its
   validation PSNR.
2. **Latent cache** - encodes the first ``ldm_train_images`` training images once with the frozen
   autoencoder (:mod:`ldm.data.latent_cache`, LDM Sec. 3.2: ``z = E(x)`` is fixed in stage 2).
3. **Stage 2** - trains ``configs/demo/quickstart_ldm.yaml`` twice on those latents, side by side in two
   processes (:mod:`ldm.cli.quickstart_stage`): a class-conditional and a text-conditional model (one
   conditioner each, 10% condition dropout for classifier-free guidance), each with
   ``model.params.first_stage_config.params.ckpt_path=<stage-1 run>/checkpoints/last.ckpt``.
4. **Sampling and evaluation** (:mod:`ldm.cli.quickstart_eval`, in each stage-2 process) - DDIM and
   DPM-Solver++ under classifier-free guidance, scored by the training-free shapes oracle, and the
   unconditional samples' class histogram against the data's.

Every stage trains a fixed number of steps from ``--seed`` (:mod:`ldm.cli.quickstart_budget`) in
single-threaded processes (:mod:`ldm.cli.quickstart_processes` says why), so the same command gives the
same numbers on a fast, slow or busy machine - only the time varies; a progress line per stage shows
steps/s and the time left. Writes ``<out>/grid.png`` (class-conditional samples, one row per class),
``<out>/grid_text.png``, ``<out>/report.json`` and ``<out>/report.md`` (:mod:`ldm.cli.quickstart_report`:
seed, steps, wall time, threads, processes, CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ldm.cli.quickstart_budget import FAST, Budget
from ldm.cli.quickstart_eval import autoencoder_psnr
from ldm.cli.quickstart_machine import busy_cores, machine_info
from ldm.cli.quickstart_processes import main_py, new_run_directory, run_side_by_side
from ldm.cli.quickstart_report import finite_check, markdown_report, target_summary
from ldm.cli.quickstart_stage import part_path, write_budget
from ldm.cli.quickstart_training import AUTOENCODER_CONFIG, CONDITION_KINDS, LDM_CONFIG, read_progress, train_argv

#: the autoencoder trains as a DDP job of this many single-threaded ranks (ldm/cli/quickstart_processes.py)
AUTOENCODER_RANKS = 2

# -- options ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    defaults = Budget()
    parser = argparse.ArgumentParser(
        prog="python -m ldm.cli.quickstart",
        description="Train the demo autoencoder and class-/text-conditional latent diffusion models on the "
                    "embedded shapes data (a fixed number of steps each, from a fixed seed), sample with DDIM "
                    "and DPM-Solver++ under classifier-free guidance, and write an image grid plus a report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="logs/quickstart", help="output directory (runs, grids, report)")
    parser.add_argument("--seed", type=int, default=23, help="training and sampling seed")
    parser.add_argument("--fast", action="store_true",
                        help="smoke test: a few training steps, tiny batches and few samples (seconds, not minutes)")
    parser.add_argument("--ae-steps", type=int, default=None,
                        help=f"autoencoder training steps (default {defaults.ae_steps})")
    parser.add_argument("--class-steps", type=int, default=None,
                        help=f"class-conditional LDM training steps (default {defaults.class_steps})")
    parser.add_argument("--text-steps", type=int, default=None,
                        help=f"text-conditional LDM training steps (default {defaults.text_steps})")
    parser.add_argument("--ldm-steps", type=int, default=None, help="set both --class-steps and --text-steps")
    parser.add_argument("--ae-minutes", type=float, default=None,
                        help="optional time box of the autoencoder training (stops early on a slow machine: "
                             "the result then depends on the machine)")
    parser.add_argument("--ldm-minutes", type=float, default=None,
                        help="optional time box of EACH latent diffusion training (same caveat)")
    parser.add_argument("--samples-per-class", type=int, default=None, help="class-conditional samples per class")
    parser.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps of the main samples")
    parser.add_argument("--dpm-steps", type=int, default=None, help="DPM-Solver++ steps (fewer than DDIM)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (> 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each training process (2 autoencoder ranks, then the class and "
                             "text models side by side); another value gives other numbers (summation order)")
    parser.add_argument("--precision", default=None,
                        help="trainer precision of every stage (32, bf16-mixed, auto; default: the configs' "
                             "value, 32 - docs/quality.md measures why)")
    parser.add_argument("--ae-ckpt", default=None,
                        help="skip stage 1 and use this quick-start autoencoder checkpoint (e.g. a previous run's "
                             "runs/<ts>_quickstart_autoencoder/checkpoints/last.ckpt)")
    parser.add_argument("--only", choices=CONDITION_KINDS, default=None,
                        help="train and evaluate only this latent model (recipe experiments)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the latent models, e.g. "
                             "model.params.unet_config.params.attention_resolutions=[2] (repeatable)")
    return parser


def budget_from_args(args: argparse.Namespace) -> Budget:
    budget = Budget(**FAST) if args.fast else Budget()
    flags = (("ae_steps", "ae_steps"), ("ldm_steps", "class_steps"), ("ldm_steps", "text_steps"),
             ("class_steps", "class_steps"), ("text_steps", "text_steps"), ("ae_minutes", "ae_minutes"),
             ("ldm_minutes", "ldm_minutes"), ("samples_per_class", "samples_per_class"), ("ddim_steps", "ddim_steps"),
             ("dpm_steps", "fast_steps"), ("guidance_scale", "guidance_scale"))
    for flag, name in flags:
        value = getattr(args, flag)
        if value is not None:
            if value <= 0:
                print(f"quickstart: error: --{flag.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
                raise SystemExit(2)
            setattr(budget, name, float(value) if name.endswith("minutes") else type(getattr(budget, name))(value))
    budget.extra_overrides = list(args.overrides)
    budget.precision = args.precision
    return budget


def load_autoencoder(checkpoint: Path):
    """The quick-start autoencoder with the weights of ``checkpoint`` (for ``--ae-ckpt``)."""
    from ldm.cli.first_stage import load_first_stage

    if not checkpoint.is_file():
        raise SystemExit(f"quickstart: --ae-ckpt {checkpoint} does not exist")
    return load_first_stage(AUTOENCODER_CONFIG, checkpoint)[0]


# -- stages ------------------------------------------------------------------------------------------


def train_autoencoder(budget: Budget, out: Path, seed: int, threads: int) -> dict:
    """Stage 1 as a DDP job of :data:`AUTOENCODER_RANKS` processes (``main.py --strategy ddp``), the global
    batch split between them; returns its part of the report."""
    logroot, name = out / "runs", "quickstart_autoencoder"
    progress_file = logroot / "autoencoder_progress.json"
    argv = train_argv(AUTOENCODER_CONFIG, logroot, name, steps=budget.ae_steps, minutes=budget.ae_minutes,
                      batch_size=max(1, budget.ae_batch_size // AUTOENCODER_RANKS), seed=seed, label="autoencoder",
                      precision=budget.precision, progress_file=progress_file,
                      overrides=["--accelerator", "cpu", "--strategy", "ddp", "--devices", str(AUTOENCODER_RANKS)])
    before = set(logroot.glob(f"*_{name}*"))
    progress_file.unlink(missing_ok=True)  # a rerun into the same --out must not read the last run's rate
    start = time.time()
    run_side_by_side({"autoencoder": main_py(argv)}, threads=threads)
    seconds = time.time() - start
    run_dir = new_run_directory(logroot, name, before)
    progress = read_progress(progress_file)
    return {"steps": progress["steps"], "steps_budget": budget.ae_steps, "train_seconds": seconds,
            "steps_per_second": progress["steps_per_second"], "precision": progress.get("precision", "?"),
            "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"), "run": str(run_dir),
            "ranks": AUTOENCODER_RANKS}


def encode_latent_cache(ae_model, ae_ckpt: Path, budget: Budget, out: Path) -> tuple[Path, float]:
    """The first ``budget.ldm_train_images`` training images encoded once by the frozen autoencoder
    (:mod:`ldm.data.latent_cache`): the latent models then train without the encoder in their step."""
    from omegaconf import OmegaConf

    from ldm.data.latent_cache.encode import encode_dataset
    from ldm.util import instantiate_from_config

    train = OmegaConf.load(LDM_CONFIG).data.params.train
    path = out / "latent_cache"
    start = time.time()
    encode_dataset(ae_model, instantiate_from_config(train), path, batch_size=128, shard_size=5000,
                   limit=budget.ldm_train_images, overwrite=True,
                   info={"command": ["python", "-m", "ldm.cli.quickstart"],
                         "first_stage": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                         "config": str(AUTOENCODER_CONFIG),
                                         "checkpoint": {"path": str(ae_ckpt)}},
                         "source": {"config": str(LDM_CONFIG), "split": "train",
                                    "dataset": OmegaConf.to_container(train)}})
    seconds = time.time() - start
    print(f"[quickstart] latent cache: {budget.ldm_train_images} training images encoded in {seconds:.0f} s "
          f"-> {path}", flush=True)
    return path, seconds


def train_latent_models(kinds: Sequence[str], budget: Budget, seed: int, ae_ckpt: Path, cache: Path, out: Path,
                        threads: int) -> dict[str, dict]:
    """Stage 2: one child process per conditioner (:mod:`ldm.cli.quickstart_stage`), side by side."""
    budget_file = write_budget(budget, out / "runs" / "budget.json")
    commands = {f"{kind} LDM": [sys.executable, "-m", "ldm.cli.quickstart_stage", "--kind", kind, "--budget",
                                budget_file, "--seed", seed, "--ae-ckpt", ae_ckpt, "--cache", cache, "--out", out,
                                "--threads", threads] for kind in kinds}
    for kind in kinds:
        part_path(out, kind).unlink(missing_ok=True)
    run_side_by_side(commands, threads=threads)
    return {kind: json.loads(part_path(out, kind).read_text()) for kind in kinds}


# -- driver ------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    budget = budget_from_args(args)
    if args.threads < 1:
        print(f"quickstart: error: --threads must be positive, got {args.threads}", file=sys.stderr)
        raise SystemExit(2)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    torch.set_num_threads(args.threads)  # this process: PSNR and the latent cache
    machine = machine_info(args.threads, busy_cores())
    kinds = (args.only,) if args.only else CONDITION_KINDS
    print(f"[quickstart] output: {out} | seed {args.seed} | {machine['cpu_model']}, {args.threads} torch thread(s) "
          f"per process | steps: autoencoder {0 if args.ae_ckpt else budget.ae_steps} "
          f"({AUTOENCODER_RANKS} DDP ranks), " + ", ".join(f"{kind} LDM {budget.steps(kind)}" for kind in kinds)
          + (" side by side" if len(kinds) > 1 else "") + (" | fast smoke-test mode" if args.fast else ""),
          flush=True)
    started = time.time()

    # stage 1
    if args.ae_ckpt:
        ae = {"steps": 0, "steps_budget": 0, "train_seconds": 0.0, "steps_per_second": 0.0,
              "precision": "none (--ae-ckpt)", "checkpoint": str(Path(args.ae_ckpt).resolve()),
              "run": str(Path(args.ae_ckpt).resolve().parents[1])}
    else:
        ae = train_autoencoder(budget, out, args.seed, args.threads)
    ae_ckpt = Path(ae["checkpoint"])
    ae_model = load_autoencoder(ae_ckpt)
    ae["psnr_db"] = autoencoder_psnr(ae_model, budget.val_images)
    print(f"[quickstart] autoencoder: {ae['steps']} steps ({ae['steps_per_second']:.1f} steps/s), validation "
          f"PSNR {ae['psnr_db']:.2f} dB, checkpoint {ae_ckpt}", flush=True)
    cache, ae["latent_cache_seconds"] = encode_latent_cache(ae_model, ae_ckpt, budget, out)
    del ae_model

    # stage 2: one model per condition, each on the autoencoder just trained, side by side
    parts = train_latent_models(kinds, budget, args.seed, ae_ckpt, cache, out, args.threads)
    report: dict[str, Any] = {"seed": args.seed, "autoencoder": ae,
                              **{f"{kind}_conditional": part for kind, part in parts.items()}}
    # the trainer precision of each stage (autoencoder / class / text): the configs differ, docs/quality.md
    precision = " / ".join([ae["precision"]] + [parts[kind]["precision"] for kind in kinds])
    processes = (f"autoencoder {AUTOENCODER_RANKS} DDP ranks, then {len(kinds)} latent model(s) "
                 + ("side by side" if len(kinds) > 1 else "in one process"))
    report.update(threads=args.threads, processes=processes, machine=machine, precision=precision,
                  fast=bool(args.fast), command=" ".join(["python -m ldm.cli.quickstart", *(argv or [])]))
    report["seconds_total"] = time.time() - started
    if args.only:  # a recipe experiment: no targets
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"[quickstart] report: {out / 'report.json'}")
        return report
    report.update(grid=parts["class"]["grid"], grid_text=parts["text"]["grid"])
    report["targets"] = target_summary(report)
    finite_check(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown_report(report))
    print(markdown_report(report))
    print(f"[quickstart] image grid: {report['grid']} (text: {report['grid_text']})")
    print(f"[quickstart] report: {out / 'report.md'} and {out / 'report.json'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
