"""Autoencoder losses: LDM Eq. (25) (pixel + LPIPS reconstruction, KL or VQ term, PatchGAN)."""
from torch import nn

from .adversarial import adaptive_weight, adopt_weight, hinge_d_loss, vanilla_d_loss
from .contperceptual import LPIPSWithDiscriminator
from .discriminator import ActNorm, NLayerDiscriminator, weights_init
from .lpips import LPIPSLoss, LPIPSWeightsError
from .vqperceptual import VQLPIPSWithDiscriminator


class DummyLoss(nn.Module):
    """Placeholder loss for inference-only configs (no parameters, nothing to train)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("DummyLoss is a placeholder for inference-only configs; configure "
                           "LPIPSWithDiscriminator or VQLPIPSWithDiscriminator to train an autoencoder")


__all__ = [
    "ActNorm", "DummyLoss", "LPIPSLoss", "LPIPSWeightsError", "LPIPSWithDiscriminator", "NLayerDiscriminator",
    "VQLPIPSWithDiscriminator", "adaptive_weight", "adopt_weight", "hinge_d_loss", "vanilla_d_loss", "weights_init",
]
