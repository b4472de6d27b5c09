"""Improved precision and recall (Kynkäänniemi et al., 2019, "Improved Precision and Recall Metric
for Assessing Generative Models").

Each set of feature vectors defines a manifold estimate: the union of balls centred on its points,
each ball's radius the distance to that point's k-th nearest neighbour within the same set (k = 3
in the paper). Then

    precision = fraction of generated points inside the *reference* manifold   (sample quality)
    recall    = fraction of reference points inside the *generated* manifold   (coverage)

``f(φ, Φ) = 1  iff  ∃ φ' ∈ Φ : ‖φ − φ'‖ ≤ ‖φ' − NN_k(φ', Φ)‖``.

LDM reports these next to FID (LDM Sec. E.3.1, Tables 1/2). Distances are computed in chunks so
memory stays ``O(chunk × N)``; squared Euclidean distances are compared with squared radii.
"""
from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 24  # ~128 MB of float64 distances per chunk (a few such temporaries live at once)


def _as_matrix(features: Tensor, name: str) -> Tensor:
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"{name} must be a [N, d] tensor, got {getattr(features, 'shape', type(features))}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    return features.to(dtype)


def _squared_distances(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    a_sq = (a * a).sum(dim=1, keepdim=True)
    return (a_sq + b_sq.unsqueeze(0) - 2.0 * a @ b.T).clamp_min_(0.0)


def _rows_per_chunk(n_columns: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_columns))


def knn_radii(features: Tensor, k: int = 3) -> Tensor:
    """Squared distance from each point to its k-th nearest *other* point of the same set. ``[N]``."""
    features = _as_matrix(features, "features")
    n = features.shape[0]
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors to estimate k-NN radii, got {n}")
    sq_norms = (features * features).sum(dim=1)
    radii = []
    step = _rows_per_chunk(n)
    for start in range(0, n, step):
        d2 = _squared_distances(features[start:start + step], features, sq_norms)
        # the (k+1)-th smallest includes the point itself at distance 0
        radii.append(d2.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(queries: Tensor, support: Tensor, support_radii: Tensor) -> Tensor:
    """Fraction of ``queries`` lying inside at least one ball (centre ``support[j]``, squared radius
    ``support_radii[j]``)."""
    queries = _as_matrix(queries, "queries")
    support = _as_matrix(support, "support").to(queries.dtype)
    if queries.shape[1] != support.shape[1]:
        raise ValueError(f"feature sizes differ: {queries.shape[1]} vs {support.shape[1]}")
    radii = support_radii.to(queries.dtype)
    sq_norms = (support * support).sum(dim=1)
    inside = []
    step = _rows_per_chunk(support.shape[0])
    for start in range(0, queries.shape[0], step):
        d2 = _squared_distances(queries[start:start + step], support, sq_norms)
        inside.append((d2 <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).to(torch.float64).mean()


def precision_recall(real_features: Tensor, fake_features: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall of ``fake_features`` w.r.t. ``real_features`` (k-NN radii, k=3)."""
    real = _as_matrix(real_features, "real features")
    fake = _as_matrix(fake_features, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]} vs generated {fake.shape[1]}")
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return {"precision": float(precision), "recall": float(recall)}
