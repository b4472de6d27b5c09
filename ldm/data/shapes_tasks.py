"""The shapes data with the inputs of the spatially conditioned tasks (LDM Sec. 4.4-4.5).

On top of every :class:`~ldm.data.shapes.ShapesDataset` key (``image``, ``mask`` = the shape's
silhouette for mask-to-image, ``class_label``, ``caption``, ...) a sample carries:

* ``LR_image`` - the image area-downsampled to ``lowres_size`` (``3×s×s`` in [-1, 1]), the input of
  super-resolution (the original ``bsr_sr`` key);
* ``inpaint_mask`` - a rectangle to fill (``1×H×W``, 1 = fill), its centre drawn inside the shape's
  bounding box so the hole covers part of the shape, its sides ``hole_min``-``hole_max`` of the image;
* ``masked_image`` - ``image * (1 - inpaint_mask)`` (:func:`ldm.models.conditioning.masked_image`).

Like the base dataset every sample depends only on ``(seed, split, index)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldm.data.contracts import masked_image
from ldm.data.shapes import SPLIT_IDS, ShapesDataset


def box_mask(rng: np.random.Generator, silhouette: np.ndarray, hole_min: float, hole_max: float) -> np.ndarray:
    """A ``H×W`` float rectangle (1 inside) centred at a random point of ``silhouette``'s bounding box."""
    size = silhouette.shape[-1]
    rows = np.flatnonzero(silhouette.any(axis=1))
    cols = np.flatnonzero(silhouette.any(axis=0))
    cy = float(rng.uniform(rows[0], rows[-1] + 1))
    cx = float(rng.uniform(cols[0], cols[-1] + 1))
    h, w = (float(v) * size for v in rng.uniform(hole_min, hole_max, size=2))
    top, left = round(max(0.0, cy - h / 2)), round(max(0.0, cx - w / 2))
    bottom, right = round(min(size, cy + h / 2)), round(min(size, cx + w / 2))
    mask = np.zeros((size, size), dtype=np.float32)
    mask[top:max(bottom, top + 1), left:max(right, left + 1)] = 1.0
    return mask


class ShapesTasks(ShapesDataset):
    def __init__(self, size: int = 32, length: int | None = None, seed: int = 0, split: str = "train",
                 lowres_size: int = 8, hole_min: float = 0.3, hole_max: float = 0.5, **kwargs):
        super().__init__(size=size, length=length, seed=seed, split=split, **kwargs)
        if not 1 <= int(lowres_size) <= self.size or self.size % int(lowres_size):
            raise ValueError(f"ShapesTasks: lowres_size must divide size {self.size}, got {lowres_size}")
        if not 0.0 < hole_min <= hole_max <= 1.0:
            raise ValueError(f"ShapesTasks: need 0 < hole_min <= hole_max <= 1, got {hole_min}, {hole_max}")
        self.lowres_size = int(lowres_size)
        self.hole_min, self.hole_max = float(hole_min), float(hole_max)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        image = sample["image"]
        sample["LR_image"] = F.interpolate(image[None], size=(self.lowres_size,) * 2, mode="area")[0]
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(index) % self.length, 1])
        hole = torch.from_numpy(box_mask(rng, sample["mask"][0].numpy() > 0.5, self.hole_min, self.hole_max))[None]
        sample["inpaint_mask"] = hole
        sample["masked_image"] = masked_image(image, hole)
        return sample


class ShapesTasksTrain(ShapesTasks):
    def __init__(self, size: int = 32, length: int = 10_000, seed: int = 0, **kwargs):
        super().__init__(size=size, length=length, seed=seed, split="train", **kwargs)


class ShapesTasksValidation(ShapesTasks):
    def __init__(self, size: int = 32, length: int = 1_000, seed: int = 0, **kwargs):
        super().__init__(size=size, length=length, seed=seed, split="validation", **kwargs)
