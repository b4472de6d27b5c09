"""Low-resolution degradations for super-resolution datasets (``LR_image``).

Names follow the original configs: ``pil_{nearest,bilinear,bicubic,box,hamming,lanczos}``,
``cv_{nearest,linear,cubic,area,lanczos4}`` (approximated with the matching PIL filters; OpenCV is
not a dependency), and ``bsrgan`` / ``bsrgan_light``.

``bsrgan`` / ``bsrgan_light`` here are a compact re-statement of the BSRGAN idea (Zhang et al.
2021), not the original's exact pipeline: Gaussian blur with a random width, downscaling with a
random filter, Gaussian noise and JPEG re-compression, applied in random order; ``_light`` uses
milder ranges. Randomness comes from Python's ``random`` (seeded per DataLoader worker).
"""
from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

_PIL = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
_CV_AS_PIL = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic", "area": "box", "lanczos4": "lanczos"}


def _resize(filter_name: str) -> Callable[[Image.Image, int], Image.Image]:
    def degrade(image: Image.Image, lr_size: int) -> Image.Image:
        return image.resize((lr_size, lr_size), resample=_PIL[filter_name])
    return degrade


def _bsrgan(light: bool) -> Callable[[Image.Image, int], Image.Image]:
    max_sigma, max_noise, min_quality = (1.5, 0.04, 60) if light else (3.0, 0.1, 30)

    def blur(image, _):
        return image.filter(ImageFilter.GaussianBlur(random.uniform(0.1, max_sigma)))

    def noise(image, _):
        array = np.asarray(image, dtype=np.float32) / 255.0
        rng = np.random.default_rng(random.getrandbits(32))
        array = array + rng.normal(0, random.uniform(0, max_noise), array.shape)
        return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))

    def jpeg(image, _):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=random.randint(min_quality, 95))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def degrade(image: Image.Image, lr_size: int) -> Image.Image:
        steps = [blur, noise]
        random.shuffle(steps)
        for step in steps:
            image = step(image, lr_size)
        image = image.resize((lr_size, lr_size), resample=_PIL[random.choice(["bilinear", "bicubic", "box"])])
        return jpeg(image, lr_size)

    return degrade


def get_degradation(name: str) -> Callable[[Image.Image, int], Image.Image]:
    """``get_degradation("pil_nearest")(image, lr_size) -> PIL image of lr_size×lr_size``."""
    if name in ("bsrgan", "bsrgan_light"):
        return _bsrgan(light=name.endswith("light"))
    family, _, filter_name = name.partition("_")
    if family == "pil" and filter_name in _PIL:
        return _resize(filter_name)
    if family == "cv" and filter_name in _CV_AS_PIL:
        return _resize(_CV_AS_PIL[filter_name])
    known = ["bsrgan", "bsrgan_light"] + [f"pil_{n}" for n in _PIL] + [f"cv_{n}" for n in _CV_AS_PIL]
    raise ValueError(f"unknown degradation {name!r}; choose one of {known}")
