"""The quick start: one command from nothing to a trained latent diffusion model, samples and a report.

``python -m ldm.cli.quickstart [--out logs/quickstart] [--seed 23] [--fast]`` (``bash scripts/quickstart.sh``):

1. **Stage 1** - trains the KL-f4 autoencoder of ``configs/demo/quickstart_autoencoder.yaml`` on the
   embedded shapes data through the training CLI (:func:`ldm.cli.train.main`) and measures its
   validation PSNR.
2. **Stage 2** - trains ``configs/demo/quickstart_ldm.yaml`` twice on that autoencoder's latents: a
   class-conditional and a text-conditional model (one conditioner each, 10% condition dropout for
   classifier-free guidance). The stage-1 checkpoint is found in the run it just wrote and passed as
   ``model.params.first_stage_config.params.ckpt_path=<run>/checkpoints/last.ckpt``.
3. **Sampling and evaluation** (:mod:`ldm.cli.quickstart_eval`) - DDIM and DPM-Solver++ under
   classifier-free guidance, scored by the training-free shapes oracle, and the unconditional samples'
   class histogram against the data's.

Every stage trains a fixed number of steps from ``--seed`` (:mod:`ldm.cli.quickstart_budget`), so the
same command gives the same numbers on a fast, slow or busy machine; a progress line per stage shows
steps/s and the time left. Writes ``<out>/grid.png`` (class-conditional samples, one row per class),
``<out>/grid_text.png``, ``<out>/report.json`` and ``<out>/report.md`` (:mod:`ldm.cli.quickstart_report`:
seed, steps, wall time, threads, CPU).
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
from ldm.cli.quickstart_eval import (  # noqa: F401  (re-exported: the tests and benchmarks import them here)
    autoencoder_psnr,
    evaluate_class_model,
    evaluate_text_model,
    sample_histogram,
    save_grid,
    total_variation,
)
from ldm.cli.quickstart_machine import busy_cores, machine_info, pick_threads
from ldm.cli.quickstart_report import finite_check, markdown_report, target_summary

ROOT = Path(__file__).resolve().parents[2]
AUTOENCODER_CONFIG = ROOT / "configs" / "demo" / "quickstart_autoencoder.yaml"
LDM_CONFIG = ROOT / "configs" / "demo" / "quickstart_ldm.yaml"
CONDITION_KINDS = ("class", "text")

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
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 = auto (the idle cores: oversubscribing a busy CPU is very slow)")
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


def _max_time(minutes: float) -> str:
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- training ----------------------------------------------------------------------------------------


def _train(config_path: Path, logroot: Path, name: str, *, steps: int, minutes: float | None, batch_size: int,
           seed: int, label: str | None, overrides: Sequence[str] = (), precision: str | None = None):
    """One stage through the training CLI: exactly ``steps`` optimizer steps (unless ``minutes`` cuts it).
    ``label`` names the stage in the progress lines of the quick-start configs' ``quickstart_progress``
    callback (None for a config without it)."""
    from ldm.cli.train import main as train_main

    argv = ["-b", str(config_path), "-t", "--no-test", "-l", str(logroot), "-n", name, "-s", str(seed),
            "--max_steps", str(steps), *(["--max_time", _max_time(minutes)] if minutes else []),
            *(["--precision", precision] if precision else []),
            f"data.params.batch_size={batch_size}",
            *([f"lightning.callbacks.quickstart_progress.params.label={label}"] if label is not None else []),
            *overrides]
    print(f"[quickstart] python main.py {' '.join(argv)}", flush=True)
    start = time.time()
    result = train_main(argv)
    seconds = time.time() - start
    checkpoint = Path(result.paths.ckptdir) / "last.ckpt"
    if not checkpoint.is_file():
        raise RuntimeError(f"training {name} finished without writing {checkpoint}")
    return result, checkpoint, seconds


def _rate(result) -> float:
    """Training steps per second of a stage, as its progress callback measured them (no setup time)."""
    from ldm.cli.quickstart_progress import StepProgress

    progress = [cb for cb in result.trainer.callbacks if isinstance(cb, StepProgress)]
    return progress[0].steps_per_second if progress else 0.0


def ldm_config_for(kind: str, out: Path) -> Path:
    """``quickstart_ldm.yaml`` with the ``kind`` conditioner (class / text), written under ``out``."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(LDM_CONFIG)
    choices = config.pop("quickstart")["conditioners"]
    if kind not in choices:
        raise ValueError(f"{LDM_CONFIG}: no quickstart.conditioners.{kind}")
    config.model.params.cond_stage_key = choices[kind].cond_stage_key
    config.model.params.cond_stage_config = choices[kind].cond_stage_config
    if "model_params" in choices[kind]:  # e.g. the text model's cross-attention UNet
        config.model.params = OmegaConf.merge(config.model.params, choices[kind].model_params)
    path = out / "configs" / f"quickstart_ldm_{kind}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, path)
    return path


def load_autoencoder(checkpoint: Path):
    """The quick-start autoencoder with the weights of ``checkpoint`` (for ``--ae-ckpt``)."""
    from ldm.cli.first_stage import load_first_stage

    if not checkpoint.is_file():
        raise SystemExit(f"quickstart: --ae-ckpt {checkpoint} does not exist")
    return load_first_stage(AUTOENCODER_CONFIG, checkpoint)[0]


