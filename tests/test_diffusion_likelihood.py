"""KL terms, the discretised decoder (DDPM Eq. 13), ELBO weights and bits/dim on known answers."""
import math

import pytest
import torch

from ldm.diffusion import (
    DiffusionSchedule,
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    elbo_mse_weights,
    normal_kl,
    p_mean_variance,
    prior_bpd,
    q_sample,
    training_target,
    vlb_terms,
)

SCHED = DiffusionSchedule.from_config("linear", 100, 1e-3, 5e-2)


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    lv1, lv2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, atol=1e-5)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(50), atol=1e-7)


def test_discretized_likelihood_against_erf():
    x = torch.tensor([-1.0, 2 / 255 * 10 - 1, 0.0039215686, 1.0, 1 - 2 / 255], dtype=torch.float64)
    means = torch.tensor([-0.95, -0.9, 0.02, 0.97, 0.99], dtype=torch.float64)
    log_scales = torch.tensor([-3.0, -2.0, -4.0, -3.5, -1.0], dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(x, means, log_scales)
    h = 1 / 255
    for i in range(5):
        xi, mi, si = x[i].item(), means[i].item(), math.exp(log_scales[i].item())
        upper = 1.0 if xi > 1 - h else phi((xi + h - mi) / si)
        lower = 0.0 if xi < -1 + h else phi((xi - h - mi) / si)
        assert got[i].item() == pytest.approx(math.log(upper - lower), rel=1e-9)


def test_discretized_likelihood_normalises_and_tail_is_finite():
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.3, -2.0), (-0.99, -5.0), (0.0, 1.0)]:
        ll = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # 40 standard deviations away: the log-probability is finite and ~ -z^2/2
    far = discretized_gaussian_log_likelihood(torch.tensor([0.0]), torch.tensor([0.4]), torch.tensor([math.log(0.01)]))
    assert torch.isfinite(far).all() and far.item() == pytest.approx(-0.5 * (0.4 / 0.01) ** 2, rel=0.05)
    with pytest.raises(ValueError):
        discretized_gaussian_log_likelihood(torch.zeros(2), torch.zeros(3), torch.zeros(3))


def test_prior_bpd_closed_form():
    x0 = torch.tensor([[0.5, -1.0, 0.0, 1.0]], dtype=torch.float64)
    a = SCHED.alphas_cumprod[-1].item()
    per_dim = [0.5 * (-1 - math.log(1 - a) + (1 - a) + a * v * v) for v in x0[0].tolist()]
    assert prior_bpd(SCHED, x0).item() == pytest.approx(sum(per_dim) / 4 / math.log(2), rel=1e-10)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_vlb_kl_equals_weighted_mse(param):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 5, 20, 50, 80, 99])
    xt = q_sample(SCHED, x0, t, noise)
    target = training_target(SCHED, x0, t, noise, param)
    prediction = target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    out = p_mean_variance(SCHED, prediction, xt, t, param, "fixed_small")
    kl_bits = vlb_terms(SCHED, x0, xt, t, out["mean"], out["log_variance"])
    w = elbo_mse_weights(SCHED, param)[t]
    mse = ((target - prediction) ** 2).reshape(6, -1).mean(1)
    assert torch.allclose(kl_bits * math.log(2), w * mse, rtol=1e-8)


def test_elbo_weights_first_entry_and_errors():
    w = elbo_mse_weights(SCHED, "eps")
    b, a = SCHED.betas, SCHED.alphas_cumprod
    expected = b[7] ** 2 / (2 * SCHED.posterior_variance[7] * (1 - b[7]) * (1 - a[7]))
    assert w[7].item() == pytest.approx(expected.item())
    assert w[0].item() == w[1].item()
    with pytest.raises(ValueError):
        elbo_mse_weights(SCHED, "eps", "learned_range")


def test_vlb_at_t0_is_decoder_nll():
    x0 = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    mean, logvar = torch.tensor([[[0.01, 0.9]]], dtype=torch.float64), torch.full((1, 1, 2), -6.0, dtype=torch.float64)
    got = vlb_terms(SCHED, x0, x0, torch.tensor([0]), mean, logvar)
    expected = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean() / math.log(2)
    assert got.item() == pytest.approx(expected.item())


def test_bits_per_dim_for_a_point_mass_data_set():
    """Data = one 8-bit image x*. The exact denoiser knows x0 = x*, so every KL term vanishes and
    the bound is the prior KL plus the t=0 decoder term with sigma^2 = beta-tilde_1."""
    k = torch.tensor([[[[0, 17, 128, 255]]]], dtype=torch.float64)
    x_star = (k / 127.5 - 1).expand(2, 1, 1, 4)

    def exact(x_t, t, cond):
        a = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x_star) / (1 - a).sqrt()

    res = bits_per_dim(exact, SCHED, x_star, generator=torch.Generator().manual_seed(0))
    assert res["vb"].shape == (2, 100)
    assert res["vb"][:, 1:].abs().max().item() < 1e-9
    sigma, h = math.sqrt(SCHED.posterior_variance[1].item()), 1 / 255
    interior = -math.log(phi(h / sigma) - phi(-h / sigma))
    edge = -math.log(phi(h / sigma))
    decoder = (edge + interior + interior + edge) / 4 / math.log(2)
    a = SCHED.alphas_cumprod[-1].item()
    kl = sum(0.5 * (-1 - math.log(1 - a) + (1 - a) + a * v * v) for v in x_star[0].flatten().tolist())
    prior = kl / 4 / math.log(2)
    assert res["total_bpd"][0].item() == pytest.approx(decoder + prior, rel=1e-8)
    assert res["x0_mse"].max().item() < 1e-20
