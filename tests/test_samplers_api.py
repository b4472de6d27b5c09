"""Sampler plumbing: spacing, construction, img2img, inpainting, shapes, dtypes, variance types."""
import math

import pytest
import torch

from ldm.diffusion import DiffusionSchedule, rescale_zero_terminal_snr
from ldm.samplers import SAMPLERS, get_sampler, make_timesteps

SCHED = DiffusionSchedule.from_config("linear", 1000, 0.0015, 0.0195)


class CountingDenoiser:
    """eps = 0.1 * x + 0.05 (a smooth stand-in model) that records every call."""

    def __init__(self, channels_out_factor=1):
        self.calls = []
        self.factor = channels_out_factor

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], t.clone()))
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        out = 0.1 * x + 0.05
        return torch.cat([out] * self.factor, dim=1) if self.factor > 1 else out


def test_uniform_spacing_is_the_original_convention():
    assert make_timesteps(1000, 50) == list(range(1, 1000, 20))
    assert make_timesteps(1000, 50)[:3] == [1, 21, 41] and make_timesteps(1000, 50)[-1] == 981
    assert make_timesteps(1000, 1000) == list(range(1000))
    assert make_timesteps(1000, 30) == [t + 1 for t in range(0, 1000, 33)]   # the original's 31 steps
    assert make_timesteps(1000, 333)[-1] == 999                               # 999 + 1 clipped below T


