"""The embedded shapes dataset: deterministic, and its labels match its pixels."""
import numpy as np
import pytest
import torch

from ldm.data import shapes
from ldm.data.shapes import (
    COLOR_NAMES,
    COLORS,
    NUM_CLASSES,
    SHAPES,
    VOCABULARY,
    ShapesDataset,
    ShapesTrain,
    ShapesValidation,
    attributes_to_class,
    caption_for,
    class_to_attributes,
    parse_caption,
)


def test_class_mapping_round_trips_and_is_shape_major():
    assert NUM_CLASSES == len(SHAPES) * len(COLORS)
    for label in range(NUM_CLASSES):
        shape, color = class_to_attributes(label)
        assert label == shape * len(COLORS) + color
        assert attributes_to_class(shape, color) == label
        assert attributes_to_class(SHAPES[shape], COLOR_NAMES[color]) == label
    with pytest.raises(ValueError):
        class_to_attributes(NUM_CLASSES)
    with pytest.raises(ValueError):
        attributes_to_class("hexagon", "red")


def test_captions_use_only_vocabulary_words_and_parse_back():
    caption = caption_for("circle", "red", "top left")
    assert caption == "a red circle at the top left"
    for s in range(len(SHAPES)):
        for c in range(len(COLORS)):
            for p in range(len(shapes.POSITIONS)):
                text = caption_for(s, c, p)
                assert set(text.split()) <= set(VOCABULARY)
                assert parse_caption(text) == (s, c)
    assert len(VOCABULARY) == len(set(VOCABULARY))


@pytest.mark.parametrize("size", [32, 64])
def test_samples_have_the_contract_keys_and_ranges(size):
    sample = ShapesDataset(size=size, length=5)[3]
    assert sample["image"].shape == (3, size, size) and sample["image"].dtype == torch.float32
    assert sample["image"].min() >= -1 and sample["image"].max() <= 1
    assert sample["mask"].shape == (1, size, size)
    assert sample["class_label"] == attributes_to_class(sample["shape"], sample["color"])
    assert sample["caption"] == caption_for(sample["shape"], sample["color"], sample["position"])


def test_deterministic_per_index_and_seed_and_split():
    a, b = ShapesDataset(size=32, length=50, seed=7), ShapesDataset(size=32, length=50, seed=7)
    for i in (0, 13, 49):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    # order of access does not matter (per-index generator)
    assert torch.equal(a[13]["image"], ShapesDataset(size=32, length=50, seed=7)[13]["image"])
    other_seed = ShapesDataset(size=32, length=50, seed=8)
    assert not all(torch.equal(a[i]["image"], other_seed[i]["image"]) for i in range(5))
    train, val = ShapesTrain(size=32, length=50), ShapesValidation(size=32, length=50)
    assert not any(torch.equal(train[i]["image"], val[i]["image"]) for i in range(20))


def test_labels_match_pixels():
    """The shape's pixels carry the class colour; the background is dark and unsaturated."""
    ds = ShapesDataset(size=32, length=60)
    palette = torch.tensor([COLORS[n] for n in COLOR_NAMES])
    labels = set()
    for i in range(len(ds)):
        sample = ds[i]
        labels.add(sample["class_label"])
        rgb = (sample["image"] + 1) / 2  # [3, H, W] in [0, 1]
        mask = sample["mask"][0].bool()
        inside = rgb[:, mask].mean(dim=1)
        assert torch.linalg.norm(palette - inside, dim=1).argmin().item() == sample["color"]
        assert torch.allclose(inside, palette[sample["color"]], atol=0.06)
        outside = rgb[:, ~mask]
        chroma = outside.max(dim=0).values - outside.min(dim=0).values
        assert chroma.max() < 0.2 and outside.max() < 0.65
        # the silhouette's bounding box fill ratio identifies the shape
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill = mask.sum().item() / box.item()
        expected = {"square": (0.95, 1.01), "circle": (0.68, 0.9), "triangle": (0.4, 0.66)}[SHAPES[sample["shape"]]]
        assert expected[0] <= fill <= expected[1], (SHAPES[sample["shape"]], fill)
        # the caption's grid position holds the centre of the shape's bounding box
        cy, cx = (rows.min() + rows.max() + 1).item() / 2, (cols.min() + cols.max() + 1).item() / 2
        row, col = divmod(sample["position"], 3)
        assert row * 32 / 3 - 1 <= cy <= (row + 1) * 32 / 3 + 1
        assert col * 32 / 3 - 1 <= cx <= (col + 1) * 32 / 3 + 1
    assert len(labels) >= NUM_CLASSES - 2  # 60 draws cover (nearly) every class


def test_class_balance_is_roughly_uniform():
    ds = ShapesDataset(size=8, length=1200)
    counts = np.bincount([ds[i]["class_label"] for i in range(len(ds))], minlength=NUM_CLASSES)
    assert counts.min() > 0.5 * len(ds) / NUM_CLASSES


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="dev")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset(size=4)
    with pytest.raises(IndexError):
        ShapesDataset(length=3)[3]
