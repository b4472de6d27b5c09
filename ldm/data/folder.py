"""Image folders, file lists and image + caption pairs.

``ImageFolderDataset`` covers every "files on disk" layout the named datasets use:

* a folder scanned recursively (FFHQ/CelebA-HQ as plain image folders, any custom folder);
* a text file list of paths relative to ``data_root`` (LSUN, taming's CelebA-HQ/FFHQ lists);
* optional class sub-folders (``root/<class>/*.jpg`` -> ``class_label`` by sorted folder name);
* optional captions: a sidecar ``.txt`` next to each image, or a JSON/JSONL/CSV/TSV table.

Samples: ``image`` float ``3×H×W`` in [-1, 1], ``file_path_``, ``relpath``, and ``class_label``,
``class_name``, ``caption`` when present. Unreadable files are skipped and counted
(:mod:`ldm.data.robust`); ``strict=True`` makes them fatal.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ldm.data.captions import load_caption_table, lookup_caption, read_sidecar_caption
from ldm.data.image_files import is_image_file
from ldm.data.image_ops import ImagePreprocessor, load_image, to_tensor
from ldm.data.robust import SkippingDataset

DATA_DIR_ENV = "LDM_DATA_DIR"


def data_dir(default: str = "data") -> str:
    """Base directory of the original relative layouts (``data/lsun/...``): ``$LDM_DATA_DIR`` or ``data``."""
    return os.environ.get(DATA_DIR_ENV) or default


def scan_images(root: str, recursive: bool = True) -> list[str]:
    """Sorted image paths under ``root``, relative to it."""
    found = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            found.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if is_image_file(f))
    else:
        found = [f for f in os.listdir(root) if is_image_file(f) and os.path.isfile(os.path.join(root, f))]
    return sorted(found)


def class_folder_names(root: str) -> list[str]:
    """The class names ``ImageFolderDataset(root, class_folders=True)`` finds: sorted first-level folders
    that hold images."""
    return sorted({p.replace(os.sep, "/").split("/")[0] for p in scan_images(root) if "/" in p.replace(os.sep, "/")})


def read_file_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


class ImageFolderDataset(SkippingDataset):
    """Images from a folder or a file list.

    Args:
        root: folder to scan for images (alias of ``data_root`` when no ``file_list`` is given).
        file_list: text file with one image path per line, relative to ``data_root``
            (or absolute). LSUN's ``txt_file``.
        data_root: base folder for ``file_list`` entries (defaults to ``root``).
        size: resize the smaller side to ``size`` and crop a ``size×size`` square; ``None`` keeps
            the image size.
        random_crop: random instead of centre crop. ``flip_p``: horizontal flip probability.
        interpolation: ``bicubic`` | ``bilinear`` | ``nearest`` | ``lanczos`` | ``area`` | ...
        crop_size: crop a smaller square after resizing.
        class_folders: the first folder level names the class (sorted names -> ``class_label``).
        classes: explicit class names in label order (default: sorted folder names).
        captions: a caption table (.json/.jsonl/.csv/.tsv); or ``"sidecar"`` to read
            ``<image stem><caption_ext>`` next to each image. ``None``: no captions.
        strict: raise on an unreadable image instead of skipping it.
    """

    def __init__(self, root: str | None = None, size: int | None = None, *, file_list: str | None = None,
                 data_root: str | None = None, random_crop: bool = False, flip_p: float = 0.0,
                 interpolation: str = "bicubic", crop_size: int | None = None, class_folders: bool = False,
                 classes: Sequence[str] | None = None, captions: str | None = None, caption_ext: str = ".txt",
                 recursive: bool = True, strict: bool = False, paths: Sequence[str] | None = None,
                 dataset_name: str | None = None, layout_hint: str = ""):
        super().__init__(strict=strict)
        self.dataset_name = dataset_name or type(self).__name__
        self.data_root = data_root if data_root is not None else root
        self.preprocess = ImagePreprocessor(size=size, random_crop=random_crop, flip_p=flip_p,
                                            interpolation=interpolation, crop_size=crop_size)
        self.relpaths = self._collect(root, file_list, paths, recursive, layout_hint)
        self.class_folders = bool(class_folders)
        self.classes: list[str] = []
        self.class_to_idx: dict[str, int] = {}
        if self.class_folders:
            self._setup_classes(classes)
        self.captions_source = captions
        self.caption_ext = caption_ext
        self._caption_table = None
        if captions is not None and captions != "sidecar":
            self._caption_table = load_caption_table(captions)
            missing = [p for p in self.relpaths if lookup_caption(self._caption_table, p) is None]
            if missing:
                raise ValueError(f"{self.dataset_name}: {len(missing)} of {len(self.relpaths)} images have no caption "
                                 f"in {captions} (first: {missing[:3]})")

    # -- construction ---------------------------------------------------------------------
    def _missing(self, what: str, path: str, hint: str) -> FileNotFoundError:
        message = f"{self.dataset_name}: {what} not found: {os.path.abspath(path)}."
        if hint:
            message += f" {hint}"
        return FileNotFoundError(message)

    def _collect(self, root, file_list, paths, recursive, hint) -> list[str]:
        if paths is not None:
            relpaths = [str(p) for p in paths]
        elif file_list is not None:
            if not os.path.isfile(file_list):
                raise self._missing("file list", file_list, hint)
            if self.data_root is not None and not os.path.isdir(self.data_root):
                raise self._missing("image folder (data_root)", self.data_root, hint)
            relpaths = read_file_list(file_list)
        elif root is not None:
            if not os.path.isdir(root):
                raise self._missing("image folder", root, hint)
            relpaths = scan_images(root, recursive=recursive)
        else:
            raise ValueError(f"{self.dataset_name}: give `root` (a folder of images), `file_list` (+ `data_root`) "
                             "or `paths`")
        if not relpaths:
            where = file_list or root
            raise FileNotFoundError(f"{self.dataset_name}: no images found in {os.path.abspath(where)}. {hint}".strip())
        return relpaths

    def _setup_classes(self, classes):
        folder_of = [p.replace(os.sep, "/").split("/")[0] for p in self.relpaths]
        if any("/" not in p.replace(os.sep, "/") for p in self.relpaths):
            loose = [p for p in self.relpaths if "/" not in p.replace(os.sep, "/")][:3]
            raise ValueError(f"{self.dataset_name}: class_folders=True but some images are not inside a class "
                             f"sub-folder (e.g. {loose})")
        self.classes = list(classes) if classes is not None else sorted(set(folder_of))
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(set(folder_of) - set(self.class_to_idx))
        if unknown:
            raise ValueError(f"{self.dataset_name}: folders {unknown[:5]} are not in the given classes list")
        self.labels = [self.class_to_idx[f] for f in folder_of]

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.relpaths)

    def path_of(self, index: int) -> str:
        relpath = self.relpaths[index]
        if os.path.isabs(relpath) or self.data_root is None:
            return relpath
        return os.path.join(self.data_root, relpath)

    def name_of(self, index: int) -> str:
        return self.path_of(index)

    def caption_of(self, index: int) -> str | None:
        if self.captions_source == "sidecar":
            return read_sidecar_caption(self.path_of(index), self.caption_ext)
        if self._caption_table is not None:
            return lookup_caption(self._caption_table, self.relpaths[index])
        return None

    def load_pil(self, index: int):
        return load_image(self.path_of(index))

    def load(self, index: int) -> dict[str, Any]:
        image = self.preprocess(self.load_pil(index))
        sample: dict[str, Any] = {"image": to_tensor(image), "file_path_": self.path_of(index),
                                  "relpath": self.relpaths[index]}
        if self.class_folders:
            sample["class_label"] = self.labels[index]
            sample["class_name"] = self.classes[self.labels[index]]
        if self.captions_source is not None:
            caption = self.caption_of(index)
            if caption is None:
                raise FileNotFoundError(f"no caption for {self.path_of(index)} (looked for a sidecar "
                                        f"'{self.caption_ext}' file)")
            sample["caption"] = caption
        return sample


class ImageCaptionDataset(ImageFolderDataset):
    """Image + caption pairs: sidecar ``.txt`` files by default, or a caption table.

    ``ImageCaptionDataset(root="data/pairs", size=256)`` reads ``data/pairs/x.jpg`` with the caption
    in ``data/pairs/x.txt``; ``captions="data/pairs/captions.json"`` reads a table instead.
    """

    def __init__(self, root: str | None = None, size: int | None = None, *, captions: str | None = "sidecar", **kwargs):
        super().__init__(root, size, captions=captions or "sidecar", **kwargs)
