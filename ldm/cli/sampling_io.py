"""Files in and out of the sampling commands: prompts, init images, masks, PNGs, grid, settings JSON.

Output layout (``--outdir``)::

    samples/00000.png 00001.png ...   one PNG per sample; numbering continues after existing files
    grid.png                          all samples of this run, one row per prompt / class
    settings.json                     the command's settings and, per file, its condition
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.cli.load_model import SampleError

SAMPLE_NAME = re.compile(r"^(\d{5,})\.png$")


def read_prompts(prompts: Sequence[str] | None, from_file: str | None) -> list[str]:
    """``--prompt`` values, then the lines of ``--from-file`` (blank lines skipped)."""
    out = [p for p in (prompts or [])]
    if from_file:
        path = Path(from_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SampleError(f"--from-file: cannot read {path}: {err}") from err
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise SampleError(f"--from-file: {path} holds no prompts (one per line)")
        out.extend(lines)
    return out


def parse_classes(spec: str | None, allowed: Sequence[int]) -> list[int]:
    """``"0,3,5"`` -> [0, 3, 5]; ``"all"`` / None -> every allowed class."""
    if spec is None or str(spec).strip().lower() == "all":
        return list(allowed)
    try:
        return [int(part) for part in str(spec).split(",") if part.strip()]
    except ValueError as err:
        raise SampleError(f"--classes: expected comma-separated class indices such as 0,3,5 or 'all', "
                          f"got {spec!r}") from err


def _open_image(path: str, flag: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise SampleError(f"{flag}: image file not found: {p}")
    try:
        image = Image.open(p)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SampleError(f"{flag}: cannot read {p} as an image ({err})") from err
    return image


def image_size(path: str, flag: str = "--init-img") -> tuple[int, int]:
    """(height, width) of an image file."""
    width, height = _open_image(path, flag).size
    return height, width


def load_image(path: str, height: int, width: int, channels: int = 3, flag: str = "--init-img") -> torch.Tensor:
    """An image file as a ``1×C×H×W`` tensor in [-1, 1], resized (bicubic) to ``height × width``."""
    from PIL import Image

    image = _open_image(path, flag).convert("RGB" if channels == 3 else "L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def load_mask(path: str, height: int, width: int, flag: str = "--mask") -> torch.Tensor:
    """A mask file as ``1×1×H×W`` in {0, 1}: 1 (white, > 50% grey) = regenerate, 0 (black) = keep."""
    from PIL import Image

    mask = _open_image(path, flag).convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.NEAREST)
    array = (np.asarray(mask, dtype=np.float32) / 255.0 > 0.5).astype(np.float32)
    return torch.from_numpy(array)[None, None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``B×C×H×W`` in [-1, 1] -> ``B×H×W×C`` uint8."""
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def next_index(sample_dir: Path) -> int:
    """First free sample number in ``sample_dir`` (existing samples are never overwritten)."""
    numbers = [int(m.group(1)) for p in sample_dir.glob("*.png") if (m := SAMPLE_NAME.match(p.name))]
    return max(numbers) + 1 if numbers else 0


class SampleWriter:
    """Writes each batch as it comes; the grid and settings at the end."""

    def __init__(self, outdir: str | Path):
        self.outdir = Path(outdir)
        self.sample_dir = self.outdir / "samples"
        try:
            self.sample_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SampleError(f"--outdir: cannot create {self.sample_dir}: {err}") from err
        self.index = next_index(self.sample_dir)
        self.files: list[Path] = []
        self.images: list[torch.Tensor] = []

    def add(self, images: torch.Tensor) -> list[Path]:
        written = []
        for array in to_uint8(images):
            path = self.sample_dir / f"{self.index:05d}.png"
            _save_png(array, path)
            self.index += 1
            written.append(path)
        self.files.extend(written)
        self.images.append(images.detach().float().cpu())
        return written

    def write_grid(self, n_row: int) -> Path:
        from torchvision.utils import make_grid

        images = torch.cat(self.images)
        grid = make_grid((images.clamp(-1, 1) + 1.0) / 2.0, nrow=n_row, padding=2, pad_value=1.0)
        path = self.outdir / "grid.png"
        array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        _save_png(array, path)
        return path

    def write_settings(self, settings: dict, conditions: Sequence[Any]) -> tuple[Path, dict]:
        """Write ``settings.json`` (``settings`` plus a ``files`` list: each file and its condition)."""
        settings = dict(settings)
        settings["files"] = [{"file": str(path.relative_to(self.outdir)), "condition": cond}
                             for path, cond in zip(self.files, conditions)]
        path = self.outdir / "settings.json"
        path.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
        return path, settings
