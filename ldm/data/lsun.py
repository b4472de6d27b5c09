"""LSUN churches and bedrooms in the original latent-diffusion layout.

Original layout (relative to ``$LDM_DATA_DIR``, default ``data``)::

    data/lsun/church_outdoor_train.txt   data/lsun/church_outdoor_val.txt   data/lsun/churches/<relpath>
    data/lsun/bedrooms_train.txt         data/lsun/bedrooms_val.txt         data/lsun/bedrooms/<relpath>

Each text file lists image paths relative to the image folder. Like the original, every image
is centre-cropped to a square, resized to ``size`` and flipped with ``flip_p`` (0.5 for training,
0 for validation). Point elsewhere with ``txt_file`` / ``data_root`` or ``LDM_DATA_DIR``.
"""
from __future__ import annotations

import os

from ldm.data.folder import DATA_DIR_ENV, ImageFolderDataset, data_dir


class LSUNBase(ImageFolderDataset):
    def __init__(self, txt_file: str, data_root: str, size: int | None = None, interpolation: str = "bicubic",
                 flip_p: float = 0.5, strict: bool = False, **kwargs):
        hint = (f"Expected a text file of image paths relative to data_root ({data_root}). Pass `txt_file` and "
                f"`data_root` in the dataset params, or set {DATA_DIR_ENV} to the folder holding lsun/.")
        super().__init__(file_list=txt_file, data_root=data_root, size=size, interpolation=interpolation,
                         flip_p=flip_p, random_crop=False, strict=strict, layout_hint=hint, **kwargs)


def _default(*parts: str) -> str:
    return os.path.join(data_dir(), "lsun", *parts)


class LSUNChurchesTrain(LSUNBase):
    def __init__(self, txt_file: str | None = None, data_root: str | None = None, **kwargs):
        super().__init__(txt_file=txt_file or _default("church_outdoor_train.txt"),
                         data_root=data_root or _default("churches"), **kwargs)


class LSUNChurchesValidation(LSUNBase):
    def __init__(self, txt_file: str | None = None, data_root: str | None = None, flip_p: float = 0.0, **kwargs):
        super().__init__(txt_file=txt_file or _default("church_outdoor_val.txt"),
                         data_root=data_root or _default("churches"), flip_p=flip_p, **kwargs)


class LSUNBedroomsTrain(LSUNBase):
    def __init__(self, txt_file: str | None = None, data_root: str | None = None, **kwargs):
        super().__init__(txt_file=txt_file or _default("bedrooms_train.txt"),
                         data_root=data_root or _default("bedrooms"), **kwargs)


class LSUNBedroomsValidation(LSUNBase):
    def __init__(self, txt_file: str | None = None, data_root: str | None = None, flip_p: float = 0.0, **kwargs):
        super().__init__(txt_file=txt_file or _default("bedrooms_val.txt"),
                         data_root=data_root or _default("bedrooms"), flip_p=flip_p, **kwargs)
