"""One latent model of the quick start, in its own single-threaded process: train it, sample, score.

``python -m ldm.cli.quickstart_stage --kind class --budget BUDGET.json --seed 23 --ae-ckpt AE.ckpt
--cache CACHE --out DIR`` - the driver (:mod:`ldm.cli.quickstart`) starts one per conditioner, side by
side (:mod:`ldm.cli.quickstart_processes`). It trains ``configs/demo/quickstart_ldm.yaml`` with that
conditioner on the latent cache of the autoencoder ``AE.ckpt`` for the budget's steps, evaluates it
(:mod:`ldm.cli.quickstart_eval`) and writes ``DIR/<kind>_part.json`` (its part of the report) and the
image grid (``DIR/grid.png`` for class, ``DIR/grid_text.png`` for text).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ldm.cli.quickstart_budget import Budget
from ldm.cli.quickstart_training import CONDITION_KINDS, ldm_config_for, steps_per_second, train_in_process

GRID_NAMES = {"class": "grid.png", "text": "grid_text.png"}


def part_path(out: Path, kind: str) -> Path:
    return Path(out) / f"{kind}_part.json"


def write_budget(budget: Budget, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(budget), indent=2))
    return path


def read_budget(path: Path) -> Budget:
    return Budget(**json.loads(Path(path).read_text()))


def train_and_evaluate(kind: str, budget: Budget, seed: int, ae_ckpt: Path, cache: Path | None, out: Path) -> dict:
    """Train the ``kind`` latent model on ``ae_ckpt``'s latents, evaluate it, save its grid; its report part."""
    from ldm.cli.quickstart_eval import evaluate_class_model, evaluate_text_model, save_grid

    steps = budget.steps(kind)
    config = ldm_config_for(kind, out, cache=cache, steps=steps)
    result, checkpoint, seconds = train_in_process(
        config, out / "runs", f"quickstart_ldm_{kind}", steps=steps, minutes=budget.ldm_minutes,
        batch_size=budget.ldm_batch_size, seed=seed, label=f"{kind} LDM", precision=budget.precision,
        overrides=[f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}", *budget.extra_overrides])
    model = result.model.cpu().eval()
    evaluate = evaluate_class_model if kind == "class" else evaluate_text_model
    part, images = evaluate(model, budget, seed)
    grid = out / GRID_NAMES[kind]
    save_grid(images, grid, nrow=budget.samples_per_class if kind == "class" else 8)
    trained = int(result.trainer.global_step)
    part.update(train_steps=trained, steps_budget=steps, train_seconds=seconds,
                steps_per_second=steps_per_second(result), checkpoint=str(checkpoint),
                run=str(result.logdir), scale_factor=float(model.scale_factor),
                precision=str(result.trainer.precision), grid=str(grid), latent_cache=str(cache) if cache else None)
    print(f"[quickstart] {kind}-conditional: {trained} steps ({part['steps_per_second']:.1f} steps/s), oracle "
          f"accuracy {part['oracle_accuracy_cfg']:.1%} (CFG {budget.guidance_scale:g}) vs "
          f"{part['oracle_accuracy_scale1']:.1%} (scale 1)", flush=True)
    return part


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldm.cli.quickstart_stage",
                                     description="Train and evaluate one latent model of the quick start "
                                                 "(started by python -m ldm.cli.quickstart).")
    parser.add_argument("--kind", choices=CONDITION_KINDS, required=True)
    parser.add_argument("--budget", required=True, help="the driver's step budget as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ae-ckpt", required=True, help="the quick-start autoencoder checkpoint")
    parser.add_argument("--cache", default=None, help="latent cache of that autoencoder (default: encode on the fly)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the quick start uses 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    part = train_and_evaluate(args.kind, read_budget(Path(args.budget)), args.seed, Path(args.ae_ckpt),
                              Path(args.cache) if args.cache else None, out)
    part_path(out, args.kind).write_text(json.dumps(part, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
