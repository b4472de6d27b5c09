"""VQ-autoencoder loss (LDM Eq. (25) with the VQ regulariser; VQGAN objective).

    rec  = w_pix·|x − x̂| + w_p·LPIPS(x, x̂)
    loss = mean(rec) + λ · disc_factor · (−mean D_ψ(x̂)) + codebook_weight · L_VQ
"""
from __future__ import annotations

import torch

from .adversarial import PerceptualGANLoss


class VQLPIPSWithDiscriminator(PerceptualGANLoss):
    def __init__(self, disc_start: int, codebook_weight: float = 1.0, n_classes: int | None = None,
                 perceptual_loss: str = "lpips", **kwargs):
        if perceptual_loss != "lpips":
            raise ValueError(f"perceptual_loss must be 'lpips', got {perceptual_loss!r}")
        super().__init__(disc_start, **kwargs)
        self.codebook_weight = float(codebook_weight)
        self.n_classes = n_classes

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx: int, global_step: int,
                last_layer=None, cond=None, split: str = "train", predicted_indices=None):
        if optimizer_idx == 1:
            return self.discriminator_term(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
        if codebook_loss is None:
            codebook_loss = torch.zeros((), device=inputs.device)
        rec_loss, p_loss = self.pixel_and_perceptual(inputs, reconstructions)
        nll_loss = rec_loss.mean()
        g_loss, d_weight, disc_factor = self.generator_term(reconstructions, nll_loss, global_step, last_layer, cond)
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        log = {
            **self.generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss),
            f"{split}/quant_loss": codebook_loss.detach().mean(),
        }
        return loss, log
