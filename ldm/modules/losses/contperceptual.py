"""KL-autoencoder loss (LDM Eq. (25) with the KL regulariser, Sec. G).

    rec  = w_pix·|x − x̂| + w_p·LPIPS(x, x̂)                    (per element)
    NLL  = Σ (rec / exp(s) + s) / B                            (s = ``logvar``, a learned scalar)
    loss = NLL_w + kl_weight · Σ KL(q(z|x) || N(0,I)) / B + λ · disc_factor · (−mean D_ψ(x̂))
"""
from __future__ import annotations

import torch
from torch import nn

from .adversarial import PerceptualGANLoss


class LPIPSWithDiscriminator(PerceptualGANLoss):
    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0, **kwargs):
        super().__init__(disc_start, **kwargs)
        self.kl_weight = float(kl_weight)
        self.logvar = nn.Parameter(torch.ones(()) * logvar_init)

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx: int, global_step: int,
                last_layer=None, cond=None, split: str = "train", weights=None):
        if optimizer_idx == 1:
            return self.discriminator_term(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
        batch = inputs.shape[0]
        rec_loss, p_loss = self.pixel_and_perceptual(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = weighted_nll_loss.sum() / batch
        nll_loss = nll_loss.sum() / batch
        kl_loss = posteriors.kl().sum() / batch

        g_loss, d_weight, disc_factor = self.generator_term(reconstructions, nll_loss, global_step, last_layer, cond)
        loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
        log = {
            **self.generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": kl_loss.detach(),
        }
        return loss, log
