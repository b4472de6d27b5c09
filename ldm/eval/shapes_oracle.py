"""A training-free oracle that reads (shape, colour) off an image of the shapes dataset.

Used to score generated samples of the embedded default (:mod:`ldm.data.shapes`):

1. **Colour.** Shape colours are saturated, backgrounds are not. Pixels whose chroma
   (max - min over RGB) exceeds :data:`MIN_CHROMA` and that lie within :data:`MAX_COLOR_DISTANCE`
   of a palette colour are candidates; the palette colour with the most candidates wins.
2. **Segment.** The largest 8-connected component of pixels assigned to that colour is the shape.
3. **Shape.** Three scale-free features of the component inside its bounding box - fill ratio,
   fraction of the area in the top half, fraction of the four corner cells that is filled - are
   compared with the same features of the ideal silhouettes (rendered once at high resolution by
   the dataset's own :func:`~ldm.data.shapes.shape_mask`); the nearest prototype wins.

Nothing is learned, so the score is deterministic and identical across machines.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from ldm.data import shapes as shapes_data

MIN_CHROMA = 0.3
MAX_COLOR_DISTANCE = 0.5
MIN_AREA_PIXELS = 6

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _features(mask: np.ndarray) -> np.ndarray | None:
    """(fill ratio, top-half area fraction, corner fill) of a boolean mask, ``None`` if too small."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    box = mask[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].astype(np.float64)
    height, width = box.shape
    area = box.sum()
    if area < MIN_AREA_PIXELS or height < 3 or width < 3:
        return None
    fill = area / (height * width)
    top = box[: height // 2].sum() + (0.5 * box[height // 2].sum() if height % 2 else 0.0)
    corner_h, corner_w = max(1, round(height / 4)), max(1, round(width / 4))
    corners = [box[:corner_h, :corner_w], box[:corner_h, -corner_w:],
               box[-corner_h:, :corner_w], box[-corner_h:, -corner_w:]]
    corner_fill = float(np.mean([c.mean() for c in corners]))
    return np.array([fill, top / area, corner_fill])


@lru_cache(maxsize=1)
def shape_prototypes() -> np.ndarray:
    """Features of the ideal silhouette of each shape in :data:`~ldm.data.shapes.SHAPES`."""
    size = 256
    rows = []
    for shape in range(shapes_data.NUM_SHAPES):
        mask = shapes_data.shape_mask(shape, size, size / 2, size / 2, size * 0.8)
        rows.append(_features(mask))
    return np.stack(rows)


def _to_unit_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        array = images.detach().float().cpu().numpy()
    else:
        array = np.asarray(images, np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected images of shape B×3×H×W in [-1, 1], got {tuple(array.shape)}")
    return np.clip((array.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)


def _color_and_mask(image: np.ndarray) -> tuple[int, np.ndarray | None]:
    chroma = image.max(axis=-1) - image.min(axis=-1)
    distances = np.linalg.norm(image[:, :, None, :] - shapes_data.PALETTE[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)
    candidate = (chroma > MIN_CHROMA) & (distances.min(axis=-1) < MAX_COLOR_DISTANCE)
    if not candidate.any():
        return -1, None
    counts = np.bincount(nearest[candidate], minlength=shapes_data.NUM_COLORS)
    color = int(counts.argmax())
    labels, n_components = ndimage.label(candidate & (nearest == color), structure=_EIGHT_CONNECTED)
    if n_components == 0:
        return -1, None
    sizes = np.bincount(labels.ravel())[1:]
    return color, labels == (int(sizes.argmax()) + 1)


def classify_image(image_hwc: np.ndarray) -> tuple[int, int, np.ndarray | None]:
    """One ``H×W×3`` image in [0, 1] -> ``(shape_idx, color_idx, mask)``; -1 where undecidable."""
    color, mask = _color_and_mask(image_hwc)
    if mask is None:
        return -1, color, None
    features = _features(mask)
    if features is None:
        return -1, color, mask
    shape = int(np.linalg.norm(shape_prototypes() - features[None], axis=1).argmin())
    return shape, color, mask


def predict_attributes(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``B×3×H×W`` in [-1, 1] -> ``(shape_idx, color_idx)`` LongTensors ``[B]`` (-1: none found)."""
    shapes, colors = [], []
    for image in _to_unit_hwc(images):
        shape, color, _ = classify_image(image)
        shapes.append(shape)
        colors.append(color)
    return torch.tensor(shapes, dtype=torch.long), torch.tensor(colors, dtype=torch.long)


def predict_position(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Index into :data:`~ldm.data.shapes.POSITIONS` of each shape's centre (3×3 grid); -1 if none."""
    positions = []
    for image in _to_unit_hwc(images):
        _, _, mask = classify_image(image)
        if mask is None:
            positions.append(-1)
            continue
        height, width = mask.shape
        ys, xs = np.nonzero(mask)
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        row, col = min(int(3 * cy / height), 2), min(int(3 * cx / width), 2)
        positions.append(row * 3 + col)
    return torch.tensor(positions, dtype=torch.long)


def predict_class(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Predicted class label per image (``shape * NUM_COLORS + colour``), -1 where undecidable."""
    shape, color = predict_attributes(images)
    label = shape * shapes_data.NUM_COLORS + color
    return torch.where((shape < 0) | (color < 0), torch.full_like(label, -1), label)


def oracle_accuracy(images: torch.Tensor | np.ndarray, class_labels: torch.Tensor | Sequence[int]) -> float:
    """Fraction of images whose predicted (shape, colour) equals the requested class label."""
    labels = torch.as_tensor(class_labels, dtype=torch.long).flatten().cpu()
    predicted = predict_class(images)
    if labels.numel() != predicted.numel():
        raise ValueError(f"got {predicted.numel()} images but {labels.numel()} class labels")
    return float((predicted == labels).float().mean()) if labels.numel() else float("nan")


def caption_accuracy(images: torch.Tensor | np.ndarray, captions: Sequence[str],
                     include_position: bool = False) -> float:
    """Fraction of images whose shape and colour (and, optionally, grid position) match the caption."""
    captions = list(captions)
    shape, color = predict_attributes(images)
    if len(captions) != shape.numel():
        raise ValueError(f"got {shape.numel()} images but {len(captions)} captions")
    wanted = torch.tensor([shapes_data.parse_caption(c) for c in captions], dtype=torch.long).reshape(-1, 2)
    correct = (shape == wanted[:, 0]) & (color == wanted[:, 1]) & (wanted[:, 0] >= 0) & (wanted[:, 1] >= 0)
    if include_position:
        wanted_pos = torch.tensor([_caption_position(c) for c in captions], dtype=torch.long)
        correct &= predict_position(images) == wanted_pos
    return float(correct.float().mean()) if captions else float("nan")


def _caption_position(caption: str) -> int:
    text = " ".join(caption.lower().split())
    for index in sorted(range(len(shapes_data.POSITIONS)), key=lambda i: -len(shapes_data.POSITIONS[i])):
        if text.endswith(shapes_data.POSITIONS[index]):
            return index
    return -1
