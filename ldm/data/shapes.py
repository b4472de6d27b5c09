"""The embedded default dataset: procedurally generated coloured shapes.

No download and no files: every sample is rendered from ``(seed, split, index)`` with its own
``numpy.random.Generator``, so the dataset is identical on every machine and in every
DataLoader worker. One sample serves all three conditioning modes:

* ``class_label`` (``int``) = ``shape_index * len(COLORS) + color_index``  -> class conditioning
* ``caption`` (``str``), e.g. ``"a red circle at the top left"``          -> text conditioning
* ``mask`` (``1×H×W`` float in {0, 1}, the shape's silhouette)            -> concat / spatial

The image is a single flat-coloured shape (no rotation) on a dark, low-saturation background
with a gentle gradient. Shape colours are saturated and far apart in RGB, backgrounds are not,
so a generated image can be scored without any training by :mod:`ldm.eval.shapes_oracle`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated colours far apart in RGB (pairwise distance >= 0.75); backgrounds have chroma <= 0.15.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PALETTE = np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float32)  # [n_colours, 3] in [0, 1]

NUM_SHAPES = len(SHAPES)
NUM_COLORS = len(COLORS)
NUM_CLASSES = NUM_SHAPES * NUM_COLORS

# 3×3 grid of positions, row-major; each name is how the caption says it.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
_POSITION_PHRASES: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)

# Shape side length as a fraction of the image side. Half of the largest (0.275) stays below a
# third of the image, so a shape centred anywhere in its grid cell fits inside the image.
MIN_SIZE_FRACTION = 0.35
MAX_SIZE_FRACTION = 0.55

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def attributes_to_class(shape: int | str, color: int | str) -> int:
    """``(shape, colour)`` (indices or names) -> class label ``shape * NUM_COLORS + colour``."""
    shape_idx = SHAPES.index(shape) if isinstance(shape, str) else int(shape)
    color_idx = COLOR_NAMES.index(color) if isinstance(color, str) else int(color)
    if not (0 <= shape_idx < NUM_SHAPES and 0 <= color_idx < NUM_COLORS):
        raise ValueError(f"shape {shape!r} / colour {color!r} out of range ({NUM_SHAPES} shapes, {NUM_COLORS} colours)")
    return shape_idx * NUM_COLORS + color_idx


def class_to_attributes(label: int) -> tuple[int, int]:
    """Class label -> ``(shape_index, colour_index)``."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class label {label} out of range [0, {NUM_CLASSES})")
    return divmod(label, NUM_COLORS)


def class_name(label: int) -> str:
    """Human-readable class name, e.g. ``"red circle"``."""
    shape_idx, color_idx = class_to_attributes(label)
    return f"{COLOR_NAMES[color_idx]} {SHAPES[shape_idx]}"


def caption_for(shape: int | str, color: int | str, position: int | str | None = None) -> str:
    """``caption_for("circle", "red", "top left") == "a red circle at the top left"``.

    Without a position the caption is just ``"a red circle"``.
    """
    shape_name = shape if isinstance(shape, str) else SHAPES[int(shape)]
    color_name = color if isinstance(color, str) else COLOR_NAMES[int(color)]
    if shape_name not in SHAPES or color_name not in COLORS:
        raise ValueError(f"unknown shape {shape_name!r} or colour {color_name!r}")
    caption = f"a {color_name} {shape_name}"
    if position is None:
        return caption
    pos_idx = POSITIONS.index(position) if isinstance(position, str) else int(position)
    return f"{caption} {_POSITION_PHRASES[pos_idx]}"


def parse_caption(caption: str) -> tuple[int, int]:
    """Caption -> ``(shape_index, colour_index)``; ``-1`` where the caption names none."""
    words = caption.lower().replace(",", " ").split()
    shape = next((SHAPES.index(w) for w in words if w in SHAPES), -1)
    color = next((COLOR_NAMES.index(w) for w in words if w in COLORS), -1)
    return shape, color


def _vocabulary() -> list[str]:
    words: list[str] = []
    phrases = [caption_for(s, c) for s in SHAPES for c in COLOR_NAMES] + list(_POSITION_PHRASES)
    for phrase in phrases:
        for word in phrase.split():
            if word not in words:
                words.append(word)
    return words


VOCABULARY: list[str] = _vocabulary()


# ---------------------------------------------------------------------------------------------
# rendering


