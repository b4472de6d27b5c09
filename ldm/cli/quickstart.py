"""The quick start: one command from nothing to a trained latent diffusion model, samples and a report.

``python -m ldm.cli.quickstart [--out logs/quickstart] [--fast]`` (``bash scripts/quickstart.sh``):

1. **Stage 1** - trains the KL-f4 autoencoder of ``configs/demo/quickstart_autoencoder.yaml`` on the
   embedded shapes data through the training CLI (:func:`ldm.cli.train.main`) and measures its
   validation PSNR.
2. **Stage 2** - trains ``configs/demo/quickstart_ldm.yaml`` twice on that autoencoder's latents: a
   class-conditional and a text-conditional model (one conditioner each, 10% condition dropout for
   classifier-free guidance). The stage-1 checkpoint is found in the run it just wrote and passed as
   ``model.params.first_stage_config.params.ckpt_path=<run>/checkpoints/last.ckpt``.
3. **Sampling and evaluation** - DDIM and DPM-Solver++ under classifier-free guidance (Ho & Salimans:
   ``eps = eps(z, null) + s (eps(z, c) - eps(z, null))``), scored by the training-free shapes oracle
   (:mod:`ldm.eval.shapes_oracle`); the unconditional (null-condition) samples' class histogram is
   compared with the data's by total variation distance ``TV(p, q) = 1/2 sum_k |p_k - q_k|``.

Writes ``<out>/grid.png`` (class-conditional samples, one row per class), ``<out>/grid_text.png``,
``<out>/report.json`` and ``<out>/report.md``. Each training stage is time-boxed (``max_time``) as
well as step-capped, so the whole run fits its budget on slow machines (with fewer steps).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AUTOENCODER_CONFIG = ROOT / "configs" / "demo" / "quickstart_autoencoder.yaml"
LDM_CONFIG = ROOT / "configs" / "demo" / "quickstart_ldm.yaml"
CONDITION_KINDS = ("class", "text")

#: quality targets of issue 6 (name -> (threshold, "min" | "max"))
TARGETS = {
    "autoencoder_psnr_db": (28.0, "min"),
    "class_oracle_accuracy_cfg": (0.90, "min"),
    "text_oracle_accuracy_cfg": (0.80, "min"),
}

# -- options ---------------------------------------------------------------------------------------


@dataclass
class Budget:
    """How big each part of the quick start is (the defaults aim at ~15 minutes on a 2-core CPU)."""
    ae_minutes: float = 6.0
    ae_max_steps: int = 100_000
    ldm_minutes: float = 4.0            # per latent diffusion model (class, then text)
    ldm_max_steps: int = 100_000
    ae_batch_size: int = 16
    ldm_batch_size: int = 32
    val_images: int = 256               # autoencoder PSNR on this many validation images
    samples_per_class: int = 8          # class-conditional samples: 12 classes × this
    text_samples: int = 96
    unconditional_samples: int = 192
    data_histogram_samples: int = 2400
    ddim_steps: int = 25
    fast_steps: int = 10                # DPM-Solver++ (and a DDIM run at the same count)
    guidance_scale: float = 5.0
    extra_overrides: list[str] = field(default_factory=list)


FAST = {"ae_minutes": 1.0, "ae_max_steps": 3, "ldm_minutes": 1.0, "ldm_max_steps": 3, "ae_batch_size": 4,
        "ldm_batch_size": 4, "val_images": 8, "samples_per_class": 1, "text_samples": 4, "unconditional_samples": 12,
        "data_histogram_samples": 48, "ddim_steps": 3, "fast_steps": 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ldm.cli.quickstart",
        description="Train the demo autoencoder and class-/text-conditional latent diffusion models on the "
                    "embedded shapes data, sample with DDIM and DPM-Solver++ under classifier-free guidance, "
                    "and write an image grid plus a metrics report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="logs/quickstart", help="output directory (runs, grids, report)")
    parser.add_argument("--fast", action="store_true",
                        help="smoke test: a few training steps, tiny batches and few samples (seconds, not minutes)")
    parser.add_argument("--ae-minutes", type=float, default=None, help="time box of the autoencoder training")
    parser.add_argument("--ae-steps", type=int, default=None, help="step cap of the autoencoder training")
    parser.add_argument("--ldm-minutes", type=float, default=None, help="time box of EACH latent diffusion training")
    parser.add_argument("--ldm-steps", type=int, default=None, help="step cap of each latent diffusion training")
    parser.add_argument("--samples-per-class", type=int, default=None, help="class-conditional samples per class")
    parser.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps of the main samples")
    parser.add_argument("--dpm-steps", type=int, default=None, help="DPM-Solver++ steps (fewer than DDIM)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (> 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 = auto (the idle cores: oversubscribing a busy CPU is very slow)")
    parser.add_argument("--seed", type=int, default=23, help="training and sampling seed")
    parser.add_argument("--ae-ckpt", default=None,
                        help="skip stage 1 and use this quick-start autoencoder checkpoint (e.g. a previous run's "
                             "runs/<ts>_quickstart_autoencoder/checkpoints/last.ckpt)")
    return parser


def budget_from_args(args: argparse.Namespace) -> Budget:
    budget = Budget(**FAST) if args.fast else Budget()
    for flag, name in (("ae_minutes", "ae_minutes"), ("ae_steps", "ae_max_steps"), ("ldm_minutes", "ldm_minutes"),
                       ("ldm_steps", "ldm_max_steps"), ("samples_per_class", "samples_per_class"),
                       ("ddim_steps", "ddim_steps"), ("dpm_steps", "fast_steps"), ("guidance_scale", "guidance_scale")):
        value = getattr(args, flag)
        if value is not None:
            if value <= 0:
                raise SystemExit(f"quickstart: --{flag.replace('_', '-')} must be positive, got {value}")
            setattr(budget, name, type(getattr(budget, name))(value))
    return budget


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


def _max_time(minutes: float) -> str:
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- training ----------------------------------------------------------------------------------------


def _train(config_path: Path, logroot: Path, name: str, *, max_steps: int, minutes: float, batch_size: int,
           seed: int, overrides: Sequence[str] = ()):
    from ldm.cli.train import main as train_main

    argv = ["-b", str(config_path), "-t", "--no-test", "-l", str(logroot), "-n", name, "-s", str(seed),
            "--max_steps", str(max_steps), "--max_time", _max_time(minutes),
            f"data.params.batch_size={batch_size}", *overrides]
    print(f"[quickstart] python main.py {' '.join(argv)}", flush=True)
    start = time.time()
    result = train_main(argv)
    seconds = time.time() - start
    checkpoint = Path(result.paths.ckptdir) / "last.ckpt"
    if not checkpoint.is_file():
        raise RuntimeError(f"training {name} finished without writing {checkpoint}")
    return result, checkpoint, seconds


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
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    if not checkpoint.is_file():
        raise SystemExit(f"quickstart: --ae-ckpt {checkpoint} does not exist")
    config = OmegaConf.load(AUTOENCODER_CONFIG).model
    config.params.ckpt_path = str(checkpoint)
    return instantiate_from_config(config, node="model")


# -- evaluation --------------------------------------------------------------------------------------


def autoencoder_psnr(model, n_images: int, batch_size: int = 64) -> float:
    """Mean validation PSNR (dB, images in [-1, 1]) of ``D(mean of E(x))``."""
    import torch

    from ldm.data.shapes import ShapesValidation
    from ldm.eval.reconstruction import psnr_per_image, reconstruct

    data = ShapesValidation(size=32, length=n_images, seed=0)
    model.eval()
    values = []
    for start in range(0, n_images, batch_size):
        images = torch.stack([data[i]["image"] for i in range(start, min(n_images, start + batch_size))])
        with torch.no_grad():
            values.append(psnr_per_image(reconstruct(model, images).clamp(-1, 1), images))
    return float(torch.cat(values).mean())


def data_class_histogram(n_samples: int) -> list[float]:
    """Class frequencies of the first ``n_samples`` training images."""
    import numpy as np

    from ldm.data.shapes import NUM_CLASSES, ShapesTrain

    data = ShapesTrain(size=32, length=max(1, n_samples), seed=0)
    labels = [data[i]["class_label"] for i in range(len(data))]
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return (counts / counts.sum()).tolist()


def sample_histogram(predicted) -> tuple[list[float], float]:
    """(class frequencies, undecidable fraction) of oracle predictions (-1 = undecidable)."""
    import numpy as np

    from ldm.data.shapes import NUM_CLASSES

    predicted = np.asarray(predicted)
    counts = np.bincount(predicted[predicted >= 0], minlength=NUM_CLASSES).astype(float)
    return (counts / max(1, predicted.size)).tolist(), float((predicted < 0).mean()) if predicted.size else float("nan")


def total_variation(p: Sequence[float], q: Sequence[float], p_extra: float = 0.0) -> float:
    """``1/2 sum_k |p_k - q_k|``; ``p_extra`` is mass of ``p`` outside ``q``'s support (undecidable)."""
    return 0.5 * (sum(abs(a - b) for a, b in zip(p, q)) + p_extra)


