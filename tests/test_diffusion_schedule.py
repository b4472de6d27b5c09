"""Beta schedules and derived constants against closed-form values."""
import math

import pytest
import torch

from ldm.diffusion import DiffusionSchedule, extract, make_beta_schedule, rescale_zero_terminal_snr


def test_linear_is_linear_in_sqrt_beta():
    betas = make_beta_schedule("linear", 1000, 0.0015, 0.0195)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    i = 417
    expected = (math.sqrt(0.0015) + i / 999 * (math.sqrt(0.0195) - math.sqrt(0.0015))) ** 2
    assert betas[i].item() == pytest.approx(expected, rel=1e-12)
    # linear in sqrt(beta): constant differences
    diffs = betas.sqrt().diff()
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-9)


def test_sqrt_linear_and_sqrt():
    b = make_beta_schedule("sqrt_linear", 11, 1e-4, 2e-2)
    assert b[5].item() == pytest.approx(1e-4 + 0.5 * (2e-2 - 1e-4), rel=1e-12)
    b = make_beta_schedule("sqrt", 11, 1e-4, 2e-2)
    assert b[5].item() == pytest.approx(math.sqrt(1e-4 + 0.5 * (2e-2 - 1e-4)), rel=1e-12)


def test_cosine_matches_nichol_dhariwal():
    T, s = 1000, 8e-3
    betas = make_beta_schedule("cosine", T, cosine_s=s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ac = DiffusionSchedule.from_betas(betas).alphas_cumprod
    for t in (0, 100, 500, 900):
        assert ac[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max().item() <= 0.999 and betas[-1].item() == pytest.approx(0.999)


def test_unknown_schedule_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="betas"):
        DiffusionSchedule.from_betas(torch.tensor([0.1, 0.0, 0.2]))


def test_derived_constants_closed_form():
    s = DiffusionSchedule.from_config("linear", 50, 1e-3, 5e-2)
    b = s.betas
    ac = torch.cumprod(1 - b, 0)
    t = 17
    assert s.alphas_cumprod[t].item() == pytest.approx(math.prod(1 - v for v in b[: t + 1].tolist()), rel=1e-12)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert s.alphas_cumprod_prev[t].item() == pytest.approx(ac[t - 1].item())
    assert s.sqrt_recipm1_alphas_cumprod[t].item() == pytest.approx(math.sqrt(1 / ac[t].item() - 1))
    pv = b[t] * (1 - ac[t - 1]) / (1 - ac[t])
    assert s.posterior_variance[t].item() == pytest.approx(pv.item(), rel=1e-12)
    assert s.posterior_variance[0].item() == 0.0
    # log variance is clipped at t=0 with the t=1 value
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()))
    assert s.posterior_log_variance_clipped[t].item() == pytest.approx(math.log(pv.item()))
    assert s.posterior_mean_coef1[t].item() == pytest.approx((b[t] * ac[t - 1].sqrt() / (1 - ac[t])).item())
    assert s.posterior_mean_coef2[t].item() == pytest.approx(((1 - ac[t - 1]) * (1 - b[t]).sqrt() / (1 - ac[t])).item())
    assert s.num_timesteps == 50


def test_from_alphas_cumprod_round_trip():
    s = DiffusionSchedule.from_config("cosine", 100)
    r = DiffusionSchedule.from_alphas_cumprod(s.alphas_cumprod.float())
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod, rtol=1e-6)
    with pytest.raises(ValueError):
        DiffusionSchedule.from_alphas_cumprod(torch.tensor([0.5, 0.9]))


def test_zero_terminal_snr():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    z = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(betas))
    s = DiffusionSchedule.from_betas(betas)
    assert z.alphas_cumprod[-1].item() == 0.0 and z.betas[-1].item() == pytest.approx(1.0)
    assert z.alphas_cumprod[0].item() == pytest.approx(s.alphas_cumprod[0].item(), rel=1e-12)
    # sqrt(alpha-bar) is an affine function of the original one
    a, b = z.sqrt_alphas_cumprod, s.sqrt_alphas_cumprod
    ratio = (a[1:] - a[:-1]) / (b[1:] - b[:-1])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)
    z2 = DiffusionSchedule.from_config("linear", 1000, 0.00085, 0.012, zero_terminal_snr=True)
    assert torch.equal(z2.betas, z.betas)


def test_extract_shape_dtype_device():
    s = DiffusionSchedule.from_config("linear", 10)
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float16)
    t = torch.tensor([0, 5, 9])
    out = extract(s.betas, t, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float16
    assert extract(s.betas, t, x.shape).dtype == torch.float32
    assert extract(s.betas, t, (3, 5), dtype=torch.float64)[1, 0].item() == s.betas[5].item()
    with pytest.raises(TypeError):
        extract(s.betas, torch.tensor([0.5]), x)
