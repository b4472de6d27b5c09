"""The training-free shapes oracle scores real images high and noise / wrong labels low."""
import pytest
import torch

from ldm.data.shapes import NUM_CLASSES, NUM_COLORS, ShapesDataset
from ldm.eval.shapes_oracle import caption_accuracy, oracle_accuracy, predict_attributes, predict_position


def _batch(size, n=300, split="validation"):
    ds = ShapesDataset(size=size, length=n, split=split, seed=3)
    items = [ds[i] for i in range(n)]
    return (torch.stack([x["image"] for x in items]), torch.tensor([x["class_label"] for x in items]),
            [x["caption"] for x in items], items)


@pytest.mark.parametrize("size", [32, 64])
def test_oracle_reads_real_images(size):
    images, labels, captions, items = _batch(size)
    assert oracle_accuracy(images, labels) >= 0.95
    assert caption_accuracy(images, captions) >= 0.95
    shape, color = predict_attributes(images)
    assert shape.dtype == torch.long and shape.shape == (len(items),)
    assert (color == torch.tensor([x["color"] for x in items])).float().mean() >= 0.99
    positions = torch.tensor([x["position"] for x in items])
    assert (predict_position(images) == positions).float().mean() >= 0.85


def test_oracle_scores_noise_and_wrong_labels_low():
    images, labels, captions, _ = _batch(32, n=200)
    noise = torch.rand_like(images) * 2 - 1
    assert oracle_accuracy(noise, labels) < 0.3
    assert oracle_accuracy(images, (labels + 1) % NUM_CLASSES) < 0.05
    # same shape, wrong colour
    wrong_colour = labels - labels % NUM_COLORS + (labels % NUM_COLORS + 1) % NUM_COLORS
    assert oracle_accuracy(images, wrong_colour) < 0.05
    assert caption_accuracy(images, captions[1:] + captions[:1]) < 0.3
    blank = torch.full_like(images[:4], -0.5)
    shape, color = predict_attributes(blank)
    assert (shape == -1).all() and (color == -1).all()


def test_oracle_tolerates_mild_blur_and_noise():
    images, labels, _, _ = _batch(32, n=150)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)
    assert oracle_accuracy(blurred, labels) >= 0.9
    assert oracle_accuracy(noisy, labels) >= 0.9


def test_oracle_rejects_bad_input():
    with pytest.raises(ValueError):
        predict_attributes(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError):
        oracle_accuracy(torch.zeros(2, 3, 8, 8), [0, 1, 2])
