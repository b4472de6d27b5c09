"""Shared pieces of the autoencoder objective, LDM Eq. (25):

    L_AE = min_{E,D} max_ψ ( L_rec(x, D(E(x))) − L_adv(D(E(x))) + log D_ψ(x) + L_reg(x; E, D) )

``L_rec`` is a pixel L1 (or L2) distance plus ``perceptual_weight``·LPIPS; ``L_adv`` is the
PatchGAN generator loss ``−mean D_ψ(x̂)``, weighted adaptively (VQGAN Eq. 7):
``λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_adv‖ + 1e-4)``, clamped to [0, 1e4], times ``disc_weight``,
where ``G_L`` is the decoder's last layer. The discriminator maximises ``log D_ψ(x)`` through the
hinge or vanilla (non-saturating) loss. Before ``disc_start`` (an optimisation-step count) the
adversarial factor is 0 and the discriminator is never evaluated.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .discriminator import NLayerDiscriminator, weights_init
from .lpips import LPIPSLoss


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``weight`` from ``threshold`` on, ``value`` before (the original helper)."""
    return weight if global_step >= threshold else value


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 1.0) -> torch.Tensor:
    """λ = ‖∇_last rec‖ / (‖∇_last g‖ + 1e-4), clamped to [0, 1e4], detached, times ``disc_weight``."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


class PerceptualGANLoss(nn.Module):
    """Reconstruction (pixel + LPIPS) and PatchGAN parts common to the KL and VQ losses."""

    def __init__(self, disc_start: int, pixelloss_weight: float = 1.0, disc_num_layers: int = 3,
                 disc_in_channels: int = 3, disc_factor: float = 1.0, disc_weight: float = 1.0,
                 perceptual_weight: float = 1.0, use_actnorm: bool = False, disc_conditional: bool = False,
                 disc_loss: str = "hinge", disc_ndf: int = 64, pixel_loss: str = "l1",
                 perceptual_backbone: str = "vgg", perceptual_weights_path: str | os.PathLike | None = None):
        super().__init__()
        if disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(D_LOSSES)}, got {disc_loss!r}")
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        self.discriminator_iter_start = int(disc_start)
        self.pixel_weight = float(pixelloss_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_conditional = bool(disc_conditional)
        self.disc_loss_name = disc_loss
        self.disc_loss = D_LOSSES[disc_loss]
        self.pixel_loss = pixel_loss
        self.perceptual_loss = LPIPSLoss(backbone=perceptual_backbone, weights_path=perceptual_weights_path)
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers, use_actnorm)
        self.discriminator.apply(weights_init)

    # -- schedule -----------------------------------------------------------------------------------
    def disc_active(self, global_step: int) -> bool:
        """Whether the discriminator takes part at this step (after ``disc_start``, with a factor > 0)."""
        return adopt_weight(self.disc_factor, global_step, self.discriminator_iter_start) > 0

    # -- pieces ------------------------------------------------------------------------------------
    def pixel_and_perceptual(self, inputs: torch.Tensor, reconstructions: torch.Tensor):
        """Per-element ``w_pix·|x − x̂|`` (or squared) ``+ w_p·LPIPS`` and the LPIPS values (B×1×1×1)."""
        diff = inputs.contiguous() - reconstructions.contiguous()
        rec = self.pixel_weight * (diff.abs() if self.pixel_loss == "l1" else diff.pow(2))
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec = rec + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros(inputs.shape[0], 1, 1, 1, device=inputs.device, dtype=inputs.dtype)
        return rec, p_loss

    def _disc_input(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if not self.disc_conditional:
            return images.contiguous()
        if cond is None:
            raise ValueError("disc_conditional=True needs a conditioning tensor `cond`")
        return torch.cat((images.contiguous(), cond), dim=1)

    def generator_term(self, reconstructions: torch.Tensor, rec_for_weight: torch.Tensor, global_step: int,
                       last_layer: torch.Tensor | None, cond: torch.Tensor | None):
        """(g_loss, λ, disc_factor). Does not touch the discriminator before ``disc_start``."""
        disc_factor = adopt_weight(self.disc_factor, global_step, self.discriminator_iter_start)
        zero = torch.zeros((), device=reconstructions.device)
        if disc_factor <= 0:
            return zero, zero, disc_factor
        logits_fake = self.discriminator(self._disc_input(reconstructions, cond))
        g_loss = -logits_fake.mean()
        can_differentiate = (self.training and torch.is_grad_enabled() and last_layer is not None
                             and rec_for_weight.requires_grad)
        if can_differentiate:
            d_weight = adaptive_weight(rec_for_weight, g_loss, last_layer, self.discriminator_weight)
        else:
            d_weight = zero
        return g_loss, d_weight, disc_factor

    @staticmethod
    def generator_log(split: str, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss) -> dict:
        """The log entries both autoencoder losses share (original key names)."""
        return {
            f"{split}/total_loss": loss.detach(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.tensor(float(disc_factor)),
            f"{split}/g_loss": g_loss.detach(),
        }

    def discriminator_term(self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int,
                           cond: torch.Tensor | None, split: str):
        """``disc_factor · L_D(D(x), D(x̂))`` on detached images, and its log."""
        disc_factor = adopt_weight(self.disc_factor, global_step, self.discriminator_iter_start)
        if disc_factor <= 0:
            zero = torch.zeros((), device=inputs.device)
            return zero, {f"{split}/disc_loss": zero}
        logits_real = self.discriminator(self._disc_input(inputs.detach(), cond))
        logits_fake = self.discriminator(self._disc_input(reconstructions.detach(), cond))
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.detach(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log
