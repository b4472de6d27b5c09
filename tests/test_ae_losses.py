"""LDM Eq. (25) pieces against hand computations: adaptive weight, GAN losses, KL/VQ totals, LPIPS."""
import math

import pytest
import torch

from ldm.modules.autoencoder import DiagonalGaussianDistribution
from ldm.modules.losses import (
    ActNorm,
    LPIPSLoss,
    LPIPSWeightsError,
    LPIPSWithDiscriminator,
    NLayerDiscriminator,
    VQLPIPSWithDiscriminator,
    adaptive_weight,
    hinge_d_loss,
    vanilla_d_loss,
)

TINY_DISC = dict(disc_num_layers=1, disc_ndf=8, perceptual_weight=0.0, perceptual_backbone="random")


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_adaptive_weight_formula_and_clamp():
    last = torch.nn.Parameter(torch.zeros(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    rec, g = (last * a).sum() + 1.0, (last * b).sum()
    w = adaptive_weight(rec, g, last, disc_weight=0.5)
    assert w.item() == pytest.approx(5.0 / (1.0 + 1e-4) * 0.5)
    assert not w.requires_grad
    tiny = (last * torch.tensor([0.0, 1e-9, 0.0])).sum()
    assert adaptive_weight(rec, tiny, last, 1.0).item() == pytest.approx(1e4)  # clamped at 1e4


def test_hinge_and_vanilla_discriminator_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # hinge: ½(mean relu(1 − real) + mean relu(1 + fake)) = ½((0 + 0.5)/2 + (0 + 1)/2)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    softplus = lambda v: math.log1p(math.exp(v))
    expected = 0.5 * ((softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-3.0) + softplus(0.0)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def posterior(mean: float, logvar: float, shape=(2, 2, 2, 2)) -> DiagonalGaussianDistribution:
    return DiagonalGaussianDistribution(torch.cat([torch.full(shape, mean), torch.full(shape, logvar)], dim=1))


def test_kl_loss_before_disc_start_matches_hand_computation_and_skips_discriminator():
    loss = LPIPSWithDiscriminator(disc_start=10, logvar_init=0.3, kl_weight=0.1, **TINY_DISC)
    calls = count_calls(loss.discriminator)
    x, xrec = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    q = posterior(1.0, 0.0)
    total, log = loss(x, xrec, q, 0, global_step=9, last_layer=None)
    nll = (0.5 / math.exp(0.3) + 0.3) * 48  # per-sample sum of rec/exp(s) + s over 3·4·4 elements
    kl = 0.5 * (1.0 + 1.0 - 1.0 - 0.0) * 8  # per sample: ½(μ² + σ² − 1 − log σ²) over 2·2·2 latent elements
    assert log["train/nll_loss"].item() == pytest.approx(nll, rel=1e-6)
    assert log["train/kl_loss"].item() == pytest.approx(kl)
    assert total.item() == pytest.approx(nll + 0.1 * kl, rel=1e-6)
    assert log["train/g_loss"].item() == 0.0 and log["train/disc_factor"].item() == 0.0
    d_loss, _ = loss(x, xrec, q, 1, global_step=9)
    assert d_loss.item() == 0.0
    assert calls == []  # neither the generator nor the discriminator term ran D before disc_start


def test_kl_loss_after_disc_start_adds_adaptive_generator_term():
    loss = LPIPSWithDiscriminator(disc_start=0, kl_weight=0.0, disc_weight=0.5, **TINY_DISC)
    last = torch.nn.Parameter(torch.randn(3, 3, 1, 1))
    x = torch.randn(2, 3, 8, 8)
    xrec = torch.nn.functional.conv2d(torch.randn(2, 3, 8, 8), last)
    total, log = loss(x, xrec, posterior(0.0, 0.0), 0, global_step=0, last_layer=last)
    g_loss = -loss.discriminator(xrec).mean()
    nll = (x - xrec).abs().sum() / 2
    expected_weight = adaptive_weight(nll, g_loss, last, 0.5)
    assert log["train/d_weight"].item() == pytest.approx(expected_weight.item(), rel=1e-5)
    assert total.item() == pytest.approx((nll + expected_weight * g_loss).item(), rel=1e-5)
    d_loss, dlog = loss(x, xrec, None, 1, global_step=0)
    real, fake = loss.discriminator(x), loss.discriminator(xrec)
    assert d_loss.item() == pytest.approx(hinge_d_loss(real, fake).item(), rel=1e-5)
    assert set(dlog) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}


def test_l2_pixel_loss_and_bad_options():
    loss = LPIPSWithDiscriminator(disc_start=5, pixel_loss="l2", **TINY_DISC)
    _, log = loss(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5), posterior(0, 0, (1, 1, 1, 1)), 0, 0)
    assert log["train/rec_loss"].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="disc_loss"):
        LPIPSWithDiscriminator(disc_start=0, disc_loss="wasserstein", **TINY_DISC)
    with pytest.raises(ValueError, match="pixel_loss"):
        LPIPSWithDiscriminator(disc_start=0, pixel_loss="l3", **TINY_DISC)
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), posterior(0, 0, (1, 1, 1, 1)), 2, 0)


