"""FID / KID / IS through torchmetrics on pre-extracted features, checked against closed forms."""
import math

import pytest
import torch

from ldm.eval.features import FeatureBatch
from ldm.eval.generative import (
    compute_generative_metrics,
    frechet_distance,
    inception_score,
    kernel_distance,
    parse_metric_names,
)

DIM = 8


def gaussian(n, shift=0.0, seed=0, dim=DIM):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + shift


def test_fid_of_a_set_with_itself_is_zero():
    real = gaussian(400)
    assert abs(frechet_distance(real, real)) < 1e-6


def test_fid_matches_closed_form_for_shifted_gaussians():
    # N(0, I) vs N(s·1, I): FID = ||mu1 - mu2||^2 + 0 = d·s^2 (covariances equal)
    real = gaussian(4000, seed=1)
    values = []
    for shift in (0.25, 0.5, 1.0):
        fid = frechet_distance(real, gaussian(4000, shift, seed=2))
        expected = DIM * shift**2
        assert fid == pytest.approx(expected, rel=0.15, abs=0.05)
        values.append(fid)
    assert values == sorted(values)


def test_fid_matches_closed_form_for_scaled_gaussians():
    # N(0, I) vs N(0, c²I): FID = d·(1 + c² - 2c) = d·(1 - c)²
    real, c = gaussian(4000, seed=3), 2.0
    fid = frechet_distance(real, c * gaussian(4000, seed=4))
    assert fid == pytest.approx(DIM * (1 - c) ** 2, rel=0.1)


def test_kid_near_zero_for_same_distribution_and_growing_with_shift():
    real = gaussian(300, seed=5)
    same, _ = kernel_distance(real, gaussian(300, seed=6), subsets=20, subset_size=200)
    shifted = [kernel_distance(real, gaussian(300, s, seed=6), subsets=20, subset_size=200)[0] for s in (0.5, 1.0, 2.0)]
    assert abs(same) < 0.05 * shifted[0]
    assert shifted == sorted(shifted) and shifted[0] > 0


def test_kid_is_reproducible_with_seed_and_leaves_global_rng_alone():
    real, fake = gaussian(100, seed=7), gaussian(100, 0.5, seed=8)
    state = torch.random.get_rng_state()
    first = kernel_distance(real, fake, subsets=5, subset_size=50, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert kernel_distance(real, fake, subsets=5, subset_size=50, seed=3) == first


def test_inception_score_closed_forms():
    k, n = 5, 500
    # confident, class-balanced predictions: IS = exp(H(p(y))) = K
    labels = torch.arange(n) % k
    confident = torch.nn.functional.one_hot(labels, k).double() * 50.0
    mean, _ = inception_score(confident, splits=2)  # each half is still balanced
    assert mean == pytest.approx(k, rel=1e-2)  # random splits are only nearly balanced
    # every image gets the same prediction: IS = 1
    same = torch.randn(1, k).repeat(n, 1)
    assert inception_score(same, splits=2)[0] == pytest.approx(1.0, abs=1e-6)
    # all mass on 2 of 5 classes: IS = 2
    two = torch.nn.functional.one_hot(torch.arange(n) % 2, k).double() * 50.0
    assert inception_score(two, splits=2)[0] == pytest.approx(2.0, rel=1e-2)
    with pytest.raises(ValueError, match="logits"):
        inception_score(None)


def test_compute_generative_metrics_reports_all_and_validates():
    real = FeatureBatch(gaussian(60, seed=9), torch.randn(60, 4))
    fake = FeatureBatch(gaussian(60, 1.0, seed=10), torch.randn(60, 4))
    out = compute_generative_metrics(real, fake, "fid,kid,is,pr", kid_subsets=5)
    assert set(out) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall"}
    assert all(math.isfinite(v) for v in out.values())
    assert compute_generative_metrics(None, fake, ["is"])["is_mean"] >= 1.0
    with pytest.raises(ValueError, match="reference"):
        compute_generative_metrics(None, fake, ["fid"])
    with pytest.raises(ValueError, match="choose from"):
        parse_metric_names("fid,fvd", ("fid", "kid"))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(gaussian(1), gaussian(5))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(gaussian(5, dim=3), gaussian(5, dim=4))
