"""Quality of the spatially conditioned demo models (super-resolution, mask-to-image, inpainting).

``python -m benchmarks.bench_spatial_quality [--out logs/spatial_quality] [--ae-minutes 4]
[--ldm-minutes 4] [--ae-ckpt CKPT] [--n 128]``

Trains (time-boxed, through the training CLI) the quick-start KL-f4 autoencoder, then the three demo
configs on its latents - ``configs/demo/ldm_{superres,mask2img,inpaint}_kl_f4.yaml`` - and scores
``--n`` validation images of the shapes data (:mod:`ldm.data.shapes_tasks`) per mode:

* super-resolution 8x8 -> 32x32: PSNR of the samples vs the high-res image, next to bicubic
  upsampling of the same input and the autoencoder's own reconstruction (the ceiling);
* mask-to-image: IoU between the silhouette the shapes oracle finds in the sample and the input
  mask (guidance scale 1 and 2), next to the IoU of the input mask with another image's mask (chance);
* inpainting: mean absolute error on the known pixels (decoded, no paste-back) with the known
  latents held during sampling (``sample inpaint``'s default) and without (``--no-blend``) vs the
  autoencoder's reconstruction error there, and the oracle's (shape, colour) accuracy on the filled images vs the
  accuracy on the masked input (how much of the answer the hole hid).

Writes ``<out>/report.json`` and prints a markdown table (docs/quality.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT as ROOT

MODES = ("superres", "mask2img", "inpaint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="logs/spatial_quality")
    parser.add_argument("--ae-minutes", type=float, default=4.0)
    parser.add_argument("--ldm-minutes", type=float, default=4.0)
    parser.add_argument("--ae-ckpt", default=None, help="reuse a quick-start autoencoder checkpoint")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--n", type=int, default=128, help="validation images per mode")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="append", default=[], metavar="MODE=RUN_DIR",
                        help="score an already trained run of MODE instead of training one (repeatable)")
    return parser


def _validation(n: int):
    import torch

    from ldm.data.shapes_tasks import ShapesTasksValidation

    data = ShapesTasksValidation(size=32, length=n, seed=0, lowres_size=8)
    samples = [data[i] for i in range(n)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "LR_image", "mask", "inpaint_mask",
                                                               "masked_image")}
    batch["class_label"] = torch.tensor([s["class_label"] for s in samples])
    return batch


def _sample(model, source, n: int, steps: int, seed: int, scale: float = 1.0, sample_kwargs: dict | None = None):
    import torch

    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, model.channels, model.image_size, model.image_size), generator=generator)
    return model.sample(source, steps=steps, x_T=x_T, guidance_scale=scale, eta=0.0, sample_kwargs=sample_kwargs)


def _iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def silhouette_iou(images, masks) -> tuple[float, float]:
    """(mean IoU of the oracle's silhouette with ``masks``, fraction of images with a shape found)."""
    import numpy as np

    from ldm.eval.shapes_oracle import _to_unit_hwc, classify_image

    values, found = [], 0
    for image, mask in zip(_to_unit_hwc(images), masks[:, 0].numpy() > 0.5):
        _, _, silhouette = classify_image(image)
        if silhouette is None:
            values.append(0.0)
            continue
        found += 1
        values.append(_iou(silhouette, mask))
    return float(np.mean(values)), found / len(values)


def evaluate(mode: str, model, batch: dict, steps: int, seed: int) -> dict:
    import torch

    from ldm.eval.reconstruction import psnr_per_image
    from ldm.eval.shapes_oracle import oracle_accuracy

    n = batch["image"].shape[0]
    image = batch["image"]
    with torch.no_grad():
        recon = model.decode_samples(model.encode_to_latent(image, sample=False))
    if mode == "superres":
        out = _sample(model, batch["LR_image"], n, steps, seed)
        bicubic = torch.nn.functional.interpolate(batch["LR_image"], size=32, mode="bicubic").clamp(-1, 1)
        return {"psnr_db": float(psnr_per_image(out, image).mean()),
                "bicubic_psnr_db": float(psnr_per_image(bicubic, image).mean()),
                "autoencoder_psnr_db": float(psnr_per_image(recon, image).mean())}
    if mode == "mask2img":
        mask = batch["mask"]
        result = {}
        for scale in (1.0, 2.0):
            iou, found = silhouette_iou(_sample(model, mask, n, steps, seed, scale), mask)
            result[f"iou_scale{scale:g}"], result[f"shape_found_scale{scale:g}"] = iou, found
        result["iou_real_images"] = silhouette_iou(image, mask)[0]
        shifted = torch.roll(mask, 1, dims=0)
        result["iou_chance"] = sum(_iou(a, b) for a, b in zip(shifted[:, 0].numpy() > .5, mask[:, 0].numpy() > .5)) / n
        return result
    hole = batch["inpaint_mask"]
    inputs = {k: batch[k] for k in ("masked_image", "inpaint_mask")}
    free = _sample(model, inputs, n, steps, seed)
    held_inputs = held_latents(model, image, hole)
    held = _sample(model, inputs, n, steps, seed, sample_kwargs=held_inputs)
    keep = 1.0 - hole
    # pixels whose whole latent cell is known (a cell the hole touches is regenerated, pixels and all)
    cells = torch.nn.functional.interpolate(held_inputs["mask"], size=image.shape[-2:], mode="nearest")
    labels = batch["class_label"]

    def known_error(images, region) -> float:
        return float(((images - image).abs() * region).sum() / (region.sum() * 3))

    return {"known_region_mae": known_error(held, keep), "known_region_mae_no_blend": known_error(free, keep),
            "autoencoder_known_region_mae": known_error(recon, keep),
            "known_cells_mae": known_error(held, cells), "autoencoder_known_cells_mae": known_error(recon, cells),
            "known_cells_fraction": float(cells.mean()), "known_fraction": float(keep.mean()),
            "filled_oracle_accuracy": oracle_accuracy(held, labels),
            "filled_pasted_oracle_accuracy": oracle_accuracy(keep * image + hole * held, labels),
            "filled_oracle_accuracy_no_blend": oracle_accuracy(free, labels),
            "masked_input_oracle_accuracy": oracle_accuracy(batch["masked_image"], labels),
            "real_images_oracle_accuracy": oracle_accuracy(image, labels)}


def held_latents(model, image, hole) -> dict:
    """What ``sample inpaint`` does by default: the known latents (encoded image, mean of the
    posterior) held at every step outside the hole (a latent cell is free if any of its pixels is)."""
    import torch

    from ldm.cli.sampling_model import downsample_mask, first_stage_factor

    with torch.no_grad():
        known = model.encode_to_latent(image, sample=False)
    return {"known": known, "mask": 1.0 - downsample_mask(hole, first_stage_factor(model))}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    from ldm.cli.quickstart import load_autoencoder
    from ldm.cli.quickstart_eval import autoencoder_psnr
    from ldm.cli.quickstart_machine import pick_threads
    from ldm.cli.quickstart_training import AUTOENCODER_CONFIG, train_in_process
    from ldm.precision import cpu_model

    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else list(argv)
    report: dict = {"command": " ".join(["python -m benchmarks.bench_spatial_quality", *given]),
                    "threads": threads, "cpu": cpu_model()}
    if args.ae_ckpt:
        ae_ckpt, ae_steps, ae_seconds = Path(args.ae_ckpt), 0, 0.0
        ae_model = load_autoencoder(ae_ckpt)
    else:
        ae_run, ae_ckpt, ae_seconds = train_in_process(
            AUTOENCODER_CONFIG, out / "runs", "autoencoder", steps=100_000, minutes=args.ae_minutes, batch_size=16,
            seed=args.seed, label="autoencoder")
        ae_model, ae_steps = ae_run.model, int(ae_run.trainer.global_step)
    report["autoencoder"] = {"psnr_db": autoencoder_psnr(ae_model, 256), "steps": ae_steps,
                             "train_seconds": ae_seconds, "checkpoint": str(ae_ckpt)}
    print(f"[spatial] autoencoder {report['autoencoder']}", flush=True)
    batch = _validation(args.n)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    for mode in args.modes.split(","):
        if mode in reuse:  # score an already trained run
            from ldm.cli.load_model import load_model

            model = load_model(run=reuse[mode], device="cpu").model
            trained = {"train_steps": None, "train_seconds": None, "run": reuse[mode]}
        else:
            config = ROOT / "configs" / "demo" / f"ldm_{mode}_kl_f4.yaml"
            run, _, seconds = train_in_process(
                config, out / "runs", f"ldm_{mode}", steps=100_000, minutes=args.ldm_minutes, batch_size=32,
                seed=args.seed, label=None,
                overrides=[f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}",
                           "lightning.trainer.limit_val_batches=0", "lightning.trainer.enable_progress_bar=false"])
            model = run.model.cpu().eval()
            trained = {"train_steps": int(run.trainer.global_step), "train_seconds": round(seconds, 1),
                       "run": str(run.logdir)}
        report[mode] = part = {**evaluate(mode, model, batch, args.steps, args.seed), **trained}
        print(f"[spatial] {mode}: {part}", flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"[spatial] total {time.time() - started:.0f} s")
