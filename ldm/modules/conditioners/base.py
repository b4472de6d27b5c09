"""The conditioner interface (docs/architecture.md, "Conditioning").

A conditioner maps raw conditioning data (labels, captions, images) to a tensor for one of the
UNet's inputs (``output_key``): ``crossattn`` [B, M, D] (cross-attention context, LDM Eq. (3)),
``concat`` [B, C, h, w] (concatenated to z_t) or ``vector`` [B, D] (added to the time embedding).

Classifier-free guidance (Ho & Salimans 2022) needs the model to also learn p(z) — the
conditioner replaces the condition by its *null condition* for a random fraction ``ucg_rate`` of the
training rows ("unconditional guidance" dropout), and provides the same null condition at sampling.
"""
from __future__ import annotations

import torch
from torch import nn

OUTPUT_KEYS = ("crossattn", "concat", "vector")


class Conditioner(nn.Module):
    """Base class: subclasses implement :meth:`_encode`, :meth:`null_condition` and :meth:`batch_size`.

    ``encode(raw, drop_mask=None)``: rows where ``drop_mask`` is True get the null condition; with
    ``drop_mask=None`` nothing is dropped. ``encode`` itself is deterministic: the training loop
    owns the randomness and draws the mask with :meth:`sample_drop_mask` (Bernoulli(``ucg_rate``)
    per row), so dropout can never be applied twice or leak into validation/sampling.

    ``input_kind`` states what the raw input is (``class`` labels, ``text`` captions, ``other``), so a
    model can tell its callers how to drive it; None: not stated.
    """

    input_kind: str | None = None

    def __init__(self, output_key: str = "crossattn", ucg_rate: float = 0.0):
        super().__init__()
        if output_key not in OUTPUT_KEYS:
            raise ValueError(f"output_key must be one of {OUTPUT_KEYS}, got {output_key!r}")
        if not 0.0 <= float(ucg_rate) <= 1.0:
            raise ValueError(f"ucg_rate must be in [0, 1], got {ucg_rate}")
        self.output_key = output_key
        self.ucg_rate = float(ucg_rate)

    # --- to implement -------------------------------------------------------------------
    def _encode(self, raw) -> torch.Tensor:
        raise NotImplementedError

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        raise NotImplementedError

    def batch_size(self, raw) -> int:
        return len(raw)

    # --- shared ---------------------------------------------------------------------------
    def sample_drop_mask(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bernoulli(ucg_rate) mask of shape [batch_size] (True = use the null condition)."""
        draws = torch.rand(batch_size, generator=generator, device="cpu" if generator is not None else device)
        return (draws < self.ucg_rate).to(device)

    def encode(self, raw, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self._encode(raw)
        if drop_mask is None:
            return z
        batch = self.batch_size(raw)
        drop_mask = torch.as_tensor(drop_mask, dtype=torch.bool, device=z.device).reshape(-1)
        if drop_mask.shape[0] != batch:
            raise ValueError(f"drop_mask has {drop_mask.shape[0]} entries for a batch of {batch}")
        if not bool(drop_mask.any()):
            return z
        null = self.null_condition(raw).to(device=z.device, dtype=z.dtype)
        return torch.where(drop_mask.reshape(batch, *([1] * (z.ndim - 1))), null, z)

    def forward(self, raw, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(raw, drop_mask)


def as_text_list(raw) -> list[str]:
    """Captions as a list of strings (a single string is a batch of one)."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, (list, tuple)) and all(isinstance(t, str) for t in raw):
        return list(raw)
    raise TypeError(f"expected a caption string or a list of strings, got {type(raw).__name__}")


def batch_size_of(raw_or_batch_size) -> int:
    if isinstance(raw_or_batch_size, int):
        if raw_or_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {raw_or_batch_size}")
        return raw_or_batch_size
    if isinstance(raw_or_batch_size, str):
        return 1
    return len(raw_or_batch_size)
