"""The sigma-space samplers against diffusers' schedulers and the closed form of Gaussian data.

Data x0 ~ N(MU, S^2): the optimal denoiser in sigma space (x = x0 + sigma eps) is
``D(x, sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU)``; in the model's VP space at level
``a = 1/(1 + sigma^2)`` the optimal eps-predictor is ``(x_t - sqrt(a) D) / sqrt(1 - a)``.
Both sides of each diffusers comparison evaluate this exact predictor at the scheduler's own sigma.
"""
import math

import diffusers
import pytest
import torch

from ldm.diffusion import DiffusionSchedule
from ldm.samplers import (
    DiscreteDenoiser,
    classifier_free_guidance,
    get_sampler,
    gradient_guidance,
    gradient_guided_denoiser,
    make_sigmas,
)
from ldm.samplers.k_samplers import (
    K_SAMPLERS,
    lms_coefficients,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)

MU, S = 0.3, 0.5
# Stable Diffusion's schedule ("scaled_linear" in diffusers = LDM "linear": linear in sqrt(beta))
BETA_START, BETA_END = 0.00085, 0.012


def exact_D(x, sigma, cond=None):
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return MU + S * S / (S * S + sigma**2) * (x - MU)


def exact_eps_vp(x_t, sigma):
    """Optimal eps-prediction for the VP input ``x_t`` at VE level ``sigma``."""
    alpha = 1 / math.sqrt(1 + sigma**2)
    x = x_t / alpha
    return (x - exact_D(x, torch.tensor([sigma]))) / sigma


def diffusers_scheduler(cls, **kw):
    common = {"num_train_timesteps": 1000, "beta_start": BETA_START, "beta_end": BETA_END,
              "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    if cls is not diffusers.EulerAncestralDiscreteScheduler:
        return cls(**common, use_karras_sigmas=True, **kw)
    # diffusers 0.42's Euler ancestral has no use_karras_sigmas: give it Euler's Karras sigmas and timesteps
    scheduler = cls(**common, **kw)
    original = scheduler.set_timesteps

    def set_timesteps(steps):
        original(steps)
        karras = diffusers.EulerDiscreteScheduler(**common, use_karras_sigmas=True)
        karras.set_timesteps(steps)
        scheduler.sigmas, scheduler.timesteps = karras.sigmas.clone(), karras.timesteps.clone()
    scheduler.set_timesteps = set_timesteps
    return scheduler


def run_diffusers(scheduler, x_start, steps, generator=None):
    """The diffusers loop with the exact model evaluated at the scheduler's current sigma."""
    scheduler.set_timesteps(steps)
    x = x_start.clone()
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        model_in = scheduler.scale_model_input(x, t)
        kw = {} if generator is None else {"generator": generator}
        x = scheduler.step(exact_eps_vp(model_in, sigma), t, x, **kw).prev_sample
    return x


def schedule_like(scheduler):
    return DiffusionSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.double())