def _noise(n: int, model, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, model.channels, model.image_size, model.image_size), generator=generator)


def evaluate_class_model(model, budget: Budget, seed: int) -> tuple[dict, Any]:
    import torch

    from ldm.data.shapes import NUM_CLASSES
    from ldm.eval.shapes_oracle import oracle_accuracy, predict_class

    labels = torch.arange(NUM_CLASSES).repeat_interleave(budget.samples_per_class)
    x_T = _noise(labels.numel(), model, seed)
    g = budget.guidance_scale

    def accuracy(sampler: str, steps: int, scale: float):
        start = time.time()
        images = model.sample(labels, sampler=sampler, steps=steps, eta=0.0, guidance_scale=scale, x_T=x_T.clone())
        return oracle_accuracy(images, labels), images, time.time() - start

    acc_cfg, grid_images, ddim_seconds = accuracy("ddim", budget.ddim_steps, g)
    acc_scale1, _, _ = accuracy("ddim", budget.ddim_steps, 1.0)
    acc_ddim_few, _, _ = accuracy("ddim", budget.fast_steps, g)
    acc_dpm_few, _, dpm_seconds = accuracy("dpm_solver++", budget.fast_steps, g)

    n_uncond = budget.unconditional_samples
    null = model.null_conditioning(n_uncond)
    uncond = model.sample(conditioning=null, sampler="ddim", steps=budget.ddim_steps, eta=0.0,
                          x_T=_noise(n_uncond, model, seed + 1))
    histogram, undecidable = sample_histogram(predict_class(uncond))
    data_hist = data_class_histogram(budget.data_histogram_samples)
    report = {
        "guidance_scale": g,
        "ddim_steps": budget.ddim_steps,
        "fast_steps": budget.fast_steps,
        "num_samples": int(labels.numel()),
        "oracle_accuracy_cfg": acc_cfg,
        "oracle_accuracy_scale1": acc_scale1,
        "oracle_accuracy_ddim_fast_steps_cfg": acc_ddim_few,
        "oracle_accuracy_dpm_solver_fast_steps_cfg": acc_dpm_few,
        "ddim_seconds": ddim_seconds,
        "dpm_solver_seconds": dpm_seconds,
        "unconditional": {
            "num_samples": n_uncond,
            "class_histogram": histogram,
            "undecidable_fraction": undecidable,
            "data_class_histogram": data_hist,
            "total_variation": total_variation(histogram, data_hist, undecidable),
        },
    }
    return report, grid_images


