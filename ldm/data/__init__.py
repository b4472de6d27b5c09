"""Datasets returning dict samples (``image`` float C×H×W in [-1, 1], plus ``class_label``,
``caption``, ``mask``, ... as present) and :class:`DataModuleFromConfig`.

Submodules are imported on first use, so ``import ldm.data`` stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DataModuleFromConfig": "ldm.data.datamodule",
    "collate": "ldm.data.datamodule",
    "ShapesDataset": "ldm.data.shapes",
    "ShapesTrain": "ldm.data.shapes",
    "ShapesValidation": "ldm.data.shapes",
    "ImageFolderDataset": "ldm.data.folder",
    "ImageCaptionDataset": "ldm.data.folder",
    "WebImageDataset": "ldm.data.webdataset",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ldm.data' has no attribute {name!r}")