@pytest.fixture(scope="module")
def noise():
    return torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_karras_and_exponential_sigmas_match_diffusers():
    for flag, name in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential")):
        kw = {"use_karras_sigmas": False, flag: True}
        sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=BETA_START, beta_end=BETA_END,
                                                 beta_schedule="scaled_linear", **kw)
        sched.set_timesteps(12)
        ours = make_sigmas(name, schedule_like(sched), 12)
        assert ours.shape == (13,) and ours[-1] == 0
        torch.testing.assert_close(ours.float(), sched.sigmas, rtol=1e-5, atol=1e-6)
    # Karras Eq. (5): rho = 7 spacing between sigma_min and sigma_max
    s = make_sigmas("karras", schedule_like(sched), 5)
    lo, hi = s[-2].item(), s[0].item()
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(s[:-1], (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7)


@pytest.mark.parametrize("ours,cls,kw,steps", [
    (sample_euler, "EulerDiscreteScheduler", {}, 15),
    (sample_heun, "HeunDiscreteScheduler", {}, 10),
    (sample_dpmpp_2m, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 12),
    (sample_lms, "LMSDiscreteScheduler", {}, 12),
])
def test_deterministic_solvers_match_diffusers(noise, ours, cls, kw, steps):
    scheduler = diffusers_scheduler(getattr(diffusers, cls), **kw)
    scheduler.set_timesteps(steps)
    sigmas = make_sigmas("karras", schedule_like(scheduler), steps)
    their_sigmas = torch.unique_consecutive(scheduler.sigmas.float())  # Heun lists the inner sigmas twice
    torch.testing.assert_close(sigmas.float(), their_sigmas, rtol=1e-5, atol=1e-6)
    x_ve = noise * math.sqrt(1 + sigmas[0].item() ** 2)
    # Euler / Heun / LMS keep the VE sample, DPM-Solver++ the VP one (x_VP = x_VE / sqrt(1 + sigma^2))
    start = noise if cls == "DPMSolverMultistepScheduler" else x_ve
    expected = run_diffusers(scheduler, start, steps)
    got = ours(exact_D, x_ve, sigmas)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert abs(got.std().item() - S) < 0.1  # and it is a sample, not noise


@pytest.mark.parametrize("ours,cls,kw", [
    (sample_euler_ancestral, "EulerAncestralDiscreteScheduler", {}),
    (sample_dpmpp_2m_sde, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
])
def test_stochastic_solvers_match_diffusers_on_the_same_noise(noise, ours, cls, kw):
    steps = 12
    scheduler = diffusers_scheduler(getattr(diffusers, cls), **kw)
    scheduler.set_timesteps(steps)
    sigmas = make_sigmas("karras", schedule_like(scheduler), steps)
    # diffusers' DPM-Solver draws its noise (and steps) in float32, Euler ancestral in the sample's dtype
    dtype = torch.float32 if cls == "DPMSolverMultistepScheduler" else torch.float64
    x_ve = noise.to(dtype) * math.sqrt(1 + sigmas[0].item() ** 2)
    start = noise.to(dtype) if cls == "DPMSolverMultistepScheduler" else x_ve
    # one randn of the sample's shape per step on both sides, from equally seeded generators
    expected = run_diffusers(scheduler, start, steps, generator=torch.Generator().manual_seed(5))
    got = ours(exact_D, x_ve, sigmas, generator=torch.Generator().manual_seed(5))
    tol = 1e-5 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    other = ours(exact_D, x_ve, sigmas, generator=torch.Generator().manual_seed(6))
    assert (other - got).abs().mean() > 1e-2  # the noise matters, so the agreement is not vacuous


# Stated tolerances on the moments of N(MU, S^2) from 20 000 samples, 40 karras steps (deterministic
# solvers) or 100 (ancestral ones, whose error is first order in the step): mean within 0.02 absolute
# (sampling error of the mean ~0.0035), std within 5%.
@pytest.mark.parametrize("name", sorted(K_SAMPLERS))
def test_every_sampler_reproduces_the_data_moments(name):
    steps = 100 if name in ("euler_a", "dpmpp_2s_a", "euler") else 40
    sampler = get_sampler(name, DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END), steps=steps,
                          sigmas="karras")
    x = sampler.sample(exact_D, (20_000, 1), seed=0, dtype=torch.float64, sigma_space=True)
    assert abs(x.mean().item() - MU) < 0.02, (name, x.mean().item())
    assert abs(x.std().item() - S) / S < 0.05, (name, x.std().item())


def discrete_eps_model(schedule, parameterization="eps"):
    """The exact discrete model: at (possibly fractional) t, the level is the log-linearly interpolated sigma."""
    denoiser = DiscreteDenoiser(None, schedule)

    def model(x_t, t, cond):
        sigma = denoiser.t_to_sigma(t.double())
        alpha = (1 / (1 + sigma**2)).sqrt().to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        sig_vp = (1 - alpha**2).sqrt()
        x0 = exact_D(x_t / alpha, sigma)
        eps = (x_t - alpha * x0) / sig_vp
        return {"eps": eps, "x0": x0, "v": alpha * eps - sig_vp * x0}[parameterization]
    return model


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_discrete_denoiser_wraps_eps_x0_v_models(parameterization):
    schedule = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END)
    D = DiscreteDenoiser(discrete_eps_model(schedule, parameterization), schedule, parameterization)
    x = torch.randn(8, 3, dtype=torch.float64) * 3
    for sigma in (0.05, 0.7, 3.3, 14.0):  # between grid steps: fractional t
        torch.testing.assert_close(D(x, sigma), exact_D(x, torch.tensor([sigma], dtype=torch.float64)),
                                   rtol=1e-9, atol=1e-9)