def evaluate_text_model(model, budget: Budget, seed: int) -> tuple[dict, Any]:
    from ldm.data.shapes import ShapesValidation
    from ldm.eval.shapes_oracle import caption_accuracy

    data = ShapesValidation(size=32, length=max(1, budget.text_samples), seed=0)
    captions = [data[i]["caption"] for i in range(len(data))]
    x_T = _noise(len(captions), model, seed + 2)
    g = budget.guidance_scale

    def accuracy(sampler: str, steps: int, scale: float):
        images = model.sample(captions, sampler=sampler, steps=steps, eta=0.0, guidance_scale=scale, x_T=x_T.clone())
        return caption_accuracy(images, captions), images

    acc_cfg, images = accuracy("ddim", budget.ddim_steps, g)
    acc_scale1, _ = accuracy("ddim", budget.ddim_steps, 1.0)
    acc_dpm_few, _ = accuracy("dpm_solver++", budget.fast_steps, g)
    report = {
        "guidance_scale": g,
        "ddim_steps": budget.ddim_steps,
        "fast_steps": budget.fast_steps,
        "num_samples": len(captions),
        "oracle_accuracy_cfg": acc_cfg,
        "oracle_accuracy_scale1": acc_scale1,
        "oracle_accuracy_dpm_solver_fast_steps_cfg": acc_dpm_few,
        "captions": captions[:16],
    }
    return report, images


