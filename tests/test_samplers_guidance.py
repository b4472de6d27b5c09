"""Classifier-free guidance (one batched forward) and gradient guidance (LDM Appx C Eq. 16-17)."""
import pytest
import torch

from ldm.diffusion import DiffusionSchedule
from ldm.samplers import classifier_free_guidance, get_sampler, gradient_guidance, stack_conditions

SCHED = DiffusionSchedule.from_config("linear", 1000, 0.0015, 0.0195)


class CondModel:
    """output = 0.1 x + mean of the condition per sample (conditions change the output)."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        c = cond if isinstance(cond, torch.Tensor) else cond["crossattn"]
        shift = c.reshape(c.shape[0], -1).mean(1).reshape(-1, *([1] * (x.ndim - 1)))
        return 0.1 * x + shift


def test_scale_one_is_the_conditional_prediction():
    model = CondModel()
    x, t = torch.randn(3, 2, 4, 4), torch.full((3,), 10)
    cond, null = torch.randn(3, 7, 5), torch.zeros(1, 7, 5)
    guided = classifier_free_guidance(model, null, 1.0)
    assert torch.equal(guided(x, t, cond), CondModel()(x, t, cond))
    assert model.batches == [3]


def test_guided_call_is_one_forward_at_double_batch():
    model = CondModel()
    x, t = torch.randn(3, 2, 4, 4), torch.full((3,), 10)
    cond, null = torch.randn(3, 7, 5) + 1.0, torch.zeros(1, 7, 5)
    out = classifier_free_guidance(model, null, 7.5)(x, t, cond)
    assert model.batches == [6]
    c, u = CondModel()(x, t, cond), CondModel()(x, t, null.expand(3, 7, 5))
    assert torch.allclose(out, u + 7.5 * (c - u), atol=1e-5)
    # inside a sampler: one forward per step, always at double batch
    model = CondModel()
    guided = classifier_free_guidance(model, null, 3.0)
    get_sampler("ddim", SCHED, steps=8).sample(guided, (3, 2, 4, 4), cond=cond, seed=0)
    assert model.batches == [6] * 8


def test_dict_and_list_conditions_are_stacked_cond_first():
    seen = {}

    def model(x, t, cond):
        seen.update(cond)
        vector, concat = cond["vector"].mean(1), cond["concat"].mean((1, 2, 3))
        return 0.1 * x + vector.reshape(-1, 1, 1, 1) + concat.reshape(-1, 1, 1, 1)

    cond = {"crossattn": [torch.ones(2, 4, 8)], "concat": torch.ones(2, 1, 3, 3), "vector": torch.full((2, 6), 2.0)}
    null = {"crossattn": [torch.zeros(1, 4, 8)], "concat": torch.ones(2, 1, 3, 3), "vector": torch.zeros(2, 6)}
    x = torch.zeros(2, 1, 3, 3)
    out = classifier_free_guidance(model, null, 4.0)(x, torch.zeros(2, dtype=torch.long), cond)
    assert isinstance(seen["crossattn"], list) and seen["crossattn"][0].shape == (4, 4, 8)
    assert torch.equal(seen["crossattn"][0][:2], torch.ones(2, 4, 8)) and seen["crossattn"][0][2:].abs().sum() == 0
    assert torch.equal(seen["vector"][:2], cond["vector"]) and torch.equal(seen["vector"][2:], null["vector"])
    # cond output 3, uncond output 1 -> 1 + 4 * 2
    assert torch.allclose(out, torch.full_like(out, 9.0))
    with pytest.raises(ValueError, match="keys"):
        stack_conditions(cond, {"crossattn": null["crossattn"]}, 2)
    with pytest.raises(ValueError, match="shape"):
        stack_conditions(torch.ones(2, 3), torch.ones(2, 4), 2)


def test_guidance_rescale_matches_conditional_std():
    model = CondModel()
    x, t = torch.randn(4, 2, 4, 4), torch.full((4,), 3)
    cond, null = torch.randn(4, 3, 5), torch.zeros(1, 3, 5)
    full = classifier_free_guidance(model, null, 5.0, rescale=1.0)(x, t, cond)
    c = CondModel()(x, t, cond)
    assert torch.allclose(full.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)), rtol=1e-5)
    plain = classifier_free_guidance(model, null, 5.0)(x, t, cond)
    half = classifier_free_guidance(model, null, 5.0, rescale=0.5)(x, t, cond)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-5)
    with pytest.raises(ValueError):
        classifier_free_guidance(model, null, 5.0, rescale=2.0)


def test_guidance_with_learned_variance_keeps_conditional_variance():
    def model(x, t, cond):
        return torch.cat([x + cond, cond * 10], dim=1)

    x = torch.zeros(2, 1, 2, 2)
    cond, null = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    out = classifier_free_guidance(model, null, 3.0, learned_variance=True)(x, torch.zeros(2, dtype=torch.long), cond)
    assert torch.allclose(out[:, :1], torch.full((2, 1, 2, 2), 3.0)) and torch.allclose(out[:, 1:], cond * 10)


@pytest.mark.parametrize("param", ["eps", "v", "x0"])
@pytest.mark.parametrize("through_model", [True, False])
def test_gradient_guidance_adds_scaled_likelihood_gradient(param, through_model):
    """eps_model(x) = c x is linear, so x0_hat = (1 - s c) x / a and for log p = -0.5 ||y - x0_hat||^2
    the gradient is (y - x0_hat)(1 - s c)/a through the model, (y - x0_hat)/a without."""
    c, scale = 0.3, 2.0
    t = torch.tensor([100, 700])
    a = SCHED.sqrt_alphas_cumprod[t].float().reshape(-1, 1)
    s = SCHED.sqrt_one_minus_alphas_cumprod[t].float().reshape(-1, 1)

    def eps_model(x, tt, cond):
        eps = c * x
        if param == "eps":
            return eps
        x0 = (x - s * eps) / a
        return x0 if param == "x0" else a * eps - s * x0

    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    y = torch.ones(2, 5)
    guided = gradient_guidance(eps_model, lambda img: -0.5 * ((y - img) ** 2).sum(1), SCHED, scale=scale,
                               parameterization=param, through_model=through_model)
    out = guided(x, t, None)
    x0_hat = (1 - s * c) * x / a
    grad = (y - x0_hat) * ((1 - s * c) if through_model else 1.0) / a
    eps_expected = c * x - s * scale * grad
    eps_got = {"eps": out, "v": s * x + a * out, "x0": (x - a * out) / s}[param]
    assert torch.allclose(eps_got, eps_expected, atol=1e-5)


def test_gradient_guidance_through_decoder_pulls_samples_to_the_measurement():
    """Super-resolution style (LDM Eq. 17): the prior is the exact denoiser of N(0, 0.25) latents,
    the decoder doubles and upsamples, T average-pools; guidance makes T(D(z0)) match y."""
    ac = SCHED.alphas_cumprod

    def prior(x, t, c):
        a = ac.to(x.dtype)[t].reshape(-1, 1, 1, 1)
        ex0 = a.sqrt() * 0.25 / (a * 0.25 + 1 - a) * x
        return (x - a.sqrt() * ex0) / (1 - a).sqrt()

    y = torch.full((1, 1, 4, 4), 0.8)
    decode = lambda z: torch.nn.functional.interpolate(2.0 * z, scale_factor=2)
    down = lambda img: torch.nn.functional.avg_pool2d(img, 2)
    log_lik = lambda img: -0.5 * ((y - down(img)) ** 2).sum((1, 2, 3))
    sampler = get_sampler("ddim", SCHED, steps=20)
    err = lambda z: (down(decode(z)) - y).abs().mean().item()
    plain = err(sampler.sample(prior, (4, 1, 4, 4), seed=0))
    for through_model in (True, False):
        guided = gradient_guidance(prior, log_lik, SCHED, decode=decode, scale=3.0, through_model=through_model)
        assert err(sampler.sample(guided, (4, 1, 4, 4), seed=0)) < 0.25 * plain