def test_vq_loss_total():
    loss = VQLPIPSWithDiscriminator(disc_start=100, codebook_weight=2.0, **TINY_DISC)
    calls = count_calls(loss.discriminator)
    x, xrec = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), -0.25)
    total, log = loss(torch.tensor(0.3), x, xrec, 0, global_step=5, split="val")
    assert total.item() == pytest.approx(0.25 + 2.0 * 0.3)
    assert log["val/quant_loss"].item() == pytest.approx(0.3) and calls == []


def test_discriminator_shapes_and_actnorm_initialisation():
    disc = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=3)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2 patches
    act = ActNorm(4).train()
    x = torch.randn(64, 4, 5, 5) * 3.0 + 2.0
    y = act(x)
    assert y.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert y.transpose(0, 1).reshape(4, -1).std(1).sub(1).abs().max().item() < 1e-3
    assert act.initialized.item() == 1
    assert torch.allclose(act.reverse(y), x, atol=1e-4)
    disc_act = NLayerDiscriminator(3, 8, 2, use_actnorm=True)
    assert disc_act.main[2].bias is not None and isinstance(disc_act.main[3], ActNorm)


def test_lpips_random_backbone_is_a_frozen_distance():
    lpips = LPIPSLoss(backbone="random")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_()
    assert torch.allclose(lpips(x, x), torch.zeros(2, 1, 1, 1), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training  # stays a fixed metric (no dropout)


def test_lpips_offline_error_names_the_file_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LPIPSWeightsError) as err:
        LPIPSWithDiscriminator(disc_start=0, disc_num_layers=1)
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "perceptual_weights_path" in message and "perceptual_backbone: random" in message
    with pytest.raises(LPIPSWeightsError, match="does not exist"):
        LPIPSLoss(weights_path=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="backbone"):
        LPIPSLoss(backbone="alexnet")


def test_lpips_loads_vgg_weights_from_a_local_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    torch.nn.init.constant_(features[28].bias, 0.125)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    lpips = LPIPSLoss(backbone="vgg", weights_path=tmp_path / "vgg16.pth")
    assert torch.equal(getattr(lpips.net.slice5, "28").bias, torch.full((512,), 0.125))
    assert torch.equal(lpips.net.slice1[0].weight, features[0].weight)


def test_lpips_matches_the_lpips_package_forward():
    """Same weights in lpips.LPIPS and our LPIPSLoss give the same distance (independent forward)."""
    import lpips

    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    ours = LPIPSLoss(backbone="random")
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("lins.")}, strict=True)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x, y), reference(x, y), rtol=1e-4, atol=1e-6)