def save_grid(images, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.clamp(-1, 1) + 1) / 2, str(path), nrow=nrow, padding=1)


# -- report ------------------------------------------------------------------------------------------


def target_summary(report: dict) -> dict:
    values = {
        "autoencoder_psnr_db": report["autoencoder"]["psnr_db"],
        "class_oracle_accuracy_cfg": report["class_conditional"]["oracle_accuracy_cfg"],
        "text_oracle_accuracy_cfg": report["text_conditional"]["oracle_accuracy_cfg"],
    }
    summary = {name: {"value": values[name], "target": threshold,
                      "met": bool(values[name] >= threshold if kind == "min" else values[name] <= threshold)}
               for name, (threshold, kind) in TARGETS.items()}
    for kind in ("class_conditional", "text_conditional"):
        part = report[kind]
        summary[f"{kind}_guidance_beats_scale1"] = {
            "value": part["oracle_accuracy_cfg"] - part["oracle_accuracy_scale1"], "target": 0.0,
            "met": bool(part["oracle_accuracy_cfg"] > part["oracle_accuracy_scale1"])}
    return summary


def markdown_report(report: dict) -> str:
    ae, cls, txt = report["autoencoder"], report["class_conditional"], report["text_conditional"]
    unc = cls["unconditional"]
    g = cls["guidance_scale"]
    rows = [
        ("Autoencoder PSNR (validation, dB)", f"{ae['psnr_db']:.2f}", "≥ 28"),
        (f"Class-conditional oracle accuracy, DDIM {cls['ddim_steps']} steps, CFG {g:g}",
         f"{cls['oracle_accuracy_cfg']:.1%}", "≥ 90%"),
        ("  same, guidance scale 1", f"{cls['oracle_accuracy_scale1']:.1%}", "< CFG"),
        (f"  DDIM {cls['fast_steps']} steps, CFG {g:g}", f"{cls['oracle_accuracy_ddim_fast_steps_cfg']:.1%}", ""),
        (f"  DPM-Solver++ {cls['fast_steps']} steps, CFG {g:g}",
         f"{cls['oracle_accuracy_dpm_solver_fast_steps_cfg']:.1%}", "≈ DDIM"),
        (f"Text-conditional oracle accuracy, DDIM {txt['ddim_steps']} steps, CFG {g:g}",
         f"{txt['oracle_accuracy_cfg']:.1%}", "≥ 80%"),
        ("  same, guidance scale 1", f"{txt['oracle_accuracy_scale1']:.1%}", "< CFG"),
        (f"  DPM-Solver++ {txt['fast_steps']} steps, CFG {g:g}",
         f"{txt['oracle_accuracy_dpm_solver_fast_steps_cfg']:.1%}", "≈ DDIM"),
        ("Unconditional samples: TV distance of the class histogram to the data's",
         f"{unc['total_variation']:.3f}", "small"),
        ("  undecidable (no shape found by the oracle)", f"{unc['undecidable_fraction']:.1%}", ""),
    ]
    summary = (f"Total time {report['seconds_total'] / 60:.1f} min on {report['threads']} CPU thread(s); "
               f"autoencoder {ae['steps']} steps ({ae['train_seconds'] / 60:.1f} min), class LDM "
               f"{cls['train_steps']} steps ({cls['train_seconds'] / 60:.1f} min), text LDM {txt['train_steps']} "
               f"steps ({txt['train_seconds'] / 60:.1f} min).")
    lines = ["# Quick-start report", "", summary, "",
             "| metric | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Targets: " + ", ".join(f"{k} {'met' if v['met'] else 'NOT met'}"
                                           for k, v in report["targets"].items()), "",
              f"Grid: `{report['grid']}` (class-conditional, one row per class); text: `{report['grid_text']}`.", ""]
    return "\n".join(lines)


