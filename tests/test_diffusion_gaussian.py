"""q_sample moments, prediction conversions, the posterior, the reverse step."""
import math

import pytest
import torch

from ldm.diffusion import (
    DiffusionSchedule,
    learned_range_log_variance,
    output_from_x0_eps,
    p_mean_variance,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    threshold_x0,
    to_x0_eps,
    training_target,
    x0_eps_from_output,
)

SCHED = DiffusionSchedule.from_config("linear", 100, 1e-3, 5e-2)


def test_q_sample_moments():
    g = torch.Generator().manual_seed(0)
    n = 100_000
    t = torch.full((n,), 60, dtype=torch.long)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    xt = q_sample(SCHED, x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    a = SCHED.alphas_cumprod[60].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.02)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_conversions_invert(param):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (8,), generator=g)
    xt = q_sample(SCHED, x0, t, eps)
    target = training_target(SCHED, x0, t, eps, param)
    x0_hat, eps_hat = to_x0_eps(SCHED, target, xt, t, param)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)
    a = SCHED.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    s = SCHED.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(output_from_x0_eps(x0, eps, a, s, param), target, atol=1e-12)
    assert all(torch.allclose(u, w, atol=1e-9) for u, w in zip(x0_eps_from_output(target, xt, a, s, param), (x0, eps)))


def test_individual_conversions():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 90])
    xt = q_sample(SCHED, x0, t, eps)
    v = predict_v(SCHED, x0, t, eps)
    a = SCHED.alphas_cumprod[t].unsqueeze(1)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(predict_x0_from_eps(SCHED, xt, t, eps), x0)
    assert torch.allclose(predict_eps_from_x0(SCHED, xt, t, x0), eps)
    assert torch.allclose(predict_x0_from_v(SCHED, xt, t, v), x0)
    assert torch.allclose(predict_eps_from_v(SCHED, xt, t, v), eps)
    with pytest.raises(ValueError, match="parameterization"):
        to_x0_eps(SCHED, v, xt, t, "score")


def test_posterior_against_bayes_rule():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): multiply the two Gaussians by hand."""
    t, x0, xt = 40, 0.8, -0.3
    b = SCHED.betas[t].item()
    ac_prev = SCHED.alphas_cumprod[t - 1].item()
    # q(x_t | x_{t-1}) = N(sqrt(1-b) x_{t-1}, b): as a function of x_{t-1}, precision (1-b)/b
    prec1, mean1 = (1 - b) / b, xt / math.sqrt(1 - b)
    prec2, mean2 = 1 / (1 - ac_prev), math.sqrt(ac_prev) * x0
    var = 1 / (prec1 + prec2)
    mean = var * (prec1 * mean1 + prec2 * mean2)
    m, v, lv = q_posterior(SCHED, torch.tensor([[x0]], dtype=torch.float64),
                           torch.tensor([[xt]], dtype=torch.float64), torch.tensor([t]))
    assert m.item() == pytest.approx(mean, rel=1e-10)
    assert v.item() == pytest.approx(var, rel=1e-10)
    assert lv.item() == pytest.approx(math.log(var), rel=1e-10)


def test_reverse_mean_equals_ddpm_eq11():
    g = torch.Generator().manual_seed(3)
    xt = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 50, 99])
    out = p_mean_variance(SCHED, eps, xt, t, "eps", "fixed_small")
    b = SCHED.betas[t].reshape(-1, 1, 1, 1)
    ac = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    eq11 = (xt - b / (1 - ac).sqrt() * eps) / (1 - b).sqrt()
    assert torch.allclose(out["mean"], eq11, atol=1e-10)
    large = p_mean_variance(SCHED, eps, xt, t, "eps", "fixed_large")
    assert torch.allclose(large["variance"][:, 0, 0, 0], b.flatten())


def test_learned_range_interpolates_between_bounds():
    t = torch.tensor([0, 30, 99])
    lo = learned_range_log_variance(SCHED, -torch.ones(3, 1), t)
    hi = learned_range_log_variance(SCHED, torch.ones(3, 1), t)
    mid = learned_range_log_variance(SCHED, torch.zeros(3, 1), t)
    assert torch.allclose(lo.flatten(), SCHED.posterior_log_variance_clipped[t].float())
    assert torch.allclose(hi.flatten(), SCHED.betas[t].log().float())
    assert torch.allclose(mid, (lo + hi) / 2)
    # through p_mean_variance with a 2C-channel output
    out = p_mean_variance(SCHED, torch.cat([torch.zeros(3, 2), torch.ones(3, 2)], 1), torch.zeros(3, 2), t,
                          "eps", "learned_range")
    assert torch.allclose(out["log_variance"], hi.expand(3, 2))
    with pytest.raises(ValueError, match="2C channels"):
        p_mean_variance(SCHED, torch.zeros(3, 3), torch.zeros(3, 3), t, "eps", "learned")


def test_threshold_x0():
    x = torch.tensor([[0.5, -3.0, 2.0, 0.1]])
    assert threshold_x0(x, clip_denoised=True).abs().max().item() == 1.0
    assert torch.equal(threshold_x0(x), x)
    dyn = threshold_x0(x, dynamic_threshold=1.0)   # s = max |x| = 3 -> x / 3
    assert torch.allclose(dyn, x / 3)
    small = torch.tensor([[0.5, -0.2]])
    assert torch.equal(threshold_x0(small, dynamic_threshold=0.9), small)  # s clamped to >= 1
    with pytest.raises(ValueError):
        threshold_x0(x, dynamic_threshold=1.5)
