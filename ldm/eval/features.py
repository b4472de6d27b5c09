"""Image feature extractors for the generative metrics (FID, KID, IS, precision/recall).

Every extractor takes float images ``B×3×H×W`` in ``[-1, 1]`` (the project's convention) and
returns :class:`FeatureBatch` — pooled features ``[B, d]`` and, where the network has a
classifier head, class logits ``[B, k]`` (the Inception Score needs them).

Build one from a spec string with :func:`build_feature_extractor`:

``inception``
    The FID InceptionV3 (TensorFlow 2015-12-05 graph ported to PyTorch), through ``torch-fidelity``
    — the network torchmetrics uses by default. Features are the 2048-d pool features; logits are
    the 1008-way unbiased logits (torchmetrics' IS default). Numbers are comparable with published
    ones. Needs the weights file :data:`INCEPTION_WEIGHTS_FILE` (looked up in the torch hub cache);
    without it a clear :class:`InceptionWeightsMissing` error says how to provide it.
``inception:/path/to/weights.pth``
    The same network with weights read from a local file.
``random-cnn`` / ``random-cnn:SEED``
    A small convolutional net with fixed-seed random weights. Works offline, is deterministic, and is
    good for *relative* comparisons and smoke tests only: its numbers are not comparable with
    published FID/KID/IS values, and its "class logits" come from a random linear head.
``torchscript:/path/to/module.pt``
    A user TorchScript module called on ``uint8`` images ``[B,3,H,W]`` in ``[0, 255]`` returning
    features ``[B, d]``, a pair ``(features, logits)``, or a dict with ``features`` / ``logits``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torch-fidelity downloads the FID Inception weights under this name; pytorch-fid publishes the same
# ported network as the second name. Either one in the torch hub cache is picked up.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ALIASES = (INCEPTION_WEIGHTS_FILE, "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)


class InceptionWeightsMissing(FileNotFoundError):
    """The FID InceptionV3 weights are not on this machine (and downloading was not allowed)."""


class FeatureBatch(NamedTuple):
    features: Tensor  # [N, d]
    logits: Tensor | None  # [N, k] or None when the extractor has no classifier head


def images_to_uint8(images: Tensor) -> Tensor:
    """``[-1, 1]`` floats -> ``uint8`` in ``[0, 255]`` (the quantisation a saved PNG goes through)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class ImageFeatureExtractor(nn.Module):
    """Base class: ``forward(images in [-1,1]) -> FeatureBatch``. Always in eval mode, no grads."""

    name: str = "base"
    comparable_to_published: bool = False
    note: str = ""

    def train(self, mode: bool = True) -> ImageFeatureExtractor:  # noqa: ARG002 - never trains
        return super().train(False)

    def describe(self) -> dict:
        return {"name": self.name, "comparable_to_published": self.comparable_to_published, "note": self.note}


