"""The shapes data with task inputs (ldm/data/shapes_tasks.py): low-res image, fill mask, masked image."""
import pytest
import torch

from ldm.data.shapes import ShapesTrain
from ldm.data.shapes_tasks import ShapesTasksTrain, ShapesTasksValidation


def test_task_inputs_are_consistent_with_the_image():
    data = ShapesTasksTrain(size=32, length=16, lowres_size=8)
    base = ShapesTrain(size=32, length=16)
    for i in range(16):
        s = data[i]
        assert torch.equal(s["image"], base[i]["image"]) and s["caption"] == base[i]["caption"]
        assert s["LR_image"].shape == (3, 8, 8)
        assert torch.allclose(s["LR_image"], s["image"].reshape(3, 8, 4, 8, 4).mean(dim=(2, 4)), atol=1e-6)
        hole = s["inpaint_mask"]
        assert hole.shape == (1, 32, 32) and set(hole.unique().tolist()) == {0.0, 1.0}
        assert (hole * s["mask"]).sum() > 0  # the hole always covers part of the shape
        assert torch.equal(s["masked_image"], s["image"] * (1 - hole))
        rows, cols = hole[0].any(dim=1).sum(), hole[0].any(dim=0).sum()
        assert rows <= 0.5 * 32 + 1 and cols <= 0.5 * 32 + 1 and hole.sum() == rows * cols  # one rectangle


def test_deterministic_and_split_dependent():
    a, b = ShapesTasksTrain(length=4), ShapesTasksTrain(length=4)
    assert torch.equal(a[3]["inpaint_mask"], b[3]["inpaint_mask"])
    assert not torch.equal(ShapesTasksValidation(length=4)[3]["image"], a[3]["image"])


def test_bad_parameters():
    with pytest.raises(ValueError, match="lowres_size"):
        ShapesTasksTrain(size=32, lowres_size=5)
    with pytest.raises(ValueError, match="hole_min"):
        ShapesTasksTrain(hole_min=0.6, hole_max=0.5)
