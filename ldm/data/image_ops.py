"""Reading image files and turning them into ``C×H×W`` float tensors in [-1, 1].

``load_image`` is the only place that decodes files; every error it can raise for a corrupt,
truncated or missing file is one of :data:`UNREADABLE_ERRORS`, which the datasets catch to
skip such files (see :mod:`ldm.data.robust`).
"""
from __future__ import annotations

import io
import os
import pickle
import random
import struct
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image

# Errors that mean "this file cannot be decoded", as opposed to bugs in our code.
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes FileNotFoundError and PIL.UnidentifiedImageError, truncated files
    ValueError,
    SyntaxError,  # raised by some PIL plugins on malformed headers
    EOFError,
    struct.error,
    zlib.error,
    pickle.UnpicklingError,
    Image.DecompressionBombError,
)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "area": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _array_to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC (taming's CelebA-HQ .npy files are 1×H×W×C or HWC)
    array = np.squeeze(array)
    if array.dtype != np.uint8:
        if array.min() < 0:
            array = (array + 1.0) * 127.5  # [-1, 1]
        elif array.max() <= 1.0:
            array = array * 255.0  # [0, 1]
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes (jpg/png/...) to an RGB PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file (or a ``.npy`` array, as in taming's CelebA-HQ) as an RGB PIL image."""
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        return _array_to_pil(np.load(path, allow_pickle=False)).convert("RGB")
    with Image.open(path) as image:
        image.load()  # decode now so truncated files fail here, not later
        return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float ``3×H×W`` tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float().div_(127.5).sub_(1.0)


def resize_smaller_side(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size == image.size:
        return image
    return image.resize(new_size, resample=INTERPOLATIONS[interpolation])


def crop_square(image: Image.Image, side: int, random_crop: bool, rng: random.Random | None = None) -> Image.Image:
    """Crop a ``side×side`` square, centred or at a random position."""
    width, height = image.size
    side = min(side, width, height)
    if random_crop:
        rng = rng or random
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    else:
        left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


class ImagePreprocessor:
    """Resize the smaller side to ``size``, crop a square (centre or random), flip with ``flip_p``.

    ``size=None`` keeps the image as it is (then all images in a batch must share a size).
    ``crop_size`` crops a smaller square after resizing (taming's faces datasets).
    Randomness uses Python's ``random`` module, which DataLoader workers seed independently.
    """

    def __init__(self, size: int | None = None, random_crop: bool = False, flip_p: float = 0.0,
                 interpolation: str = "bicubic", crop_size: int | None = None):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        if not 0.0 <= float(flip_p) <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if size is not None and int(size) <= 0:
            raise ValueError(f"size must be a positive integer or None, got {size}")
        self.size = None if size is None else int(size)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.random_crop = bool(random_crop)
        self.flip_p = float(flip_p)
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.size is not None:
            image = resize_smaller_side(image, self.size, self.interpolation)
            image = crop_square(image, self.size, self.random_crop)
        if self.crop_size is not None:
            image = crop_square(image, self.crop_size, self.random_crop)
        if self.flip_p > 0 and random.random() < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "crop_size": self.crop_size, "random_crop": self.random_crop,
                "flip_p": self.flip_p, "interpolation": self.interpolation}