class RandomCNNFeatures(ImageFeatureExtractor):
    """Fixed-seed random conv net: offline features for relative comparisons and smoke tests.

    Images are resized to ``resolution``², passed through stride-2 3×3 convs with ReLU (He-normal
    weights drawn from a private generator seeded with ``seed``, so the global RNG is untouched and
    every run builds the same net), and average-pooled to ``widths[-1]`` features. Random features
    still separate colour, layout and texture statistics, so a metric computed on them rises as two
    image sets drift apart — but the values mean nothing in absolute terms.

    The "class logits" for the Inception Score come from a random linear head applied to the
    features standardised by their mean/std over a fixed synthetic calibration set (seeded noise
    of random amplitude on random colours); without that centring the component shared by all
    images dominates and every image falls in the same "class". They only indicate diversity.
    """

    logit_temperature = 4.0
    calibration_size = 128

    comparable_to_published = False
    note = (
        "random-cnn: fixed-seed random conv features, only for relative comparisons and smoke tests; "
        "not comparable with published FID/KID/IS numbers (IS uses a random logits head)"
    )

    def __init__(self, seed: int = 0, resolution: int = 64, widths: Iterable[int] = (32, 64, 128, 256),
                 num_classes: int = 16):
        super().__init__()
        self.name = f"random-cnn:{seed}"
        self.seed = seed
        self.resolution = resolution
        with torch.random.fork_rng(devices=[]):  # nn.Conv2d's default init draws from the global RNG
            self._build(torch.Generator().manual_seed(seed), widths, num_classes)
        self.requires_grad_(False)
        self.eval()

    def _build(self, generator: torch.Generator, widths: Iterable[int], num_classes: int) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in widths:
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1)
            fan_in = in_ch * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, num_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) / math.sqrt(in_ch))
            self.head.bias.zero_()
        self.num_features = in_ch
        calibration = self._calibration_images(generator)
        with torch.no_grad():
            reference = self._pooled(calibration)
        self.register_buffer("feature_mean", reference.mean(dim=0))
        self.register_buffer("feature_std", reference.std(dim=0) + 1e-6)

    def _calibration_images(self, generator: torch.Generator) -> Tensor:
        n, r = self.calibration_size, self.resolution
        amplitude = torch.rand(n, 1, 1, 1, generator=generator)
        colour = torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1
        noise = torch.rand(n, 3, r, r, generator=generator) * 2 - 1
        return (colour * (1 - amplitude) + amplitude * noise).clamp(-1, 1)

    def _pooled(self, images: Tensor) -> Tensor:
        x = images.float().clamp(-1, 1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.body(x).mean(dim=(2, 3))

    @torch.no_grad()
    def forward(self, images: Tensor) -> FeatureBatch:
        pooled = self._pooled(images)
        standardised = (pooled - self.feature_mean) / self.feature_std
        return FeatureBatch(pooled, self.head(standardised) * self.logit_temperature)


class InceptionFeatures(ImageFeatureExtractor):
    """The FID InceptionV3 from ``torch-fidelity``: 2048-d pool features and 1008 unbiased logits.

    Images are quantised to ``uint8`` first (as if saved to PNG), then torch-fidelity resizes them
    to 299² with TensorFlow-compatible bilinear interpolation, exactly as in the reference FID code.
    """

    comparable_to_published = True
    name = "inception"
    note = "FID InceptionV3 (torch-fidelity, TF 2015-12-05 weights): comparable with published numbers"

    def __init__(self, weights_path: str | os.PathLike | None = None, allow_download: bool = False):
        super().__init__()
        network_cls = _import_torch_fidelity_inception()
        path = resolve_inception_weights(weights_path, allow_download=allow_download)
        if path is not None:
            _check_inception_state_dict(path)
        self.network = network_cls(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=None if path is None else str(path),
        )
        self.weights_path = None if path is None else str(path)
        self.num_features = 2048
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> FeatureBatch:
        pooled, logits = self.network(images_to_uint8(images))
        return FeatureBatch(pooled, logits)


class TorchScriptFeatures(ImageFeatureExtractor):
    """A user TorchScript module; input ``uint8`` ``[B,3,H,W]``, output features (and optional logits)."""

    comparable_to_published = False

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--feature-extractor torchscript: file not found: {path}")
        self.module = torch.jit.load(str(path), map_location="cpu")
        self.module.eval()
        self.name = f"torchscript:{path}"
        self.note = f"user TorchScript module {path.name}; comparability depends on that network"

    @torch.no_grad()
    def forward(self, images: Tensor) -> FeatureBatch:
        out = self.module(images_to_uint8(images))
        if isinstance(out, dict):
            if "features" not in out:
                raise ValueError(f"{self.name}: dict output needs a 'features' key, got {sorted(out)}")
            features, logits = out["features"], out.get("logits")
        elif isinstance(out, (tuple, list)):
            if not 1 <= len(out) <= 2:
                raise ValueError(f"{self.name}: expected (features,) or (features, logits), got {len(out)} outputs")
            features, logits = out[0], (out[1] if len(out) == 2 else None)
        else:
            features, logits = out, None
        if features.dim() != 2 or features.shape[0] != images.shape[0]:
            features = features.reshape(images.shape[0], -1)
        return FeatureBatch(features.float(), None if logits is None else logits.float())


def _import_torch_fidelity_inception():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError(
            "the 'inception' feature extractor needs the torch-fidelity package (the InceptionV3 that "
            "torchmetrics' FID/KID/IS use): pip install torch-fidelity. Offline alternative: "
            "--feature-extractor random-cnn (relative comparisons only)."
        ) from err
    return FeatureExtractorInceptionV3


def inception_weights_search_paths() -> list[Path]:
    """Where the Inception weights are looked for when no path is given: the torch hub cache."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / name for name in INCEPTION_WEIGHTS_ALIASES]


def inception_weights_help() -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"The FID InceptionV3 weights file '{INCEPTION_WEIGHTS_FILE}' (also published by pytorch-fid as "
        f"'{INCEPTION_WEIGHTS_ALIASES[1]}') is needed and could not be found. Provide it in one of these ways:\n"
        f"  1. pass a local copy: --feature-extractor inception:/path/to/{INCEPTION_WEIGHTS_FILE}\n"
        f"  2. put it in the torch hub cache: {cache}/{INCEPTION_WEIGHTS_FILE} "
        f"(TORCH_HOME moves this directory)\n"
        f"  3. on a machine with internet access, pass --download-weights (fetches {INCEPTION_WEIGHTS_URL})\n"
        f"Offline alternative for relative comparisons and smoke tests only: --feature-extractor random-cnn"
    )


def resolve_inception_weights(weights_path: str | os.PathLike | None, allow_download: bool = False) -> Path | None:
    """The weights file to load; ``None`` means "let torch-fidelity download it" (only if allowed)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InceptionWeightsMissing(f"Inception weights not found at {path}.\n" + inception_weights_help())
        return path
    for candidate in inception_weights_search_paths():
        if candidate.is_file():
            return candidate
    if allow_download:
        return None
    raise InceptionWeightsMissing(inception_weights_help())


def _check_inception_state_dict(path: Path) -> None:
    """Read the file with the safe loader first: it must be a plain state dict of the FID Inception.

    torch-fidelity then loads it again itself; a file the restricted unpickler accepts holds only
    tensors and containers, so that second load cannot run code.
    """
    from ldm.checkpoint import load_state_dict

    state = load_state_dict(path)
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise ValueError(
            f"{path} is not the FID InceptionV3 state dict (expected 'Conv2d_1a_3x3.conv.weight' and "
            f"'fc.weight' of shape (1008, 2048)); see --feature-extractor help. " + inception_weights_help()
        )


def build_feature_extractor(spec: str = "inception", *, allow_download: bool = False) -> ImageFeatureExtractor:
    """Build an extractor from ``inception[:PATH] | random-cnn[:SEED] | torchscript:PATH``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"feature extractor spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "inception":
        return InceptionFeatures(arg or None, allow_download=allow_download)
    if kind == "random-cnn":
        try:
            seed = int(arg) if arg else 0
        except ValueError as err:
            raise ValueError(f"random-cnn seed must be an integer, got {arg!r} in {spec!r}") from err
        return RandomCNNFeatures(seed=seed)
    if kind == "torchscript":
        if not arg:
            raise ValueError("torchscript feature extractor needs a path: --feature-extractor torchscript:/path.pt")
        return TorchScriptFeatures(arg)
    raise ValueError(
        f"unknown feature extractor {spec!r}; choose inception, inception:/path/weights.pth, "
        f"random-cnn[:seed] or torchscript:/path/module.pt"
    )


@torch.no_grad()
def extract_features(extractor: ImageFeatureExtractor, batches: Iterable[Tensor], *,
                     device: str | torch.device = "cpu", max_samples: int | None = None) -> FeatureBatch:
    """Run ``extractor`` over image batches (``[-1,1]``), stopping after ``max_samples`` images."""
    extractor = extractor.to(device)
    feats: list[Tensor] = []
    logits: list[Tensor] = []
    seen = 0
    for images in batches:
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            images = images[: max_samples - seen]
        out = extractor(images.to(device))
        feats.append(out.features.detach().float().cpu())
        if out.logits is not None:
            logits.append(out.logits.detach().float().cpu())
        seen += images.shape[0]
    if not feats:
        raise ValueError("no images to extract features from (the image source is empty)")
    return FeatureBatch(torch.cat(feats), torch.cat(logits) if len(logits) == len(feats) else None)
