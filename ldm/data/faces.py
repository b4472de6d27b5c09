"""CelebA-HQ and FFHQ in taming-transformers' layout (``taming.data.faceshq`` / ``ldm.data.faceshq``).

Original layout (relative to ``$LDM_DATA_DIR``, default ``data``)::

    data/celebahqtrain.txt  data/celebahqvalidation.txt  data/celebahq/<relpath>   (.npy arrays or images)
    data/ffhqtrain.txt      data/ffhqvalidation.txt      data/ffhq/<relpath>       (images)

Each list names files relative to the image folder. Images are resized (smaller side) to
``size`` and centre-cropped; ``crop_size`` additionally crops a square (random for training,
centre for validation). Pass ``file_list=None`` to use every image found under ``data_root``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ldm.data.folder import DATA_DIR_ENV, ImageFolderDataset, data_dir

_UNSET = object()


class FacesBase(ImageFolderDataset):
    folder = ""
    list_name = ""
    train = True

    def __init__(self, size: int | None = None, keys: Sequence[str] | None = None, crop_size: int | None = None,
                 coord: bool = False, data_root: str | None = None, file_list=_UNSET, flip_p: float = 0.0,
                 strict: bool = False, **kwargs):
        if coord:
            raise ValueError(f"{type(self).__name__}: coord=True (coordinate conditioning) is not supported")
        root = data_root or os.path.join(data_dir(), self.folder)
        file_list = os.path.join(data_dir(), self.list_name) if file_list is _UNSET else file_list
        hint = (f"Expected images under {root} and a list of their relative paths in {file_list}. "
                f"Pass `data_root` / `file_list` (file_list: null scans the whole folder) or set {DATA_DIR_ENV}.")
        super().__init__(root=root, file_list=file_list, data_root=root, size=size, crop_size=crop_size,
                         random_crop=self.train and crop_size is not None, flip_p=flip_p, strict=strict,
                         layout_hint=hint, **kwargs)
        self.keys = list(keys) if keys else None

    def load(self, index):
        sample = super().load(index)
        if self.keys:
            sample = {k: v for k, v in sample.items() if k in self.keys or k == "image"}
        return sample


class CelebAHQTrain(FacesBase):
    folder, list_name, train = "celebahq", "celebahqtrain.txt", True


class CelebAHQValidation(FacesBase):
    folder, list_name, train = "celebahq", "celebahqvalidation.txt", False


class FFHQTrain(FacesBase):
    folder, list_name, train = "ffhq", "ffhqtrain.txt", True


class FFHQValidation(FacesBase):
    folder, list_name, train = "ffhq", "ffhqvalidation.txt", False
