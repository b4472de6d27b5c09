"""Pixel-space DDPM LightningModule: schedule buffers, loss terms against closed forms, EMA,
checkpoint key handling, and a short demo-config run that lowers the loss."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from ldm.diffusion import normal_kl, q_posterior
from ldm.models.ddpm import DDPM, SCHEDULE_BUFFERS
from ldm.models.diffusion_loss import hybrid_vlb_term, min_snr_weight, offset_noise
from ldm.util import instantiate_from_config

T = 50


def unet_config(out_channels=3, size=16):
    return {"target": "ldm.modules.unet.UNetModel",
            "params": dict(image_size=size, in_channels=3, out_channels=out_channels, model_channels=32,
                           attention_resolutions=[], num_res_blocks=1, channel_mult=[1, 2], num_heads=1)}


def tiny_ddpm(**kw):
    params = dict(timesteps=T, image_size=16, channels=3, linear_start=1e-3, linear_end=2e-2)
    params.update(kw)
    return DDPM(unet_config(out_channels=6 if "learned" in params.get("variance_type", "") else 3), **params)


def snr(ac):
    return ac / (1 - ac)


def test_schedule_buffers_have_original_names_values_and_dtype():
    m = tiny_ddpm(beta_schedule="linear")
    extra = [k for k in m.state_dict() if not k.startswith(("model.", "model_ema."))]
    assert extra == list(SCHEDULE_BUFFERS)  # no logvar / lvlb_weights in checkpoints
    assert all(getattr(m, k).dtype == torch.float32 for k in SCHEDULE_BUFFERS)
    betas = torch.linspace(math.sqrt(1e-3), math.sqrt(2e-2), T, dtype=torch.float64) ** 2
    torch.testing.assert_close(m.betas.double(), betas, rtol=1e-6, atol=0)
    ac = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    torch.testing.assert_close(m.posterior_variance.double(), betas * (1 - prev) / (1 - ac), rtol=1e-5, atol=1e-12)
    assert m.num_timesteps == T and m.alphas_cumprod.shape == (T,)


def test_v_posterior_interpolates_the_variance():
    m = tiny_ddpm(v_posterior=0.25)
    b = m.schedule.betas
    ac = torch.cumprod(1 - b, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    expected = 0.75 * b * (1 - prev) / (1 - ac) + 0.25 * b
    torch.testing.assert_close(m.posterior_variance.double(), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_vlb_weights_match_closed_form(parameterization):
    """w_t with L_{t-1} = w_t ||target - prediction||^2 (DDPM Eq. 8, sigma^2 = beta-tilde) is
    0.5 (SNR(t-1) - SNR(t)) for x0, divided by SNR(t) for eps and by SNR(t) + 1 for v."""
    m = tiny_ddpm(parameterization=parameterization)
    ac = m.schedule.alphas_cumprod
    diff = 0.5 * (snr(ac[:-1]) - snr(ac[1:]))  # t = 1 .. T-1
    expected = {"x0": diff, "eps": diff / snr(ac[1:]), "v": diff / (snr(ac[1:]) + 1)}[parameterization]
    torch.testing.assert_close(m.lvlb_weights[1:].double(), expected, rtol=2e-4, atol=0)
    assert m.lvlb_weights[0] == m.lvlb_weights[1]
    if parameterization == "x0":  # the original's 0.5*sqrt(a)/(2.*1-a) is not the bound's weight
        buggy = 0.5 * ac.sqrt() / (2.0 * 1 - ac)
        assert not torch.allclose(m.lvlb_weights[1:].double(), buggy[1:], rtol=0.1)


@pytest.mark.parametrize("parameterization", ["eps", "x0"])
def test_weighted_mse_equals_the_kl_term(parameterization):
    """original_elbo_weight's term is exactly the Gaussian KL of DDPM Eq. (5) for a fixed variance."""
    m = tiny_ddpm(parameterization=parameterization)
    s = m.schedule
    x0 = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 7, 20, T - 1])
    x_t = m.q_sample(x0, t, noise)
    pred = (noise if parameterization == "eps" else x0) + 0.1 * torch.randn_like(x0)
    if parameterization == "eps":
        root_ab = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        x0_hat = (x_t - s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * pred) / root_ab
    else:
        x0_hat = pred
    true_mean, _, logvar = q_posterior(s, x0, x_t, t)
    model_mean, _, _ = q_posterior(s, x0_hat, x_t, t)
    kl = normal_kl(true_mean, logvar, model_mean, logvar).mean(dim=(1, 2, 3))
    target = noise if parameterization == "eps" else x0
    weighted = m.lvlb_weights.double()[t] * ((target - pred) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, kl, rtol=2e-4, atol=1e-9)