def _finite_check(report: dict) -> None:
    def walk(value, where):
        if isinstance(value, float) and not math.isfinite(value):
            print(f"[quickstart] warning: {where} is {value}", file=sys.stderr)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
    walk(report, "report")


# -- driver ------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    budget = budget_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)
    print(f"[quickstart] output: {out} | torch threads: {threads} | "
          f"{'fast smoke-test mode' if args.fast else 'full size'}", flush=True)
    started = time.time()

    # stage 1
    if args.ae_ckpt:
        ae_model, ae_ckpt = load_autoencoder(Path(args.ae_ckpt)), Path(args.ae_ckpt)
        ae_steps, ae_seconds, ae_dir = 0, 0.0, str(Path(args.ae_ckpt).resolve().parents[1])
    else:
        ae_run, ae_ckpt, ae_seconds = _train(AUTOENCODER_CONFIG, out / "runs", "quickstart_autoencoder",
                                             max_steps=budget.ae_max_steps, minutes=budget.ae_minutes,
                                             batch_size=budget.ae_batch_size, seed=args.seed)
        ae_model, ae_steps, ae_dir = ae_run.model, int(ae_run.trainer.global_step), str(ae_run.logdir)
        del ae_run
    psnr = autoencoder_psnr(ae_model, budget.val_images)
    print(f"[quickstart] autoencoder: {ae_steps} steps, validation PSNR {psnr:.2f} dB, checkpoint {ae_ckpt}",
          flush=True)
    report: dict[str, Any] = {"autoencoder": {"psnr_db": psnr, "steps": ae_steps, "train_seconds": ae_seconds,
                                              "checkpoint": str(ae_ckpt), "run": ae_dir}}
    del ae_model

    # stage 2: one model per condition, each on the autoencoder just trained
    grids = {}
    for kind in CONDITION_KINDS:
        config = ldm_config_for(kind, out)
        run_result, ckpt, seconds = _train(
            config, out / "runs", f"quickstart_ldm_{kind}", max_steps=budget.ldm_max_steps,
            minutes=budget.ldm_minutes, batch_size=budget.ldm_batch_size, seed=args.seed,
            overrides=[f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}", *budget.extra_overrides])
        model = run_result.model.cpu().eval()
        evaluate = evaluate_class_model if kind == "class" else evaluate_text_model
        part, grids[kind] = evaluate(model, budget, args.seed)
        part.update(train_steps=int(run_result.trainer.global_step), train_seconds=seconds, checkpoint=str(ckpt),
                    run=str(run_result.logdir), scale_factor=float(model.scale_factor))
        report[f"{kind}_conditional"] = part
        print(f"[quickstart] {kind}-conditional: {part['train_steps']} steps, oracle accuracy "
              f"{part['oracle_accuracy_cfg']:.1%} (CFG {budget.guidance_scale:g}) vs "
              f"{part['oracle_accuracy_scale1']:.1%} (scale 1)", flush=True)
        del run_result, model

    grid, grid_text = out / "grid.png", out / "grid_text.png"
    save_grid(grids["class"], grid, nrow=budget.samples_per_class)
    save_grid(grids["text"], grid_text, nrow=8)
    report.update(grid=str(grid), grid_text=str(grid_text), threads=threads, fast=bool(args.fast),
                  seconds_total=time.time() - started, command=" ".join(["python -m ldm.cli.quickstart", *(argv or [])]))
    report["targets"] = target_summary(report)
    _finite_check(report)
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
