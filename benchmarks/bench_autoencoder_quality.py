"""Train a (demo) first-stage autoencoder from a config and report PSNR / SSIM / LPIPS and speed.

    python -m benchmarks.bench_autoencoder_quality --config configs/demo/autoencoder_kl_f4.yaml [--minutes 10]

Builds the model and the ``data.params.train`` / ``validation`` datasets from the config, trains with
a Lightning ``Trainer`` (the ``lightning.trainer`` section; ``--max-steps`` / ``--minutes`` override),
then evaluates the deterministic reconstruction (posterior mode / quantised latent) on the whole
validation set. LPIPS uses the loss's LPIPS network: with ``perceptual_backbone: random`` it is
*not* comparable to published LPIPS numbers (the printout says so).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.common import add_threads_argument, describe_device, set_threads


def _build(config_path: str, overrides: list[str]):
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(overrides))
    model = instantiate_from_config(config.model, node="model")
    data = config.data.params
    train = instantiate_from_config(data.train, node="data.params.train")
    val = instantiate_from_config(data.validation, node="data.params.validation")
    trainer_cfg = OmegaConf.to_container(config.get("lightning", {}).get("trainer", {}), resolve=True)
    return model, train, val, int(data.get("batch_size", 16)), trainer_cfg


@torch.no_grad()
def evaluate(model, loader) -> dict:
    """Mean per-image PSNR (dB), SSIM and LPIPS of the deterministic reconstruction."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
    lpips_values = []
    model.eval()
    perceptual = getattr(model.loss, "perceptual_loss", None)
    seen, start = 0, time.perf_counter()
    for batch in loader:
        x = model.get_input(batch, model.image_key)
        xrec, _ = model.reconstruct(x, sample=False)
        xrec = xrec.clamp(-1, 1)
        psnr.update((xrec + 1) / 2, (x + 1) / 2)
        ssim.update((xrec + 1) / 2, (x + 1) / 2)
        if perceptual is not None:
            lpips_values.append(perceptual(x, xrec).flatten())
        seen += x.shape[0]
    elapsed = time.perf_counter() - start
    result = {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "eval_images_per_s": seen / elapsed}
    if lpips_values:
        result["lpips"] = float(torch.cat(lpips_values).mean())
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo/autoencoder_kl_f4.yaml")
    parser.add_argument("--max-steps", type=int, default=None, help="Lightning optimiser steps (both optimisers count)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    add_threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.params.ddconfig.ch=64")
    args = parser.parse_args(argv)

    import lightning as L

    from ldm.precision import resolve_trainer_precision

    set_threads(args.threads)
    L.seed_everything(args.seed, workers=True)
    model, train, val, batch_size, trainer_cfg = _build(args.config, args.set)
    trainer_cfg.pop("accumulate_grad_batches", None)
    if args.max_steps is not None:
        trainer_cfg["max_steps"] = args.max_steps
    if args.minutes is not None:
        trainer_cfg["max_time"] = {"seconds": int(args.minutes * 60)}
    trainer_cfg.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer_cfg.setdefault("accelerator", "cpu")
    resolve_trainer_precision(trainer_cfg)  # the demo configs say precision: auto
    trainer_cfg.pop("val_check_interval", None)
    trainer_cfg["limit_val_batches"] = 0  # evaluation happens once, below, on the full validation set
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    val_loader = DataLoader(val, batch_size=64, shuffle=False, num_workers=0)

    trainer = L.Trainer(**trainer_cfg)
    start = time.perf_counter()
    trainer.fit(model, train_loader)
    train_seconds = time.perf_counter() - start
    images = model.gan_step * batch_size * model.accumulate_grad_batches
    result = evaluate(model, val_loader)
    result.update(train_seconds=train_seconds, ae_updates=model.gan_step, train_images_per_s=images / train_seconds)
    backbone = getattr(getattr(model.loss, "perceptual_loss", None), "backbone", None)
    print(f"config: {args.config}")
    print(f"# {describe_device(trainer.strategy.root_device)}, precision {trainer.precision}")
    print(f"trained {model.gan_step} autoencoder updates ({images} images) in {train_seconds:.0f} s "
          f"-> {result['train_images_per_s']:.1f} train images/s; eval {result['eval_images_per_s']:.1f} images/s")
    print(f"validation ({len(val)} images): PSNR {result['psnr']:.2f} dB  SSIM {result['ssim']:.4f}", end="")
    if "lpips" in result:
        note = " (random VGG backbone: not comparable to published LPIPS)" if backbone == "random" else ""
        print(f"  LPIPS {result['lpips']:.4f}{note}")
    else:
        print()
    return result


if __name__ == "__main__":
    main()