def test_min_snr_weights_closed_form_and_finite_at_zero_snr():
    s = torch.tensor([0.0, 0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(s, 5.0, "x0"), torch.tensor([0.0, 0.5, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(s, 5.0, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(s, 5.0, "v"), torch.tensor([0.0, 0.5 / 1.5, 5.0 / 6.0, 5.0 / 51.0]))
    with pytest.raises(ValueError):
        min_snr_weight(s, 0.0, "eps")


def test_zero_terminal_snr_and_min_snr_train_with_v():
    m = tiny_ddpm(zero_terminal_snr=True, parameterization="v", min_snr_gamma=5.0)
    assert float(m.alphas_cumprod[-1]) == 0.0
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, _ = m.p_losses(x, torch.tensor([T - 1, 3]))
    assert torch.isfinite(loss)


def test_offset_noise_adds_a_per_channel_offset():
    g = torch.Generator().manual_seed(0)
    like = torch.zeros(1)
    plain = offset_noise((256, 3, 16, 16), 0.0, like=like, generator=g)
    shifted = offset_noise((256, 3, 16, 16), 1.0, like=like, generator=g)
    # the per-(sample, channel) mean has variance 1/HW without offset and 1 + 1/HW with strength 1
    assert plain.mean(dim=(2, 3)).var() < 0.02
    assert 0.8 < shifted.mean(dim=(2, 3)).var() < 1.25


def test_hybrid_term_trains_only_the_variance():
    """Improved DDPM Sec. 3.1 (stop-gradient on the mean): L_vlb reaches the variance output but not the mean."""
    m = tiny_ddpm(variance_type="learned_range")
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 30])
    x_t = m.q_sample(x0, t)
    pred = torch.randn(3, 3, 8, 8, requires_grad=True)
    var = torch.zeros(3, 3, 8, 8, requires_grad=True)
    term = hybrid_vlb_term(m.schedule, pred, var, x0, x_t, t, "eps", "learned_range")
    assert term.shape == (3,) and torch.isfinite(term).all()
    term.sum().backward()
    assert pred.grad is None or pred.grad.abs().max() == 0
    assert var.grad.abs().max() > 0
    with pytest.raises(ValueError, match="learned variance"):
        hybrid_vlb_term(m.schedule, pred, var, x0, x_t, t, "eps", "fixed_small")


def test_learned_range_loss_backpropagates_to_the_unet_and_logs_the_terms():
    m = tiny_ddpm(variance_type="learned_range", learn_logvar=True, original_elbo_weight=0.1)
    loss, log = m.shared_step({"image": torch.rand(2, 3, 16, 16) * 2 - 1})
    assert {"train/loss", "train/loss_simple", "train/loss_vlb", "train/loss_hybrid_vlb", "logvar"} <= set(log)
    loss.backward()
    assert m.model.diffusion_model.out[2].weight.grad.abs().sum() > 0
    assert m.logvar.grad is not None and "logvar" in m.state_dict()


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="parameterization"):
        tiny_ddpm(parameterization="score")
    with pytest.raises(ValueError, match="loss_type"):
        tiny_ddpm(loss_type="huber2")
    with pytest.raises(ValueError, match="beta schedule"):
        tiny_ddpm(beta_schedule="exp")
    with pytest.raises(ValueError, match="out_channels"):  # refused when built, not at the first step
        DDPM(unet_config(out_channels=3), timesteps=T, image_size=16, variance_type="learned_range")
    m = tiny_ddpm()
    with pytest.raises(KeyError, match="first_stage_key"):
        m.shared_step({"jpg": torch.zeros(1, 3, 16, 16)})


def test_bf16_autocast_step_keeps_the_loss_in_fp32():
    m = tiny_ddpm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = m.shared_step({"image": torch.rand(2, 3, 16, 16) * 2 - 1})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_ema_scope_swaps_weights_and_restores_them():
    m = tiny_ddpm(ema_decay=0.5)
    w = m.model.diffusion_model.out[2].weight
    original = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    idle = torch.optim.SGD(m.model.parameters(), lr=0.0)  # no gradients: the step changes nothing
    m.optimizer_step(0, 0, idle)  # the step, then one EMA step (warm-up decay min(0.5, 2/11))
    shadow = m.model_ema.diffusion_modelout2weight
    decay = 2 / 11
    torch.testing.assert_close(shadow, decay * original + (1 - decay) * (original + 1))
    with m.ema_scope():
        torch.testing.assert_close(w, shadow)
    torch.testing.assert_close(w, original + 1)


def test_original_checkpoint_quirks_load(tmp_path):
    src = tiny_ddpm()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    # an old release: EMA weights copied into model.*, only the EMA scalars kept, stray DDIM buffers
    kept_ema = ("model_ema.decay", "model_ema.num_updates")
    released = {k: v for k, v in sd.items() if not k.startswith("model_ema.") or k in kept_ema}
    for name in ("ddim_sigmas", "ddim_alphas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas"):
        released[name] = torch.zeros(10)
    released["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    dst = tiny_ddpm()
    dst.load_state_dict(released, strict=True)
    for name, p in dst.model.named_parameters():
        torch.testing.assert_close(p, sd[f"model.{name}"])
        torch.testing.assert_close(getattr(dst.model_ema, name.replace(".", "")), sd[f"model.{name}"])
    # a model without EMA ignores the checkpoint's EMA entries
    DDPM(unet_config(), timesteps=T, image_size=16, use_ema=False).load_state_dict(sd, strict=True)


def test_ckpt_path_ignore_keys_and_only_model(tmp_path, capsys):
    src = tiny_ddpm()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": src.state_dict(), "global_step": 3}, path)
    m = tiny_ddpm(ckpt_path=str(path), ignore_keys=["model.diffusion_model.out."])
    report = capsys.readouterr().out
    assert "missing keys" in report and "ignored keys" in report
    torch.testing.assert_close(m.model.diffusion_model.input_blocks[0][0].weight,
                               src.model.diffusion_model.input_blocks[0][0].weight)
    unet_only = tiny_ddpm(ckpt_path=str(path), load_only_unet=True, use_ema=False)
    torch.testing.assert_close(unet_only.model.diffusion_model.out[2].weight, src.model.diffusion_model.out[2].weight)


def test_sampling_returns_images_for_each_sampler():
    m = tiny_ddpm(variance_type="learned_range")
    g = torch.Generator().manual_seed(0)
    a = m.sample(2, sampler="ddim", steps=4, generator=g)
    b = m.sample(2, sampler="ddim", steps=4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    assert m.sample(1, sampler="ddpm", steps=5).shape == (1, 3, 16, 16)
    logs = m.log_images({"image": torch.zeros(3, 3, 16, 16)}, N=2, ddim_steps=3, plot_diffusion_rows=True)
    assert set(logs) == {"inputs", "diffusion_row", "samples"} and logs["samples"].shape == (2, 3, 16, 16)


def test_sigma_space_samplers_from_the_model_config_and_the_image_logger():
    m = tiny_ddpm(variance_type="learned_range", sampler_config={"sampler": "euler_a", "steps": 4, "sigmas": "karras"})
    sampler = m.build_sampler()
    assert type(sampler).__name__ == "SigmaSampler" and sampler.name == "euler_a" and sampler.eta == 1.0
    assert m.build_sampler("dpmpp_2m", sigmas="exponential").sigma_schedule == "exponential"
    assert type(m.build_sampler("ddim")).__name__ == "DDIMSampler"  # the config's sigmas go with its sampler's kind
    assert m.sample(2, sampler="heun", steps=3, generator=torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    batch = {"image": torch.zeros(2, 3, 16, 16)}
    torch.manual_seed(0)
    logged = m.log_images(batch, N=2, ddim_steps=3, sampler="dpmpp_2m", sigmas="karras")["samples"]
    torch.manual_seed(0)
    direct = m.sample(2, sampler="dpmpp_2m", sigmas="karras", steps=3)
    torch.testing.assert_close(logged, direct)
    torch.manual_seed(0)
    assert not torch.allclose(m.log_images(batch, N=2, ddim_steps=3, sampler="ddim")["samples"], direct)


def test_pixel_demo_config_short_run_lowers_the_loss():
    cfg = OmegaConf.load("configs/demo/ldm_pixel_ddpm.yaml")
    p = cfg.model.params
    p.timesteps = 100
    p.unet_config.params.update(image_size=16, model_channels=32, channel_mult=[1, 2], attention_resolutions=[])
    p.image_size = 16
    p.scheduler_config = None
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    from ldm.data.shapes import ShapesTrain

    data = ShapesTrain(size=16, length=64)
    batch = {"image": torch.stack([data[i]["image"] for i in range(16)])}
    opt = model.configure_optimizers()
    fixed_t = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(1))
    fixed_noise = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = model.p_losses(batch["image"], fixed_t, fixed_noise)[1]["val/loss_simple"]
        model.train()
        return float(loss)

    before = eval_loss()
    for _ in range(30):
        loss, _ = model.shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