def test_other_spacings():
    quad = make_timesteps(1000, 10, "quad")
    assert quad == sorted({int(v) + 1 for v in (torch.linspace(0, math.sqrt(800), 10, dtype=torch.float64) ** 2)})
    assert make_timesteps(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert make_timesteps(1000, 10, "trailing") == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    ls = make_timesteps(1000, 10, "logsnr", SCHED.alphas_cumprod)
    assert ls[0] == 0 and ls[-1] == 999 and len(ls) == 10
    lam = (SCHED.alphas_cumprod / (1 - SCHED.alphas_cumprod)).log()[ls]
    gaps = lam[:-1] - lam[1:]
    assert gaps.max() / gaps.min() < 1.5
    with pytest.raises(ValueError, match="exceeds"):
        make_timesteps(10, 11)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        make_timesteps(10, 5, "cubic")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        make_timesteps(10, 5, "logsnr")


def test_get_sampler_names_and_errors():
    for name in list(SAMPLERS) + ["dpmpp_2m", "DDIM"]:
        assert get_sampler(name, SCHED, steps=10).num_steps >= 1
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler_x", SCHED)  # ("euler" is a sigma-space sampler now)
    with pytest.raises(ValueError, match="parameterization"):
        get_sampler("ddim", SCHED, "score")
    with pytest.raises(ValueError, match="eta"):
        get_sampler("ddpm", SCHED, eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        get_sampler("plms", SCHED, eta=0.5)
    with pytest.raises(ValueError, match="variance_type"):
        get_sampler("ddpm", SCHED, variance_type="big")
    # a bare alphas_cumprod tensor works like the schedule
    a = get_sampler("ddim", SCHED.alphas_cumprod.float(), steps=10).sample(CountingDenoiser(), (2, 3), seed=0)
    b = get_sampler("ddim", SCHED, steps=10).sample(CountingDenoiser(), (2, 3), seed=0)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name,forwards", [("ddim", 20), ("dpm_solver++", 20), ("plms", 21), ("ddpm", 20)])
def test_forward_counts_and_descending_timesteps(name, forwards):
    model = CountingDenoiser()
    sampler = get_sampler(name, SCHED, steps=20, spacing="linspace")
    sampler.sample(model, (3, 2, 4, 4), seed=0)
    assert len(model.calls) == forwards
    ts = [int(t[0]) for _, t in model.calls]
    assert ts[0] == 999 and ts[-1] == 0


def test_img2img_runs_only_the_last_steps():
    model = CountingDenoiser()
    sampler = get_sampler("ddim", SCHED, steps=20)
    x_start = torch.full((2, 1, 4, 4), 0.5)
    out = sampler.sample(model, x_start=x_start, strength=0.5, seed=1)
    assert len(model.calls) == 10
    assert [int(t[0]) for _, t in model.calls] == list(reversed(sampler.timesteps[:10]))
    assert torch.equal(out, sampler.sample(CountingDenoiser(), x_start=x_start, strength=0.5, seed=1))
    with pytest.raises(ValueError, match="strength"):
        sampler.sample(model, x_start=x_start, strength=0.0)
    with pytest.raises(ValueError, match="runs no step"):
        sampler.sample(model, x_start=x_start, strength=0.01)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm_solver++", "plms"])
def test_inpainting_keeps_the_known_region(name):
    known = torch.linspace(-1, 1, 32).reshape(1, 2, 4, 4).repeat(2, 1, 1, 1)
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2] = 1.0   # 1 = keep the known image
    sampler = get_sampler(name, SCHED, steps=10, spacing="linspace")  # final level 1: clean
    out = sampler.sample(CountingDenoiser(), known=known, mask=mask, seed=0)
    assert torch.allclose(out[..., :2], known[..., :2])
    assert not torch.allclose(out[..., 2:], known[..., 2:], atol=0.1)
    with pytest.raises(ValueError, match="known"):
        sampler.sample(CountingDenoiser(), (2, 2, 4, 4), mask=mask)


def test_larger_latent_than_trained_with_a_conv_model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    denoise = lambda x, t, c: 0.1 * conv(x)
    sampler = get_sampler("ddim", SCHED, steps=5)
    for shape in [(1, 4, 8, 8), (2, 4, 24, 40)]:
        out = sampler.sample(denoise, shape, seed=0)
        assert out.shape == shape and torch.isfinite(out).all()


def test_intermediates_callback_progress_and_dtype():
    seen = []
    sampler = get_sampler("dpm_solver++", SCHED, steps=10)
    res = sampler.sample(CountingDenoiser(), (2, 3), seed=0, dtype=torch.float64, return_intermediates=True,
                         log_every=5, callback=lambda k, t, x, x0: seen.append((k, t)), progress=True)
    assert res["samples"].dtype == torch.float64
    assert len(res["intermediates"]["x_inter"]) == len(res["intermediates"]["pred_x0"]) == 1 + 2
    assert [k for k, _ in seen] == list(range(sampler.num_steps))
    assert [t for _, t in seen] == sampler.sample_timesteps
    half = sampler.sample(CountingDenoiser(), x_T=torch.randn(2, 3, dtype=torch.float16))
    assert half.dtype == torch.float16
    cond = torch.zeros(2, 5, dtype=torch.float64)
    assert sampler.sample(CountingDenoiser(), (2, 3), cond=cond).dtype == torch.float64   # follows cond
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(CountingDenoiser())
    with pytest.raises(ValueError, match="generator or seed"):
        sampler.sample(CountingDenoiser(), (1,), seed=1, generator=torch.Generator())


def test_generator_reproducibility_for_stochastic_samplers():
    for name, kw in [("ddpm", {"steps": 30}), ("ddim", {"steps": 30, "eta": 0.7})]:
        sampler = get_sampler(name, SCHED, **kw)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(sampler.sample(CountingDenoiser(), (3, 2), generator=g1),
                           sampler.sample(CountingDenoiser(), (3, 2), generator=g2))


def test_learned_range_endpoints_equal_fixed_variances():
    """A learned-range model that always outputs v = +1 (-1) samples like fixed_large (fixed_small)."""
    def learned(value):
        return lambda x, t, c: torch.cat([0.1 * x, torch.full_like(x, value)], dim=1)

    eps_model = lambda x, t, c: 0.1 * x
    for value, fixed in [(1.0, "fixed_large"), (-1.0, "fixed_small")]:
        got = get_sampler("ddpm", SCHED, steps=50, variance_type="learned_range").sample(learned(value), (4, 3), seed=0)
        ref = get_sampler("ddpm", SCHED, steps=50, variance_type=fixed).sample(eps_model, (4, 3), seed=0)
        assert torch.allclose(got, ref, atol=1e-5)
    # "learned": the extra channels are log-variances
    log_beta_model = lambda x, t, c: torch.cat([0.1 * x, torch.full_like(x, -50.0)], dim=1)
    learned = get_sampler("ddpm", SCHED, steps=50, variance_type="learned")
    quiet = learned.sample(log_beta_model, x_T=torch.ones(2, 3), seed=0)
    det = get_sampler("ddim", SCHED, steps=50, spacing="uniform").sample(eps_model, x_T=torch.ones(2, 3))
    assert torch.allclose(quiet, quiet[0].expand_as(quiet))  # no noise effectively added
    with pytest.raises(ValueError, match="2C channels"):
        get_sampler("ddpm", SCHED, steps=5, variance_type="learned").sample(lambda x, t, c: x[:, :1], (2, 3, 2))
    assert det.shape == quiet.shape


def test_clipping_and_dynamic_thresholding_bound_x0():
    wild = lambda x, t, c: 5 * torch.ones_like(x)   # an x0-model predicting far outside [-1, 1]
    for opts in [{"clip_denoised": True}, {"dynamic_threshold": 0.95}]:
        seen = []
        get_sampler("ddim", SCHED, "x0", steps=5, **opts).sample(
            wild, (2, 8), seed=0, callback=lambda k, t, x, x0: seen.append(x0.abs().max().item()))  # noqa: B023
        assert max(seen) <= 1.0 + 1e-6


def test_zero_terminal_snr_with_v_prediction():
    z = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(SCHED.betas))
    v_model = lambda x, t, c: torch.zeros_like(x)
    for name in ["ddim", "dpm_solver++", "ddpm"]:
        out = get_sampler(name, z, "v", steps=10, spacing="trailing").sample(v_model, (2, 3), seed=0)
        assert torch.isfinite(out).all()
