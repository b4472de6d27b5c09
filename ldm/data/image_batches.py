"""Image sources for evaluation: an image folder or a dataset, read as float batches
``B×3×H×W`` in ``[-1, 1]`` (optionally resized to ``S×S``), in a fixed order.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ldm.data.image_files import list_image_files


class ImageFiles(Dataset):
    """Image files -> float ``3×H×W`` in ``[-1, 1]`` (RGB; optionally resized to ``size×size``)."""

    def __init__(self, files: Sequence[Path], size: int | None = None):
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        from ldm.data.image_ops import load_image

        path = self.files[index]
        try:
            img = load_image(path)
            if self.size is not None and img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.uint8).copy()
        except Exception as err:  # noqa: BLE001 - report which file is broken
            raise ValueError(f"cannot read image {path}: {err}") from err
        return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Collate same-size images into a batch (a clear error when sizes differ)."""
    sizes = {tuple(img.shape) for img in images}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes in one batch {sorted(sizes)}; pass --image-size S to resize them")
    return torch.stack(images)


def folder_batches(root: str | Path, *, batch_size: int, image_size: int | None = None,
                   num_samples: int | None = None, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches of the images under ``root`` (recursive, sorted), the first ``num_samples`` of them."""
    files = list_image_files(root)
    if num_samples is not None:
        files = files[:num_samples]
    loader = DataLoader(ImageFiles(files, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=stack_images)
    yield from loader


def sample_image_to_chw(image: Any, where: str = "sample") -> torch.Tensor:
    """A dataset sample's ``image`` (tensor or array, ``C×H×W`` or ``H×W×C``) -> float ``3×H×W``."""
    tensor = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if tensor.dim() != 3:
        raise ValueError(f"{where}: 'image' must have 3 dimensions (C×H×W or H×W×C), got {tuple(tensor.shape)}")
    if tensor.shape[0] not in (1, 3) and tensor.shape[-1] in (1, 3):
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.shape[0] != 3:
        raise ValueError(f"{where}: 'image' must have 1 or 3 channels, got shape {tuple(tensor.shape)}")
    tensor = tensor.float()
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1.01 or high > 1.01:
        raise ValueError(f"{where}: 'image' values must lie in [-1, 1] (project convention), "
                         f"found [{low:.3g}, {high:.3g}]")
    return tensor


class DatasetImages(Dataset):
    """The ``image`` of each dict sample of ``dataset`` as float ``3×H×W`` (resized to ``size×size``)."""

    def __init__(self, dataset: Any, size: int | None):
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        sample = self.dataset[index]
        if not isinstance(sample, Mapping) or "image" not in sample:
            keys = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
            raise ValueError(f"dataset sample {index} must be a dict with an 'image' key, got {keys}")
        image = sample_image_to_chw(sample["image"], where=f"dataset sample {index}")
        if self.size is not None and image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bicubic",
                                  align_corners=False, antialias=True)[0].clamp(-1, 1)
        return image


def dataset_batches(dataset: Any, *, batch_size: int, image_size: int | None = None,
                    num_samples: int | None = None, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches of the images of ``dataset``'s samples, the first ``num_samples`` of them."""
    images = DatasetImages(dataset, image_size)
    if num_samples is not None and num_samples < len(images):
        images = torch.utils.data.Subset(images, range(num_samples))
    if len(images) == 0:
        raise ValueError("the dataset split is empty")
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=stack_images)
    yield from loader
