"""ImageNet (ILSVRC2012) in the synset-folder layout, with class labels, and its super-resolution variant.

Layout: one folder per split holding one sub-folder per synset::

    <imagenet>/train/n01440764/*.JPEG ...   <imagenet>/val/n01440764/*.JPEG ...

Where the split folder is looked for, first hit wins:

1. the ``data_root`` param (the split folder itself, holding the synset folders);
2. ``$IMAGENET_ROOT/train`` and ``$IMAGENET_ROOT/val`` (``validation`` also accepted);
3. the original code's cache, ``$XDG_CACHE_HOME/autoencoders/data/ILSVRC2012_{train,validation}/data``;
4. ``$LDM_DATA_DIR/imagenet/{train,val}`` (default ``data/imagenet/...``).

Nothing is downloaded. ``class_label`` is the index of the synset in sorted order, which is the
standard ILSVRC2012 index (``n01440764`` -> 0) when all 1000 synsets are present; pass
``synsets`` to fix the order for a subset. If a ``synset_human.txt`` (``wnid name`` per line) sits
next to the split folders, samples also carry ``human_label``.

The original configs' params are accepted: ``ImageNetTrain(config={"size": 256})`` and
``ImageNetSRTrain(size=256, degradation="pil_nearest", downscale_f=4, min_crop_f=0.5, max_crop_f=1.0,
random_crop=True)``.
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from ldm.data.degradation import get_degradation
from ldm.data.folder import DATA_DIR_ENV, ImageFolderDataset, data_dir
from ldm.data.image_ops import crop_square, to_tensor

IMAGENET_ENV = "IMAGENET_ROOT"
_SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation")}
_CACHE_NAMES = {"train": "ILSVRC2012_train", "validation": "ILSVRC2012_validation"}
_CONFIG_KEYS = {"size", "random_crop", "flip_p", "interpolation", "data_root", "synsets", "strict"}


def _candidate_dirs(split: str) -> list[str]:
    candidates = []
    if os.environ.get(IMAGENET_ENV):
        candidates += [os.path.join(os.environ[IMAGENET_ENV], name) for name in _SPLIT_DIRS[split]]
    cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    candidates.append(os.path.join(cache, "autoencoders", "data", _CACHE_NAMES[split], "data"))
    candidates += [os.path.join(data_dir(), "imagenet", name) for name in _SPLIT_DIRS[split]]
    return candidates


def find_split_dir(split: str, data_root: str | None = None) -> str:
    """The folder of synset sub-folders for ``split``; a clear FileNotFoundError if there is none."""
    layout = "<dir>/n01440764/*.JPEG, ... (one sub-folder per synset)"
    if data_root is not None:
        if os.path.isdir(data_root):
            return data_root
        raise FileNotFoundError(f"ImageNet {split}: data_root {os.path.abspath(data_root)} does not exist; "
                                f"expected the layout {layout}")
    candidates = _candidate_dirs(split)
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    tried = "\n  ".join(os.path.abspath(c) for c in candidates)
    raise FileNotFoundError(
        f"ImageNet {split} split not found. Looked in:\n  {tried}\nExpected the layout {layout}. "
        f"Pass `data_root: /path/to/{_SPLIT_DIRS[split][0]}` in the dataset params, set {IMAGENET_ENV} to a folder "
        f"holding train/ and val/, or set {DATA_DIR_ENV}. Nothing is downloaded.")


def _check_config(config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The original passes options as ``config: {size: 256}``; they take precedence over keyword params."""
    options = dict(config or {})
    unknown = sorted(set(options) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{name}: unsupported config keys {unknown}; supported: {sorted(_CONFIG_KEYS)}")
    return options


def _read_human_labels(split_dir: str) -> dict[str, str]:
    path = os.path.join(os.path.dirname(os.path.abspath(split_dir)), "synset_human.txt")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        pairs = (line.strip().split(maxsplit=1) for line in handle if line.strip())
        return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


class ImageNetBase(ImageFolderDataset):
    split = "train"

    def __init__(self, config: Mapping[str, Any] | None = None, *, size: int | None = None, random_crop: bool = False,
                 flip_p: float = 0.0, interpolation: str = "bicubic", data_root: str | None = None,
                 synsets: Sequence[str] | None = None, strict: bool = False):
        options = _check_config(config, type(self).__name__)
        size = options.get("size", size)
        root = find_split_dir(self.split, options.get("data_root", data_root))
        super().__init__(root=root, size=size, random_crop=options.get("random_crop", random_crop),
                         flip_p=options.get("flip_p", flip_p),
                         interpolation=options.get("interpolation", interpolation),
                         class_folders=True, classes=options.get("synsets", synsets),
                         strict=options.get("strict", strict), dataset_name=type(self).__name__)
        self.human_labels = _read_human_labels(root)

    def load(self, index: int) -> dict[str, Any]:
        sample = super().load(index)
        sample["synset"] = sample["class_name"]
        if self.human_labels:
            sample["human_label"] = self.human_labels.get(sample["synset"], sample["synset"])
        return sample


class ImageNetTrain(ImageNetBase):
    split = "train"


class ImageNetValidation(ImageNetBase):
    split = "validation"


class ImageNetSR(ImageNetBase):
    """High-res ``image`` (``size×size``) and its degraded ``LR_image`` (``size/downscale_f``), both in [-1, 1].

    As in the original: crop a square whose side is ``U(min_crop_f, max_crop_f)`` times the
    image's smaller side (random or centred), resize it to ``size`` (area filter), then degrade.
    """

    def __init__(self, size: int | None = None, degradation: str | None = "pil_bicubic", downscale_f: int = 4,
                 min_crop_f: float = 0.5, max_crop_f: float = 1.0, random_crop: bool = True,
                 data_root: str | None = None, strict: bool = False, **kwargs):
        if size is None or int(size) <= 0:
            raise ValueError(f"{type(self).__name__}: `size` (the high-res side) is required, got {size}")
        if not 0 < min_crop_f <= max_crop_f <= 1:
            raise ValueError(f"{type(self).__name__}: need 0 < min_crop_f <= max_crop_f <= 1, "
                             f"got {min_crop_f}, {max_crop_f}")
        if int(size) % int(downscale_f):
            raise ValueError(f"{type(self).__name__}: size {size} is not divisible by downscale_f {downscale_f}")
        super().__init__(size=None, data_root=data_root, strict=strict, **kwargs)
        self.size, self.lr_size = int(size), int(size) // int(downscale_f)
        self.min_crop_f, self.max_crop_f = float(min_crop_f), float(max_crop_f)
        self.sr_random_crop = bool(random_crop)
        self.degradation_name = degradation or "pil_bicubic"
        self.degrade = get_degradation(self.degradation_name)

    def load(self, index: int) -> dict[str, Any]:
        image = self.load_pil(index)
        side = int(min(image.size) * random.uniform(self.min_crop_f, self.max_crop_f))
        image = crop_square(image, max(side, 1), self.sr_random_crop)
        image = image.resize((self.size, self.size), resample=Image.Resampling.BOX)
        low_res = self.degrade(image, self.lr_size)
        synset = self.classes[self.labels[index]]
        sample = {"image": to_tensor(image), "LR_image": to_tensor(low_res), "class_label": self.labels[index],
                  "class_name": synset, "synset": synset, "file_path_": self.path_of(index),
                  "relpath": self.relpaths[index]}
        if self.human_labels:
            sample["human_label"] = self.human_labels.get(synset, synset)
        return sample


class ImageNetSRTrain(ImageNetSR):
    split = "train"


class ImageNetSRValidation(ImageNetSR):
    split = "validation"