def test_sigma_to_t_interpolates_log_sigma_like_diffusers():
    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=BETA_START, beta_end=BETA_END,
                                             beta_schedule="scaled_linear")
    schedule = schedule_like(sched)
    D = DiscreteDenoiser(None, schedule)
    sigmas = torch.tensor([0.03, 0.1, 1.0, 5.5, 14.0], dtype=torch.float64)
    log_sigmas = schedule.sigmas.log().numpy()
    expected = torch.tensor([float(sched._sigma_to_t(s.numpy(), log_sigmas)) for s in sigmas], dtype=torch.float64)
    torch.testing.assert_close(D.sigma_to_t(sigmas), expected)
    torch.testing.assert_close(D.t_to_sigma(D.sigma_to_t(sigmas)), sigmas)
    grid = schedule.sigmas[torch.tensor([0, 7, 500, 999])]
    assert D.timesteps(grid).dtype == torch.long and D.timesteps(grid).tolist() == [0, 7, 500, 999]
    assert D.timesteps(sigmas).is_floating_point()


def test_dpmpp_2m_on_the_discrete_grid_equals_the_legacy_solver(noise):
    schedule = DiffusionSchedule.from_config("linear", 1000, 0.0015, 0.0195)
    model = discrete_eps_model(schedule)
    legacy = get_sampler("dpm_solver++", schedule, steps=15).sample(model, x_T=noise)
    dpmpp_2m = get_sampler("dpmpp_2m", schedule, steps=15, sigmas="discrete", spacing="logsnr")
    sigma_space = dpmpp_2m.sample(model, x_T=noise)
    torch.testing.assert_close(sigma_space, legacy, rtol=1e-10, atol=1e-10)


def test_lms_coefficients_integrate_the_lagrange_basis():
    s = [10.0, 6.0, 3.5, 1.0, 0.2]
    # order 1 is Euler: the weight is the step itself; weights of any order sum to the step
    assert lms_coefficients(s, 0, 1) == pytest.approx([s[1] - s[0]])
    for i, order in ((1, 2), (2, 3), (3, 4)):
        assert sum(lms_coefficients(s, i, order)) == pytest.approx(s[i + 1] - s[i])
    # order 2 = the Adams-Bashforth 2 weights for non-uniform steps: h (1 + h/(2 h_prev)), -h^2/(2 h_prev)
    h, hp = s[2] - s[1], s[1] - s[0]
    assert lms_coefficients(s, 1, 2) == pytest.approx([h * (1 + h / (2 * hp)), -h * h / (2 * hp)])


@pytest.mark.parametrize("name", sorted(K_SAMPLERS))
def test_img2img_and_inpainting_with_every_sampler(name):
    schedule = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END)
    model = discrete_eps_model(schedule)
    x_start = torch.full((2000, 2), 2.0, dtype=torch.float64)
    sampler = get_sampler(name, schedule, steps=20, sigmas="karras")
    seen = []
    x = sampler.sample(model, x_start=x_start, strength=0.3, seed=0, callback=lambda k, s, x, d: seen.append(s))
    assert len(seen) == int(0.3 * 20) and seen[0] == pytest.approx(sampler.sigmas[14].item())
    # started at sigma_14 (~0.6) from the input 2: pulled toward the data mean MU but far from a fresh sample;
    # the ODE solvers land on the affine flow map MU + S / sqrt(S^2 + sigma^2) (x - MU) of the start
    sigma = sampler.sigmas[14].item()
    assert MU + 0.5 < x.mean().item() < 2.0
    if name in ("euler", "heun", "dpmpp_2m", "lms"):
        assert x.mean().item() == pytest.approx(MU + S / math.sqrt(S * S + sigma * sigma) * (2.0 - MU), abs=0.05)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # keep column 0, regenerate column 1
    y = sampler.sample(model, known=x_start, mask=mask, seed=0)
    assert torch.equal(y[:, 0], x_start[:, 0])
    assert abs(y[:, 1].mean().item() - MU) < 0.1 and abs(y[:, 1].std().item() - S) < 0.1