# -- driver ------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    budget = budget_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    busy = None if args.threads > 0 else busy_cores()
    threads = pick_threads(args.threads, busy=busy)
    torch.set_num_threads(threads)
    machine = machine_info(threads, busy)
    kinds = (args.only,) if args.only else CONDITION_KINDS
    print(f"[quickstart] output: {out} | seed {args.seed} | {machine['cpu_model']}, torch threads: {threads} | "
          f"steps: autoencoder {0 if args.ae_ckpt else budget.ae_steps}, "
          + ", ".join(f"{kind} LDM {budget.steps(kind)}" for kind in kinds)
          + (" | fast smoke-test mode" if args.fast else ""), flush=True)
    started = time.time()

    # stage 1
    if args.ae_ckpt:
        ae_model, ae_ckpt = load_autoencoder(Path(args.ae_ckpt)), Path(args.ae_ckpt)
        ae_steps, ae_seconds, ae_dir = 0, 0.0, str(Path(args.ae_ckpt).resolve().parents[1])
        ae_precision, ae_rate = "none (--ae-ckpt)", 0.0
    else:
        ae_run, ae_ckpt, ae_seconds = _train(AUTOENCODER_CONFIG, out / "runs", "quickstart_autoencoder",
                                             steps=budget.ae_steps, minutes=budget.ae_minutes,
                                             batch_size=budget.ae_batch_size, seed=args.seed, label="autoencoder",
                                             precision=budget.precision)
        ae_model, ae_steps, ae_dir = ae_run.model, int(ae_run.trainer.global_step), str(ae_run.logdir)
        ae_precision, ae_rate = str(ae_run.trainer.precision), _rate(ae_run)
        del ae_run
    psnr = autoencoder_psnr(ae_model, budget.val_images)
    print(f"[quickstart] autoencoder: {ae_steps} steps ({ae_rate:.1f} steps/s), validation "
          f"PSNR {psnr:.2f} dB, checkpoint {ae_ckpt}", flush=True)
    report: dict[str, Any] = {"seed": args.seed, "autoencoder": {
        "psnr_db": psnr, "steps": ae_steps, "steps_budget": 0 if args.ae_ckpt else budget.ae_steps,
        "train_seconds": ae_seconds, "steps_per_second": ae_rate, "precision": ae_precision, "checkpoint": str(ae_ckpt),
        "run": ae_dir}}
    del ae_model

    # stage 2: one model per condition, each on the autoencoder just trained
    grids = {}
    for kind in kinds:
        config = ldm_config_for(kind, out)
        steps = budget.steps(kind)
        run_result, ckpt, seconds = _train(
            config, out / "runs", f"quickstart_ldm_{kind}", steps=steps, minutes=budget.ldm_minutes,
            batch_size=budget.ldm_batch_size, seed=args.seed, label=f"{kind} LDM", precision=budget.precision,
            overrides=[f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}",
                       *budget.extra_overrides])
        model = run_result.model.cpu().eval()
        evaluate = evaluate_class_model if kind == "class" else evaluate_text_model
        part, grids[kind] = evaluate(model, budget, args.seed)
        trained = int(run_result.trainer.global_step)
        part.update(train_steps=trained, steps_budget=steps, train_seconds=seconds,
                    steps_per_second=_rate(run_result), checkpoint=str(ckpt), run=str(run_result.logdir),
                    scale_factor=float(model.scale_factor))
        report[f"{kind}_conditional"] = part
        part["precision"] = str(run_result.trainer.precision)
        print(f"[quickstart] {kind}-conditional: {trained} steps ({part['steps_per_second']:.1f} steps/s), oracle "
              f"accuracy {part['oracle_accuracy_cfg']:.1%} (CFG {budget.guidance_scale:g}) vs "
              f"{part['oracle_accuracy_scale1']:.1%} (scale 1)", flush=True)
        del run_result, model

    # the trainer precision of each stage (autoencoder / class / text): the configs differ, docs/quality.md
    precision = " / ".join([ae_precision] + [report[f"{kind}_conditional"]["precision"] for kind in kinds])
    report.update(threads=threads, machine=machine, precision=precision, fast=bool(args.fast),
                  command=" ".join(["python -m ldm.cli.quickstart", *(argv or [])]))
    if args.only:  # a recipe experiment: no grids, no targets
        report.update(seconds_total=time.time() - started)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"[quickstart] report: {out / 'report.json'}")
        return report
    grid, grid_text = out / "grid.png", out / "grid_text.png"
    save_grid(grids["class"], grid, nrow=budget.samples_per_class)
    save_grid(grids["text"], grid_text, nrow=8)
    report.update(grid=str(grid), grid_text=str(grid_text), seconds_total=time.time() - started)
    report["targets"] = target_summary(report)
    finite_check(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown_report(report))
    print(markdown_report(report))
    print(f"[quickstart] image grid: {grid} (text: {grid_text})")
    print(f"[quickstart] report: {out / 'report.md'} and {out / 'report.json'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
