"""PatchGAN discriminator D_ψ of the autoencoder objective (LDM Eq. (25); pix2pix / VQGAN layout).

Module indices inside ``main`` follow the original, so ``loss.discriminator.main.*`` keys match.
"""
from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine ``scale · (x + loc)``, initialised from the first training batch (Glow)."""

    def __init__(self, num_features: int, logdet: bool = False, affine: bool = True, allow_reverse_init: bool = False):
        super().__init__()
        if not affine:
            raise ValueError("ActNorm: affine=False is not supported")
        self.logdet = logdet
        self.allow_reverse_init = allow_reverse_init
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean, std = flat.mean(1), flat.std(1)
        self.loc.data.copy_(-mean.view(1, -1, 1, 1))
        self.scale.data.copy_((1.0 / (std + 1e-6)).view(1, -1, 1, 1))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor, reverse: bool = False):
        if reverse:
            return self.reverse(x)
        squeeze = x.dim() == 2
        if squeeze:
            x = x[:, :, None, None]
        if self.training and self.initialized.item() == 0:
            self.initialize(x)
        h = self.scale * (x + self.loc)
        if squeeze:
            h = h.squeeze(-1).squeeze(-1)
        if self.logdet:
            logdet = x.shape[2] * x.shape[3] * torch.sum(torch.log(torch.abs(self.scale)))
            return h, logdet * torch.ones(x.shape[0], device=x.device)
        return h

    def reverse(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0:
            if not self.allow_reverse_init:
                raise RuntimeError("ActNorm: reverse() called before initialisation")
            self.initialize(h)
        return h / self.scale - self.loc


def weights_init(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); norm weights N(1, 0.02), biases 0."""
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4×4 convs, one stride-1 conv, a 1-channel logit map."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"NLayerDiscriminator: n_layers must be >= 1, got {n_layers}")
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm  # BatchNorm has its own shift, so its convs go without bias
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