def test_guidance_wraps_the_denoiser():
    schedule = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END)
    cond_model = discrete_eps_model(schedule)

    def model(x_t, t, cond):  # the condition shifts the eps prediction
        return cond_model(x_t, t, None) + cond
    x = torch.randn(4, 3, dtype=torch.float64)
    cond, null = torch.full((4, 3), 0.2, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    sigma = torch.full((4,), 2.0, dtype=torch.float64)
    # CFG on D(x, sigma, cond) equals D of the CFG'd model (the conversion is affine in the output)
    outer = classifier_free_guidance(DiscreteDenoiser(model, schedule), null, 3.0)(x, sigma, cond)
    inner = DiscreteDenoiser(classifier_free_guidance(model, null, 3.0), schedule)(x, sigma, cond)
    torch.testing.assert_close(outer, inner)
    # gradient guidance in sigma space equals the eps-space wrapper at a grid step
    t = torch.full((4,), 600, dtype=torch.long)
    grid_sigma = schedule.sigmas[t]
    target = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)

    def log_lik(image):
        return -0.5 * ((image - target) ** 2).sum(dim=1)
    for through_model in (True, False):
        D = gradient_guided_denoiser(DiscreteDenoiser(cond_model, schedule), log_lik, scale=2.0,
                                     through_model=through_model)
        eps_guided = gradient_guidance(cond_model, log_lik, schedule, scale=2.0, through_model=through_model)
        alpha = schedule.sqrt_alphas_cumprod[600].item()
        x_t = x * alpha
        eps = eps_guided(x_t, t, None)
        expected_x0 = (x_t - schedule.sqrt_one_minus_alphas_cumprod[600].item() * eps) / alpha
        torch.testing.assert_close(D(x, grid_sigma, None), expected_x0)
        assert (D(x, grid_sigma, None) - exact_D(x, grid_sigma)).abs().max() > 1e-3


def test_get_sampler_options_and_errors():
    schedule = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END)
    assert get_sampler("euler_a", schedule, steps=7).num_steps == 7
    assert get_sampler("euler_a", schedule).eta == 1.0 and get_sampler("euler", schedule).eta == 0.0
    assert type(get_sampler("dpmpp_2m", schedule)).__name__ == "DPMSolverPlusPlus2MSampler"
    assert type(get_sampler("dpmpp_2m", schedule, sigmas="karras")).__name__ == "SigmaSampler"
    with pytest.raises(ValueError, match="deterministic"):
        get_sampler("heun", schedule, eta=0.5)
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        get_sampler("euler", schedule, sigmas="cosine")
    with pytest.raises(ValueError, match="sigma-space"):
        get_sampler("ddim", schedule, sigmas="karras")
    with pytest.raises(ValueError, match="churn"):
        get_sampler("lms", schedule, churn=1.0)
    zsnr = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="inf"):
        get_sampler("euler", zsnr)


def test_churn_keeps_euler_and_heun_on_the_data_distribution():
    schedule = DiffusionSchedule.from_config("linear", 1000, BETA_START, BETA_END)
    for name, steps in (("euler", 200), ("heun", 60)):  # the churn noise makes Euler's error first order
        sampler = get_sampler(name, schedule, steps=steps, sigmas="karras", churn=20.0, s_tmin=0.05, s_tmax=10.0)
        x = sampler.sample(exact_D, (20_000, 1), seed=1, dtype=torch.float64, sigma_space=True)
        plain = get_sampler(name, schedule, steps=steps, sigmas="karras").sample(
            exact_D, (20_000, 1), seed=1, dtype=torch.float64, sigma_space=True)
        assert (x - plain).abs().mean() > 1e-2
        assert abs(x.mean().item() - MU) < 0.02 and abs(x.std().item() - S) / S < 0.05
