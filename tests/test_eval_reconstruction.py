"""Reconstruction metrics (PSNR / SSIM / LPIPS / rFID) of an autoencoder over batches."""
import math

import pytest
import torch
from torch import nn

from ldm.eval.features import RandomCNNFeatures
from ldm.eval.reconstruction import (
    build_lpips,
    evaluate_autoencoder,
    psnr_per_image,
    reconstruct,
    ssim_per_image,
)


def checkerboard_like(shape, seed):
    """A ±1 pattern (random signs): adding delta·pattern gives an error of exactly delta² per pixel."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


class OffsetAutoencoder(nn.Module):
    """Project first-stage interface; reconstruction = x + delta·(fixed ±1 pattern)."""

    def __init__(self, delta, shape):
        super().__init__()
        self.delta = delta
        self.register_buffer("pattern", checkerboard_like(shape, seed=123))

    def latent_moments(self, x):
        return x, torch.zeros_like(x)

    def decode_latent(self, z):
        return z + self.delta * self.pattern[: z.shape[0]]


class PosteriorStub:
    def __init__(self, mean):
        self.mean = mean

    def mode(self):
        return self.mean

    def sample(self):  # a random latent must not be used for evaluation
        raise AssertionError("reconstruct must decode the posterior mode")


class OriginalApiAutoencoder(nn.Module):
    """Original AutoencoderKL-style API: encode -> posterior with .mode(), decode."""

    def encode(self, x):
        return PosteriorStub(x * 0.5)

    def decode(self, z):
        return z * 2.0


def images(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) - 0.5  # in [-0.5, 0.5]: no clamping at ±1


@pytest.mark.parametrize("delta", [0.5, 0.1, 0.02])
def test_psnr_equals_10_log10_of_4_over_mse(delta):
    x = images(6, seed=0)
    model = OffsetAutoencoder(delta, x.shape)
    out = evaluate_autoencoder(model, x.split(4), ["psnr"])
    mse = delta**2
    assert out["psnr"] == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-5)
    assert out["num_images"] == 6
    per_image = psnr_per_image(model.decode_latent(x), x)
    assert per_image.shape == (6,) and torch.allclose(per_image, torch.full((6,), 10 * math.log10(4 / mse)), rtol=1e-5)


def test_psnr_averages_per_image_values():
    x = images(2, seed=1)
    errors = torch.stack([torch.full_like(x[0], 0.1), torch.full_like(x[1], 0.4)])
    per_image = psnr_per_image(x + errors, x)
    expected = torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.16)])
    assert torch.allclose(per_image, expected, rtol=1e-5)


def test_reconstructions_are_clamped_to_the_image_range():
    x = torch.full((2, 3, 16, 16), 0.9)
    model = OffsetAutoencoder(0.5, x.shape)  # +0.5 would leave [-1, 1] where the pattern is +1
    clamped_error = ((x + 0.5 * model.pattern).clamp(-1, 1) - x).pow(2).mean(dim=(1, 2, 3))
    out = evaluate_autoencoder(model, [x], ["psnr"])
    assert out["psnr"] == pytest.approx(float((10 * torch.log10(4 / clamped_error)).mean()), rel=1e-5)


def test_ssim_is_one_for_perfect_reconstruction_and_drops_with_noise():
    x = images(4, seed=2, size=32)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(4))
    noisy = x + 0.2 * checkerboard_like(x.shape, seed=3)
    assert (ssim_per_image(noisy, x) < 0.9).all()
    with pytest.raises(ValueError, match="11"):
        ssim_per_image(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="equal shape"):
        psnr_per_image(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_reconstruct_uses_the_posterior_mode_with_the_original_api():
    x = images(2, seed=4)
    assert torch.allclose(reconstruct(OriginalApiAutoencoder(), x), x)
    assert torch.allclose(reconstruct(nn.Identity(), x), x)


def test_all_metrics_with_offline_lpips_and_random_cnn_rfid():
    x = images(8, seed=5, size=32)
    extractor = RandomCNNFeatures()
    lpips_model = build_lpips("random")
    exact = evaluate_autoencoder(OffsetAutoencoder(0.0, x.shape), x.split(4), feature_extractor=extractor,
                                 lpips_model=lpips_model)
    noisy = evaluate_autoencoder(OffsetAutoencoder(0.3, x.shape), x.split(4), feature_extractor=extractor,
                                 lpips_model=lpips_model)
    assert set(noisy) == {"psnr", "ssim", "lpips", "rfid", "num_images"}
    assert exact["psnr"] == float("inf") and exact["ssim"] == pytest.approx(1.0)
    assert exact["lpips"] == pytest.approx(0.0, abs=1e-6) and exact["rfid"] == pytest.approx(0.0, abs=1e-6)
    assert noisy["lpips"] > 1e-3 and noisy["rfid"] > 1e-3 and noisy["ssim"] < 0.9


def test_evaluate_autoencoder_validates_requests():
    x = images(2, seed=8)
    model = OffsetAutoencoder(0.1, x.shape)
    with pytest.raises(ValueError, match="unknown reconstruction metrics"):
        evaluate_autoencoder(model, [x], ["psnr", "fid"])
    with pytest.raises(ValueError, match="feature extractor"):
        evaluate_autoencoder(model, [x], ["rfid"])
    with pytest.raises(ValueError, match="empty"):
        evaluate_autoencoder(model, [], ["psnr"])
