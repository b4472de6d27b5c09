"""LPIPS perceptual distance (Zhang et al. 2018) from the ``lpips`` package, with offline-safe weights.

The linear heads ship inside the ``lpips`` package. The VGG-16 trunk uses torchvision's ImageNet
weights, file ``vgg16-397923af.pth``, which torchvision normally downloads into
``$TORCH_HOME/hub/checkpoints/``. Without network access they must be provided: put the file in
that cache directory, or pass its path as ``weights_path`` (loss config:
``perceptual_weights_path``). ``backbone="random"`` (loss config: ``perceptual_backbone: random``)
builds a randomly initialised trunk instead — only for tests and CPU demos, the distance then has
no perceptual meaning.

Sub-module names (``scaling_layer``, ``net.slice1..5``, ``lin0..lin4``) are those of the original
``taming`` LPIPS, so ``loss.perceptual_loss.*`` checkpoint keys load unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
BACKBONES = ("vgg", "random")
# torchvision vgg16.features index -> lpips slice holding it (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


class LPIPSWeightsError(RuntimeError):
    """The VGG-16 trunk weights for LPIPS are not available (offline and not provided)."""


def vgg16_cache_path() -> Path:
    """Where torchvision looks for (and downloads) the VGG-16 weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _offline() -> bool:
    flags = ("LDM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _missing_weights_message(reason: str) -> str:
    return (
        f"LPIPS needs the torchvision VGG-16 ImageNet weights '{VGG16_FILENAME}' ({reason}). Provide them by "
        f"either (a) copying the file to {vgg16_cache_path()} (torchvision's cache, $TORCH_HOME/hub/checkpoints/), or "
        f"(b) setting the loss config parameter 'perceptual_weights_path: /path/to/{VGG16_FILENAME}'. "
        f"The file is downloadable from {VGG16_URL}. For tests and CPU demos only, 'perceptual_backbone: random' "
        f"builds a randomly initialised trunk (no perceptual meaning)."
    )


def resolve_vgg16_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Find the VGG-16 weights file: the explicit path, else the torch hub cache (downloading if online)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise LPIPSWeightsError(_missing_weights_message(f"perceptual_weights_path {path} does not exist"))
        return path
    path = vgg16_cache_path()
    if path.is_file():
        return path
    if _offline():
        raise LPIPSWeightsError(_missing_weights_message(f"not found at {path} and running offline"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(VGG16_URL, str(path), progress=False)
    except Exception as err:  # network errors come in many types
        raise LPIPSWeightsError(_missing_weights_message(f"download failed: {err}")) from err
    return path


def vgg16_features_to_lpips_trunk(state_dict: dict) -> dict:
    """torchvision ``features.{i}.*`` (or bare ``{i}.*``) keys -> lpips ``slice{s}.{i}.*`` keys."""
    trunk = {}
    for key, value in state_dict.items():
        name = key[len("features."):] if key.startswith("features.") else key
        head, _, rest = name.partition(".")
        if not head.isdigit():
            continue  # classifier weights are not part of the trunk
        index = int(head)
        for slice_no, (lo, hi) in enumerate(_SLICE_BOUNDS, start=1):
            if lo <= index < hi:
                trunk[f"slice{slice_no}.{index}.{rest}"] = value
    return trunk


def _spatial_unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class VGG16Trunk(nn.Module):
    """torchvision VGG-16 ``features`` cut into the five LPIPS slices (relu1_2 ... relu5_3).

    Built from ``torchvision.models.vgg.make_layers`` rather than a full ``vgg16()`` so the
    120M-parameter classifier is never allocated; layer indices (and keys) are those of ``lpips``.
    """

    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])
        for slice_no, (lo, hi) in enumerate(_SLICE_BOUNDS, start=1):
            part = nn.Sequential()
            for index in range(lo, hi):
                part.add_module(str(index), features[index])
            setattr(self, f"slice{slice_no}", part)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for slice_no in range(1, len(_SLICE_BOUNDS) + 1):
            x = getattr(self, f"slice{slice_no}")(x)
            outputs.append(x)
        return outputs


class LPIPSLoss(nn.Module):
    """Frozen LPIPS-VGG distance; ``forward(x, y)`` (B×3×H×W in [-1, 1]) returns B×1×1×1.

    ``ScalingLayer``, ``NetLinLayer`` and the calibrated linear-head weights (``weights/v0.1/vgg.pth``)
    come from the ``lpips`` package; the trunk is torchvision's VGG-16 features.
    """

    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, backbone: str = "vgg", weights_path: str | os.PathLike | None = None, use_dropout: bool = True):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"LPIPSLoss: backbone must be one of {BACKBONES}, got {backbone!r}")
        trunk_path = resolve_vgg16_weights(weights_path) if backbone == "vgg" else None  # fail before building
        import lpips
        from lpips.lpips import NetLinLayer, ScalingLayer

        self.backbone = backbone
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Trunk()
        self.num_layers = len(self.CHANNELS)
        for k, channels in enumerate(self.CHANNELS):
            setattr(self, f"lin{k}", NetLinLayer(channels, use_dropout=use_dropout))
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        from ldm.checkpoint import safe_torch_load

        head_state = safe_torch_load(heads)
        self.load_state_dict(head_state, strict=False)
        if trunk_path is not None:
            trunk = vgg16_features_to_lpips_trunk(safe_torch_load(trunk_path))
            missing = set(self.net.state_dict()) - set(trunk)
            if missing:
                raise LPIPSWeightsError(f"{trunk_path} is not a torchvision VGG-16 state dict "
                                        f"(missing {sorted(missing)[:4]} ...)")
            self.net.load_state_dict(trunk, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)  # a fixed metric: dropout in the linear heads stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            feats_x = self.net(self.scaling_layer(x))
        feats_y = self.net(self.scaling_layer(y))
        total = 0.0
        for k in range(self.num_layers):
            diff = (_spatial_unit_normalize(feats_x[k]) - _spatial_unit_normalize(feats_y[k])).pow(2)
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(2, 3), keepdim=True)
        return total
