"""Class-label conditioner: a learned embedding per class (LDM class-conditional ImageNet models)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ldm.modules.conditioners.base import Conditioner, batch_size_of
from ldm.modules.conditioners.registry import register_conditioner


@register_conditioner("class_label", "class")
class ClassEmbedder(Conditioner):
    """``embedding.weight`` [num_embeddings, embed_dim]; output [B, 1, D] (crossattn) or [B, D] (vector).

    The null (unconditional) class, used for classifier-free guidance:

    * default: the last row, index ``n_classes - 1`` — the original cin256-v2 config passes
      ``n_classes: 1001`` for ImageNet's 1000 classes, reserving index 1000 for "no class";
    * ``add_null_class=True``: one extra row is added (``n_classes + 1`` rows) and index ``n_classes``
      is the null class, so ``n_classes`` counts only real classes;
    * ``null_class_index=k``: an explicit index (overrides both).

    ``raw`` is a LongTensor / list of labels [B], or a batch dict holding them under ``key``
    (the original ``forward(batch)`` convention).
    """

    input_kind = "class"

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class", ucg_rate: float = 0.0,
                 add_null_class: bool = False, null_class_index: int | None = None,
                 output_key: str = "crossattn"):
        super().__init__(output_key=output_key, ucg_rate=ucg_rate)
        if output_key == "concat":
            raise ValueError("ClassEmbedder produces 'crossattn' or 'vector' conditioning, not 'concat'")
        if n_classes < 1 or embed_dim < 1:
            raise ValueError(f"n_classes and embed_dim must be >= 1, got {n_classes}, {embed_dim}")
        self.key = key
        self.n_classes = n_classes
        num_embeddings = n_classes + 1 if add_null_class else n_classes
        if null_class_index is None:
            null_class_index = num_embeddings - 1
        if not 0 <= null_class_index < num_embeddings:
            raise ValueError(f"null_class_index {null_class_index} outside [0, {num_embeddings})")
        self.null_class_index = null_class_index
        self.embedding = nn.Embedding(num_embeddings, embed_dim)

    def labels(self, raw) -> torch.Tensor:
        if isinstance(raw, Mapping):
            if self.key not in raw:
                raise KeyError(f"ClassEmbedder: batch has no key {self.key!r} (keys: {sorted(raw)})")
            raw = raw[self.key]
        labels = torch.as_tensor(raw, device=self.embedding.weight.device).long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.embedding.num_embeddings):
            raise ValueError(f"class labels must lie in [0, {self.embedding.num_embeddings}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels

    def batch_size(self, raw) -> int:
        return self.labels(raw).shape[0]

    def _embed(self, labels: torch.Tensor) -> torch.Tensor:
        z = self.embedding(labels)
        return z[:, None, :] if self.output_key == "crossattn" else z

    def _encode(self, raw) -> torch.Tensor:
        return self._embed(self.labels(raw))

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        if isinstance(raw_or_batch_size, Mapping) or torch.is_tensor(raw_or_batch_size):
            batch = self.batch_size(raw_or_batch_size)
        else:
            batch = batch_size_of(raw_or_batch_size)
        labels = torch.full((batch,), self.null_class_index, dtype=torch.long, device=self.embedding.weight.device)
        return self._embed(labels)
