"""Vector quantiser of the VQ-regularised autoencoder (LDM Sec. 3.1, Sec. G; VQ-VAE / VQGAN).

``z_q = e_k`` with ``k = argmin_j ‖z − e_j‖²``; gradients pass straight through (``z + sg(z_q − z)``).
Loss (the ``L_reg`` of LDM Eq. (25) for VQ models), with ``sg`` the stop-gradient:

* ``legacy=True`` (the taming/VQGAN placement, what released checkpoints were trained with):
  ``‖sg(z_q) − z‖² + β ‖z_q − sg(z)‖²`` — β weights the *codebook* term.
* ``legacy=False`` (VQ-VAE): ``β ‖sg(z_q) − z‖² + ‖z_q − sg(z)‖²`` — β weights the commitment term.
* ``use_ema=True``: the codebook term is replaced by exponential-moving-average updates of the
  codes (VQ-VAE App. A.1, with Laplace smoothing ``eps``); only the commitment term remains, with
  the weight the chosen placement gives it. Codes whose EMA cluster size falls below
  ``dead_code_threshold`` are restarted at random encoder outputs of the current batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerInfo(NamedTuple):
    """Third element of the quantiser output; ``info[2]`` are the indices, as in the original."""

    perplexity: torch.Tensor
    usage: torch.Tensor  # fraction of codebook entries used in this batch
    indices: torch.Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap: str | None = None,
                 unknown_index: str | int = "random", sane_index_shape: bool = False, legacy: bool = True,
                 use_ema: bool = False, decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.0):
        super().__init__()
        if n_e <= 0 or e_dim <= 0:
            raise ValueError(f"VectorQuantizer: n_e and e_dim must be positive, got {n_e}, {e_dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in (0, 1), got {decay}")
        self.n_e, self.e_dim, self.beta, self.legacy = int(n_e), int(e_dim), float(beta), bool(legacy)
        self.use_ema, self.decay, self.eps = bool(use_ema), float(decay), float(eps)
        self.dead_code_threshold = float(dead_code_threshold)
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

        self.remap = remap
        self.re_embed = self.n_e
        if remap is not None:
            self.register_buffer("used", torch.as_tensor(np.load(remap)).long())
            if unknown_index == "extra":
                unknown_index, self.re_embed = int(self.used.shape[0]), int(self.used.shape[0]) + 1
            else:
                self.re_embed = int(self.used.shape[0])
            if not (unknown_index == "random" or isinstance(unknown_index, int)):
                raise ValueError("VectorQuantizer: unknown_index must be 'random', 'extra' or an int, "
                                 f"got {unknown_index!r}")
        self.unknown_index = unknown_index

        if self.use_ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.ones(self.n_e))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())

    # -- index remapping (a sub-codebook of "used" entries, as in the original) -----------------
    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, :]).long()
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape, device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(shape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        shape = inds.shape
        inds = inds.reshape(shape[0], -1).clone()
        used = self.used.to(inds)
        if self.re_embed > used.shape[0]:  # the "extra" token maps back to entry 0
            inds[inds >= used.shape[0]] = 0
        return used[inds].reshape(shape)

    # -- quantisation ------------------------------------------------------------------------------
    def nearest_codes(self, z_flat: torch.Tensor) -> torch.Tensor:
        codes = self.embedding.weight
        distances = (z_flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None, :]
                     - 2.0 * z_flat @ codes.t())
        return distances.argmin(dim=1)

    def quantization_loss(self, z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        commitment = F.mse_loss(z, z_q.detach())
        codebook = F.mse_loss(z_q, z.detach())
        commit_weight, codebook_weight = (1.0, self.beta) if self.legacy else (self.beta, 1.0)
        if self.use_ema:
            return commit_weight * commitment
        return commit_weight * commitment + codebook_weight * codebook

    @torch.no_grad()
    def ema_update(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        """N ← γN + (1−γ)n,  m ← γm + (1−γ)Σz,  e = m / N̂ with N̂ = (N + ε)/(ΣN + Kε)·ΣN."""
        counts = torch.bincount(indices, minlength=self.n_e).to(z_flat.dtype)
        sums = torch.zeros_like(self.ema_embed_sum, dtype=z_flat.dtype).index_add_(0, indices, z_flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_cluster_size.mul_(self.decay).add_(counts.to(self.ema_cluster_size), alpha=1.0 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(sums.to(self.ema_embed_sum), alpha=1.0 - self.decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (total + self.n_e * self.eps) * total
        self.embedding.weight.data.copy_(self.ema_embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self.restart_dead_codes(z_flat)

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: torch.Tensor) -> int:
        dead = self.ema_cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        picks = torch.randint(0, z_flat.shape[0], (n_dead,), device=z_flat.device)
        fresh = z_flat[picks].to(self.embedding.weight)
        if _distributed():  # every rank must restart to the same vectors
            dist.broadcast(fresh, src=0)
        self.embedding.weight.data[dead] = fresh
        self.ema_embed_sum[dead] = fresh
        self.ema_cluster_size[dead] = 1.0
        return n_dead

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        """``z`` B×C×H×W → ``(z_q, loss, QuantizerInfo(perplexity, usage, indices))``."""
        if z.shape[1] != self.e_dim:
            raise ValueError(f"VectorQuantizer: expected {self.e_dim} channels, got input of shape {tuple(z.shape)}")
        b, c, h, w = z.shape
        z_bhwc = z.permute(0, 2, 3, 1).contiguous()
        z_flat = z_bhwc.reshape(-1, c)
        indices = self.nearest_codes(z_flat.detach())
        z_q = self.embedding(indices).view_as(z_bhwc).permute(0, 3, 1, 2)
        if self.use_ema and self.training:  # after the lookup: this batch is quantised with the old codes
            self.ema_update(z_flat.detach().float(), indices)
        loss = self.quantization_loss(z, z_q)
        z_q = z + (z_q - z).detach()  # straight-through estimator

        probs = torch.bincount(indices, minlength=self.n_e).float() / indices.numel()
        perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
        usage = (probs > 0).float().mean()

        out_indices = indices
        if self.remap is not None:
            out_indices = self.remap_to_used(indices.reshape(b, -1)).reshape(-1)
        if self.sane_index_shape:
            out_indices = out_indices.reshape(b, h, w)
        return z_q, loss, QuantizerInfo(perplexity, usage, out_indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int] | None) -> torch.Tensor:
        """Indices → code vectors; with ``shape = (B, H, W, C)`` returns B×C×H×W."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0] if shape else 1, -1)).reshape(-1)
        z_q = self.embedding(indices.reshape(-1))
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q
