"""Reconstruction metrics of a first-stage autoencoder: PSNR, SSIM, LPIPS and rFID.

LDM measures its autoencoders this way (LDM Tab. 8 / Sec. D.1: PSNR, SSIM, PSIM/LPIPS and
reconstruction FID of ``x`` vs ``D(E(x))``). Images follow the project convention, float in
``[-1, 1]``, so the data range is 2 and for a per-image mean squared error ``MSE``

    PSNR = 10 · log10(2² / MSE) = 10 · log10(4 / MSE)   [dB]

Reconstructions are clamped to ``[-1, 1]`` (what a saved image would hold) and the
deterministic latent (posterior mean / pre-quantisation latent) is decoded. PSNR and SSIM are
torchmetrics' functional versions, computed per image and averaged over images; LPIPS is the
project's LPIPS-VGG (the ``lpips`` package's calibrated heads); rFID is FID between the features of
originals and reconstructions.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ldm.eval.features import ImageFeatureExtractor
from ldm.util import seeded_cpu_rng

RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips", "rfid")
DATA_RANGE = 2.0  # images live in [-1, 1]


def psnr_per_image(reconstruction: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """``10·log10(data_range² / MSE_i)`` for each image ``i`` of a ``[B,C,H,W]`` batch."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_same_shape(reconstruction, target)
    return peak_signal_noise_ratio(reconstruction.float(), target.float(), data_range=data_range,
                                   reduction="none", dim=(1, 2, 3))


def ssim_per_image(reconstruction: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """SSIM (Gaussian window 11, σ = 1.5) for each image of a ``[B,C,H,W]`` batch."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_same_shape(reconstruction, target)
    if min(target.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11×11 pixels, got {tuple(target.shape[-2:])}")
    return structural_similarity_index_measure(reconstruction.float(), target.float(), data_range=data_range,
                                               reduction="none")


def _check_same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two [B,C,H,W] batches of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def build_lpips(backbone: str = "vgg", weights_path: str | None = None, seed: int = 0) -> nn.Module:
    """The project's LPIPS-VGG (:class:`ldm.modules.losses.lpips.LPIPSLoss`, the same network as the
    autoencoder's perceptual loss). ``backbone="vgg"`` needs torchvision's VGG-16 ImageNet weights
    (torch hub cache or ``weights_path``; LPIPSLoss raises a clear error when they are missing);
    ``backbone="random"`` is a random trunk for offline smoke tests, built under a fixed seed so
    runs agree, with no perceptual meaning."""
    from ldm.modules.losses.lpips import LPIPSLoss, LPIPSWeightsError

    try:
        with seeded_cpu_rng(seed):
            model = LPIPSLoss(backbone=backbone, weights_path=weights_path)
    except LPIPSWeightsError as err:
        raise LPIPSWeightsError(f"{err}\nWith python -m ldm.cli.evaluate: --lpips-weights /path/to/vgg16-397923af.pth, "
                                f"or --lpips-backbone random for an offline smoke test.") from err
    return model.eval()


@torch.no_grad()
def reconstruct(model: nn.Module, images: Tensor) -> Tensor:
    """``D(E(x))`` with the deterministic latent, for any first stage of the project or the original API.

    Order of preference: ``latent_moments``/``decode_latent`` (architecture contract), then
    ``encode``/``decode`` (posterior ``.mode()``, or the VQ tuple's quantised latent), then ``model(x)``.
    """
    if hasattr(model, "latent_moments") and hasattr(model, "decode_latent"):
        mean, _ = model.latent_moments(images)
        return model.decode_latent(mean)
    if hasattr(model, "encode") and hasattr(model, "decode"):
        encoded = model.encode(images)
        if hasattr(encoded, "mode"):
            latent = encoded.mode()
        elif isinstance(encoded, (tuple, list)):
            latent = encoded[0]
        else:
            latent = encoded
        return model.decode(latent)
    out = model(images)
    return out[0] if isinstance(out, (tuple, list)) else out


class ReconstructionEvaluator:
    """Accumulates per-image PSNR/SSIM/LPIPS and the features for rFID over batches."""

    def __init__(self, metrics: Iterable[str] = RECONSTRUCTION_METRICS, *,
                 feature_extractor: ImageFeatureExtractor | None = None, lpips_model: nn.Module | None = None,
                 device: str | torch.device = "cpu"):
        self.metrics = list(metrics)
        unknown = [m for m in self.metrics if m not in RECONSTRUCTION_METRICS]
        if unknown:
            raise ValueError(f"unknown reconstruction metrics {unknown}; "
                             f"choose from {', '.join(RECONSTRUCTION_METRICS)}")
        if "rfid" in self.metrics and feature_extractor is None:
            raise ValueError("rFID needs a feature extractor")
        if "lpips" in self.metrics and lpips_model is None:
            raise ValueError("LPIPS needs an lpips model (see build_lpips)")
        self.device = torch.device(device)
        self.extractor = None if feature_extractor is None else feature_extractor.to(self.device)
        self.lpips_model = None if lpips_model is None else lpips_model.to(self.device)
        self.per_image: dict[str, list[Tensor]] = {m: [] for m in ("psnr", "ssim", "lpips") if m in self.metrics}
        self.real_features: list[Tensor] = []
        self.fake_features: list[Tensor] = []
        self.count = 0

    @torch.no_grad()
    def update(self, reconstruction: Tensor, target: Tensor) -> None:
        reconstruction = reconstruction.to(self.device).float().clamp(-1, 1)
        target = target.to(self.device).float()
        _check_same_shape(reconstruction, target)
        if "psnr" in self.per_image:
            self.per_image["psnr"].append(psnr_per_image(reconstruction, target).cpu())
        if "ssim" in self.per_image:
            self.per_image["ssim"].append(ssim_per_image(reconstruction, target).cpu())
        if "lpips" in self.per_image:
            self.per_image["lpips"].append(self.lpips_model(reconstruction, target).flatten().cpu())
        if self.extractor is not None and "rfid" in self.metrics:
            self.real_features.append(self.extractor(target).features.float().cpu())
            self.fake_features.append(self.extractor(reconstruction).features.float().cpu())
        self.count += target.shape[0]

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no images were evaluated (the data source is empty)")
        results: dict[str, float] = {}
        for name, values in self.per_image.items():
            # mean over images; an exact reconstruction has PSNR = inf and makes the mean inf
            results[name] = float(torch.cat(values).double().mean())
        if "rfid" in self.metrics:
            from ldm.eval.generative import frechet_distance

            results["rfid"] = frechet_distance(torch.cat(self.real_features), torch.cat(self.fake_features))
        return results


@torch.no_grad()
def evaluate_autoencoder(model: nn.Module, batches: Iterable[Tensor], metrics: Iterable[str] = RECONSTRUCTION_METRICS,
                         *, feature_extractor: ImageFeatureExtractor | None = None,
                         lpips_model: nn.Module | None = None, device: str | torch.device = "cpu",
                         max_samples: int | None = None) -> dict[str, float]:
    """Reconstruct every batch of ``[-1,1]`` images and return the requested metrics (plus ``num_images``)."""
    model = model.to(device).eval()
    evaluator = ReconstructionEvaluator(metrics, feature_extractor=feature_extractor, lpips_model=lpips_model,
                                        device=device)
    for images in batches:
        if max_samples is not None and evaluator.count >= max_samples:
            break
        if max_samples is not None:
            images = images[: max_samples - evaluator.count]
        images = images.to(device).float()
        evaluator.update(reconstruct(model, images), images)
    results = evaluator.compute()
    results["num_images"] = evaluator.count
    return results
