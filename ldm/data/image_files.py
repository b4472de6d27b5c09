"""Which files are images: the one list of extensions every reader uses (folders, file lists,
webdataset shards, the evaluation CLI), and a recursive listing of an image folder.

``IMAGE_EXTENSIONS`` are the formats PIL decodes; ``ARRAY_EXTENSIONS`` are arrays that
:func:`ldm.data.image_ops.load_image` also reads as images (taming's CelebA-HQ ``.npy`` files).
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
ARRAY_EXTENSIONS = (".npy",)
#: a webdataset sample's entries are named by extension without the dot (``jpg``, ``png``, ...)
WEBDATASET_IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTENSIONS)


def is_image_file(path: str | os.PathLike, arrays: bool = True) -> bool:
    """Whether ``path`` names an image (by extension, case-insensitive); ``arrays``: ``.npy`` counts too."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS + (ARRAY_EXTENSIONS if arrays else ()))


def list_image_files(root: str | os.PathLike, arrays: bool = False) -> list[Path]:
    """Image files under ``root`` (recursive, sorted). Raises when the folder is missing or holds none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p.name, arrays))
    if not files:
        extensions = IMAGE_EXTENSIONS + (ARRAY_EXTENSIONS if arrays else ())
        raise ValueError(f"no images ({', '.join(extensions)}) found under {root}")
    return files
