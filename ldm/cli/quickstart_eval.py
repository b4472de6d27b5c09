"""Sampling and scoring for the quick start: autoencoder PSNR, oracle accuracy, unconditional class histogram.

* Classifier-free guidance (Ho & Salimans 2022): ``eps = eps(z, null) + s (eps(z, c) - eps(z, null))``;
  every sampler starts from noise drawn with its own seeded generator, so two runs with the same seed and
  weights sample the same images.
* Oracle accuracy (:mod:`ldm.eval.shapes_oracle`): the fraction of images whose shape *and* colour match
  the requested class / caption.
* Unconditional (null-condition) samples: total variation distance ``TV(p, q) = 1/2 sum_k |p_k - q_k|``
  between their class histogram ``p`` and the data's ``q``; samples the oracle cannot decide count as
  mass outside ``q``'s support.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ldm.cli.quickstart_budget import Budget


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


def data_class_histogram() -> list[float]:
    """The data's class distribution. :func:`ldm.data.shapes.render_sample` draws shape and colour
    independently and uniformly, so every class has probability ``1 / NUM_CLASSES`` exactly (comparing
    with an empirical histogram instead would add that sample's noise to the TV distance)."""
    from ldm.data.shapes import NUM_CLASSES

    return [1.0 / NUM_CLASSES] * NUM_CLASSES


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
    data_hist = data_class_histogram()
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
    import torch

    from ldm.data.shapes import ShapesValidation, parse_caption
    from ldm.eval.shapes_oracle import caption_accuracy, predict_attributes

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
    # which word failed: the shape or the colour (the failure mode of docs/quality.md: square vs circle)
    wanted = torch.tensor([parse_caption(c) for c in captions], dtype=torch.long).reshape(-1, 2)
    shape, color = predict_attributes(images)
    report = {
        "guidance_scale": g,
        "ddim_steps": budget.ddim_steps,
        "fast_steps": budget.fast_steps,
        "num_samples": len(captions),
        "oracle_accuracy_cfg": acc_cfg,
        "oracle_accuracy_scale1": acc_scale1,
        "oracle_accuracy_dpm_solver_fast_steps_cfg": acc_dpm_few,
        "shape_accuracy_cfg": float((shape == wanted[:, 0]).float().mean()),
        "color_accuracy_cfg": float((color == wanted[:, 1]).float().mean()),
        "captions": captions[:16],
    }
    return report, images


def save_grid(images, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.clamp(-1, 1) + 1) / 2, str(path), nrow=nrow, padding=1)