def shape_mask(shape: int, size: int, cx: float, cy: float, side: float) -> np.ndarray:
    """Boolean ``size×size`` silhouette of ``shape`` with bounding box ``side`` centred at (cx, cy).

    A pixel belongs to the shape when its centre does (hard edges). The triangle points up and
    its base is as wide as it is tall, so every shape's bounding box is a ``side×side`` square.
    """
    coords = np.arange(size, dtype=np.float32) + 0.5
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    half = side / 2.0
    name = SHAPES[shape]
    if name == "circle":
        return x * x + y * y <= half * half
    if name == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if name == "triangle":
        # apex at (0, -half), base from (-half, half) to (half, half): |x| <= (y + half) / 2
        return (y <= half) & (np.abs(x) <= (y + half) / 2.0)
    raise ValueError(f"unknown shape index {shape}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark, low-saturation background: grey level + small tint + a gentle linear gradient."""
    grey = rng.uniform(0.08, 0.42)
    tint = rng.uniform(-0.05, 0.05, size=3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    amplitude = rng.uniform(0.0, 0.15)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient = amplitude * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    background = grey + tint[:, None, None] + gradient[None]
    return np.clip(background, 0.0, 1.0).astype(np.float32)


def render_sample(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Draw attributes from ``rng`` and render one ``3×size×size`` image in [0, 1]."""
    shape = int(rng.integers(NUM_SHAPES))
    color = int(rng.integers(NUM_COLORS))
    position = int(rng.integers(len(POSITIONS)))
    side = rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION) * size
    row, col = divmod(position, 3)
    centre = []
    for cell in (col, row):  # x then y
        low = max(cell * size / 3.0, side / 2.0)
        high = min((cell + 1) * size / 3.0, size - side / 2.0)
        centre.append(rng.uniform(low, high))
    fill = np.clip(PALETTE[color] + rng.uniform(-0.05, 0.05, size=3), 0.0, 1.0).astype(np.float32)
    image = _background(rng, size)
    mask = shape_mask(shape, size, centre[0], centre[1], side)
    image[:, mask] = fill[:, None]
    return {"image": image, "mask": mask, "shape": shape, "color": color, "position": position}


class ShapesDataset(Dataset):
    """Deterministic procedural shapes: ``ShapesDataset(size=32, length=10000, seed=0, split="train")``.

    Samples are dicts with ``image`` (float ``3×size×size`` in [-1, 1]), ``class_label``,
    ``caption``, ``mask`` (``1×size×size`` in {0, 1}), ``shape``, ``color``, ``position``
    (indices into :data:`SHAPES`, :data:`COLOR_NAMES`, :data:`POSITIONS`) and ``human_label``.
    Sample ``i`` depends only on ``(seed, split, i)``; the splits draw from disjoint seed streams.
    """

    def __init__(self, size: int = 32, length: int | None = None, seed: int = 0, split: str = "train",
                 flip_p: float = 0.0):
        if int(size) < 8:
            raise ValueError(f"ShapesDataset: size must be >= 8 pixels, got {size}")
        if split not in SPLIT_IDS:
            raise ValueError(f"ShapesDataset: split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if flip_p:
            # a horizontal flip would turn "on the left" into "on the right" and break the caption
            raise ValueError("ShapesDataset: flip_p is not supported (it would contradict the caption's position)")
        self.size = int(size)
        self.length = int(length if length is not None else (10_000 if split == "train" else 1_000))
        if self.length <= 0:
            raise ValueError(f"ShapesDataset: length must be positive, got {self.length}")
        self.seed = int(seed)
        self.split = split

    def __len__(self) -> int:
        return self.length

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        index = index % self.length
        drawn = render_sample(self.rng_for(index), self.size)
        label = attributes_to_class(drawn["shape"], drawn["color"])
        return {
            "image": torch.from_numpy(drawn["image"] * 2.0 - 1.0),
            "mask": torch.from_numpy(drawn["mask"][None].astype(np.float32)),
            "class_label": label,
            "caption": caption_for(drawn["shape"], drawn["color"], drawn["position"]),
            "human_label": class_name(label),
            "shape": drawn["shape"],
            "color": drawn["color"],
            "position": drawn["position"],
        }


class ShapesTrain(ShapesDataset):
    def __init__(self, size: int = 32, length: int = 10_000, seed: int = 0, **kwargs):
        super().__init__(size=size, length=length, seed=seed, split="train", **kwargs)


class ShapesValidation(ShapesDataset):
    def __init__(self, size: int = 32, length: int = 1_000, seed: int = 0, **kwargs):
        super().__init__(size=size, length=length, seed=seed, split="validation", **kwargs)
