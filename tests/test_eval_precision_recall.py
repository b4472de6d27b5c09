"""Improved precision/recall (Kynkäänniemi et al. 2019, k-NN radii with k=3)."""
import pytest
import torch

from ldm.eval.precision_recall import knn_radii, manifold_coverage, precision_recall


def cluster(n, centre, seed, dim=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + torch.as_tensor(centre, dtype=torch.float32)


def test_knn_radii_on_a_line_match_hand_computed_values():
    points = torch.arange(10.0).unsqueeze(1)  # 0, 1, ..., 9 on a line
    radii = knn_radii(points, k=3)  # squared distance to the 3rd nearest other point
    # point 0: neighbours 1, 2, 3 -> 3² ; point 5: 4/6 (1), 3/7 (2) -> third is at distance 2
    assert radii[0].item() == pytest.approx(9.0)
    assert radii[5].item() == pytest.approx(4.0)
    assert radii[9].item() == pytest.approx(9.0)
    assert radii[1].item() == pytest.approx(4.0)  # 0/2 at 1, 3 at 2


def test_coverage_uses_ball_membership():
    support = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    radii = torch.tensor([1.0, 4.0])  # squared radii 1 and 4 (radius 1 and 2)
    queries = torch.tensor([[0.5, 0.0], [1.5, 0.0], [11.9, 0.0], [12.1, 0.0]])
    assert manifold_coverage(queries, support, radii).item() == pytest.approx(0.5)


def test_identical_sets_have_precision_and_recall_one():
    feats = cluster(300, [0.0] * 16, seed=0, dim=16)
    assert precision_recall(feats, feats.clone()) == {"precision": 1.0, "recall": 1.0}


def test_disjoint_distributions_have_zero_precision_and_recall():
    real = cluster(300, [0.0, 0.0], seed=1)
    fake = cluster(300, [50.0, 0.0], seed=2)
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}


def test_mode_dropping_keeps_precision_and_halves_recall():
    # real = two equally likely, well-separated modes; generated covers only one of them.
    real = torch.cat([cluster(500, [-20.0, 0.0], seed=3), cluster(500, [20.0, 0.0], seed=4)])
    fake = cluster(500, [20.0, 0.0], seed=5)
    same_mode = precision_recall(real[500:], fake)  # both sets from the same mode: the estimator's ceiling
    result = precision_recall(real, fake)
    assert same_mode["precision"] > 0.9 and same_mode["recall"] > 0.9
    assert result["precision"] > 0.9  # every generated sample is realistic
    # only the covered mode's share of the real mass (1/2) is recalled
    assert result["recall"] == pytest.approx(0.5 * same_mode["recall"], abs=0.03)


def test_recall_drops_when_generator_is_too_narrow():
    real = cluster(600, [0.0, 0.0], seed=6)
    narrow = 0.2 * cluster(600, [0.0, 0.0], seed=7)
    result = precision_recall(real, narrow)
    assert result["precision"] > 0.9 and result["recall"] < 0.6


def test_precision_recall_validates_inputs():
    with pytest.raises(ValueError, match="more than k"):
        knn_radii(torch.randn(3, 2), k=3)
    with pytest.raises(ValueError, match="feature sizes differ"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        precision_recall(torch.randn(10), torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(torch.full((10, 2), float("nan")), torch.randn(10, 2))
