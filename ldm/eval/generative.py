"""FID, KID, IS and precision/recall from pre-extracted features, computed by torchmetrics.

Features are extracted once per image set (:mod:`ldm.eval.features`) and then handed to
torchmetrics' ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore``
through a pass-through ``feature`` module (torchmetrics accepts any ``nn.Module`` that maps its
input to ``[N, d]``; ours is the identity on feature vectors). So one forward pass of the
extractor serves every metric, and the statistics are torchmetrics' own:

- FID  = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})  (Heusel et al. 2017)
- KID  = unbiased MMD² with the cubic polynomial kernel k(x,y) = (xᵀy/d + 1)³, averaged over
  random subsets (Bińkowski et al. 2018)
- IS   = exp(E_x KL(p(y|x) ‖ p(y))) over splits (Salimans et al. 2016), from class logits
- precision / recall: :mod:`ldm.eval.precision_recall` (Kynkäänniemi et al. 2019, k = 3)

LDM evaluates FID/precision/recall this way (LDM Sec. E.3.1) with torch-fidelity's InceptionV3.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable

from torch import Tensor, nn

from ldm.eval.features import FeatureBatch
from ldm.eval.precision_recall import precision_recall
from ldm.util import seeded_cpu_rng

GENERATIVE_METRICS = ("fid", "kid", "is", "pr")


class _PrecomputedFeatures(nn.Module):
    """The ``feature`` network handed to torchmetrics: its inputs already are the features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@contextlib.contextmanager
def _features_kept_in_memory():
    """torchmetrics warns that KID/IS keep all features in memory; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        yield


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets ``[N, d]`` (torchmetrics' estimator, float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_pair(real, fake, minimum=2, what="FID")
    metric = FrechetInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``min(subset_size, N_real, N_fake)``)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_pair(real, fake, minimum=2, what="KID")
    size = min(subset_size, real.shape[0], fake.shape[0])
    with _features_kept_in_memory():
        metric = KernelInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with seeded_cpu_rng(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS (mean, std over ``min(splits, N)`` splits) from class logits ``[N, k]``."""
    from torchmetrics.image.inception import InceptionScore

    if logits is None:
        raise ValueError("IS needs class logits, but this feature extractor has no classifier head")
    if logits.dim() != 2 or logits.shape[0] < 2:
        raise ValueError(f"IS needs logits of shape [N>=2, k], got {tuple(logits.shape)}")
    with _features_kept_in_memory():
        metric = InceptionScore(feature=_PrecomputedFeatures(logits.shape[1]), splits=min(splits, logits.shape[0]))
    metric.update(logits.double())
    with seeded_cpu_rng(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def _check_pair(real: Tensor, fake: Tensor, *, minimum: int, what: str) -> None:
    for name, x in (("reference", real), ("generated", fake)):
        if x.dim() != 2:
            raise ValueError(f"{what}: {name} features must be [N, d], got {tuple(x.shape)}")
        if x.shape[0] < minimum:
            raise ValueError(f"{what} needs at least {minimum} {name} samples, got {x.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"{what}: feature sizes differ (reference {real.shape[1]}, generated {fake.shape[1]})")


def parse_metric_names(names: str | Iterable[str], allowed: Iterable[str]) -> list[str]:
    """``"fid,kid"`` -> ``["fid", "kid"]``; unknown names raise, listing the allowed ones."""
    allowed = tuple(allowed)
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = [n.strip().lower() for n in items if n.strip()]
    unknown = [n for n in chosen if n not in allowed]
    if unknown or not chosen:
        raise ValueError(f"unknown or empty metric list {unknown or names!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(chosen))


def compute_generative_metrics(reference: FeatureBatch | None, generated: FeatureBatch,
                               metrics: Iterable[str] = GENERATIVE_METRICS, *, kid_subsets: int = 100,
                               kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3,
                               seed: int = 0) -> dict[str, float]:
    """All requested metrics of ``generated`` against ``reference`` (IS needs only ``generated``)."""
    metrics = parse_metric_names(metrics, GENERATIVE_METRICS)
    if reference is None and any(m != "is" for m in metrics):
        raise ValueError(f"metrics {[m for m in metrics if m != 'is']} need a reference set")
    results: dict[str, float] = {}
    if "fid" in metrics:
        results["fid"] = frechet_distance(reference.features, generated.features)
    if "kid" in metrics:
        results["kid_mean"], results["kid_std"] = kernel_distance(
            reference.features, generated.features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if "is" in metrics:
        results["is_mean"], results["is_std"] = inception_score(generated.logits, splits=is_splits, seed=seed)
    if "pr" in metrics:
        results.update(precision_recall(reference.features, generated.features, k=pr_k))
    return results
