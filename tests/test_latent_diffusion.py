"""LatentDiffusion: conditioning routes, CFG dropout, latent rescaling, resume, demo configs."""
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.data.shapes import ShapesTrain
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.util import ConfigError, instantiate_from_config

T = 50


def kl_first_stage(ch_mult=(1, 2)):
    return {"target": "ldm.models.autoencoder.AutoencoderKL",
            "params": dict(embed_dim=3, lossconfig={"target": "torch.nn.Identity"},
                           ddconfig=dict(double_z=True, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32,
                                         ch_mult=list(ch_mult), num_res_blocks=1, attn_resolutions=[], dropout=0.0))}


IDENTITY = {"target": "ldm.models.autoencoder.IdentityFirstStage"}


def unet(in_channels=3, out_channels=3, **extra):
    params = dict(image_size=8, in_channels=in_channels, out_channels=out_channels, model_channels=32,
                  attention_resolutions=[], num_res_blocks=1, channel_mult=[1, 2], num_heads=1)
    params.update(extra)
    return {"target": "ldm.modules.unet.UNetModel", "params": params}


def class_embedder(output_key="crossattn", ucg_rate=0.0, dim=16):
    return {"target": "ldm.modules.conditioners.ClassEmbedder",
            "params": dict(n_classes=12, add_null_class=True, embed_dim=dim, key="class_label",
                           ucg_rate=ucg_rate, output_key=output_key)}


def model(first_stage=IDENTITY, cond=None, unet_cfg=None, **kw):
    params = dict(timesteps=T, image_size=8, channels=3, first_stage_key="image", cond_stage_key="class_label")
    params.update(kw)
    return LatentDiffusion(first_stage, cond if cond is not None else "__is_unconditional__",
                           unet_config=unet_cfg or unet(), **params)


def randomize_(module):
    """Zero-initialised output layers would hide every input; give all weights random values."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))


def shapes_batch(n=8, size=16):
    data = ShapesTrain(size=size, length=max(n, 8))
    items = [data[i] for i in range(n)]
    return {"image": torch.stack([s["image"] for s in items]),
            "class_label": torch.tensor([s["class_label"] for s in items]),
            "caption": [s["caption"] for s in items], "mask": torch.stack([s["mask"] for s in items])}


# ----------------------------------------------------------------------------- conditioning
def _changes(m, x, t, cond_a, cond_b):
    out_a, out_b = m.apply_model(x, t, cond_a), m.apply_model(x, t, cond_b)
    assert out_a.shape == x.shape
    return (out_a - out_b).abs().max() > 1e-4


def test_crossattn_condition_reaches_the_unet():
    m = model(cond=class_embedder(), conditioning_key="crossattn", cond_stage_trainable=True,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    randomize_(m.model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 40])
    c0 = m.get_learned_conditioning(torch.tensor([0, 1]))
    c1 = m.get_learned_conditioning(torch.tensor([5, 7]))
    assert c0.shape == (2, 1, 16)
    assert _changes(m, x, t, c0, c1)
    assert _changes(m, x, t, {"c_crossattn": [c0]}, {"crossattn": c1})  # original and our spellings


def test_concat_condition_reaches_the_unet():
    spatial = {"target": "ldm.modules.conditioners.SpatialRescaler", "params": {"n_stages": 1, "in_channels": 1}}
    m = model(cond=spatial, conditioning_key="concat", cond_stage_key="mask", unet_cfg=unet(in_channels=4))
    randomize_(m.model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 40])
    masks = shapes_batch(2)["mask"]
    c = m.get_learned_conditioning(masks)
    assert c.shape == (2, 1, 8, 8)
    assert _changes(m, x, t, c, torch.zeros_like(c))
    with pytest.raises(ValueError, match="concat"):
        m.apply_model(x, t, None)


def test_hybrid_condition_uses_both_entries():
    m = model(cond=class_embedder(), conditioning_key="hybrid",
              unet_cfg=unet(in_channels=4, use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    randomize_(m.model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 30])
    ctx = torch.randn(2, 1, 16)
    concat = torch.randn(2, 1, 8, 8)
    base = {"c_concat": [concat], "c_crossattn": [ctx]}
    assert _changes(m, x, t, base, {"c_concat": [concat], "c_crossattn": [torch.randn(2, 1, 16)]})
    assert _changes(m, x, t, base, {"c_concat": [torch.randn(2, 1, 8, 8)], "c_crossattn": [ctx]})
    with pytest.raises(ValueError, match="hybrid"):
        m.apply_model(x, t, ctx)


def test_adm_condition_reaches_the_unet_as_y():
    m = model(cond=class_embedder(output_key="vector"), conditioning_key="adm",
              unet_cfg=unet(num_classes="sequential", adm_in_channels=16))
    randomize_(m.model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 40])
    c0, c1 = m.get_learned_conditioning(torch.tensor([0, 1])), m.get_learned_conditioning(torch.tensor([2, 9]))
    assert c0.shape == (2, 16)
    assert _changes(m, x, t, c0, c1)


def test_conditioner_output_must_match_the_conditioning_key():
    with pytest.raises(ConfigError, match="conditioning_key"):
        model(cond=class_embedder(output_key="vector"), conditioning_key="crossattn",
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))


def test_ucg_dropout_rate_and_no_dropout_at_eval():
    m = model(cond=class_embedder(ucg_rate=0.3), conditioning_key="crossattn", cond_stage_trainable=True,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    batch = {"class_label": torch.zeros(4000, dtype=torch.long)}
    null = m.null_conditioning(1)[0]
    m.train()
    dropped = (m.condition_from_batch(batch) == null).all(dim=-1).flatten()
    assert 0.27 < dropped.float().mean() < 0.33
    m.eval()
    assert not (m.condition_from_batch(batch) == null).all(dim=-1).any()


# ----------------------------------------------------------------------------- first stage / scale
def test_first_stage_is_frozen_and_cond_stage_trainable_with_its_own_lr():
    m = model(first_stage=kl_first_stage(), cond=class_embedder(), conditioning_key="crossattn",
              cond_stage_trainable=True, cond_stage_lr=1e-5, image_size=8,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    m.train()
    assert not m.first_stage_model.training
    assert not any(p.requires_grad for p in m.first_stage_model.parameters())
    m.learning_rate = 1e-3
    opt = m.configure_optimizers()
    groups = opt.param_groups
    optimized = {id(p) for g in groups for p in g["params"]}
    assert not optimized & {id(p) for p in m.first_stage_model.parameters()}
    assert groups[-1]["lr"] == 1e-5
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for p in m.cond_stage_model.parameters()}


def test_scale_by_std_gives_unit_std_latents():
    m = model(first_stage=kl_first_stage(), scale_by_std=True, image_size=8)
    assert "scale_factor" in m.state_dict()
    batches = [shapes_batch(8) for _ in range(2)]
    raw_std = torch.cat([m.encode_to_latent(b["image"]) for b in batches]).std()
    value = m.estimate_scale_factor(batches)
    assert value == pytest.approx(1 / float(raw_std), rel=0.05)
    fresh = shapes_batch(16)
    assert abs(float(m.encode_to_latent(fresh["image"]).std()) - 1.0) < 0.1
    z = m.encode_to_latent(fresh["image"], sample=False)
    torch.testing.assert_close(m.decode_first_stage(z), m.first_stage_model.decode(z / m.scale_factor))


class _ShapesDicts(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.data = ShapesTrain(size=16, length=n)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        s = self.data[i]
        return {"image": s["image"], "class_label": s["class_label"]}


def _trainer(tmp_path, steps):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                     num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=steps)


def test_resume_keeps_scale_factor_and_ema(tmp_path):
    loader = DataLoader(_ShapesDicts(), batch_size=8, shuffle=True)
    m1 = model(first_stage=kl_first_stage(), scale_by_std=True, image_size=8, ema_decay=0.9)
    m1.learning_rate = 1e-3
    trainer1 = _trainer(tmp_path, 3)
    trainer1.fit(m1, loader, val_dataloaders=DataLoader(_ShapesDicts(8), batch_size=8))
    # validation reports the loss with the training weights and with the EMA weights
    assert {"val/loss_simple", "val/loss_simple_ema", "val/loss_ema"} <= set(trainer1.callback_metrics)
    assert m1._scale_factor_fitted and float(m1.scale_factor) != 1.0
    assert int(m1.model_ema.num_updates) == 3
    path = tmp_path / "last.ckpt"
    m1.trainer.save_checkpoint(path)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    m2 = model(first_stage=kl_first_stage(), scale_by_std=True, image_size=8, ema_decay=0.9)
    m2.learning_rate = 1e-3
    m2.estimate_scale_factor = lambda *a, **k: pytest.fail("scale_factor re-estimated after resume")
    restored = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module):
            restored.update({k: v.clone() for k, v in pl_module.model_ema.state_dict().items()})

    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[Capture()])
    trainer.fit(m2, loader, ckpt_path=path)  # restores at step 3, trains one more step
    assert trainer.global_step == 4 and int(m2.model_ema.num_updates) == 4
    assert float(m2.scale_factor) == float(m1.scale_factor)
    assert restored.keys() == m1.model_ema.state_dict().keys()
    for key, value in m1.model_ema.state_dict().items():
        assert torch.equal(restored[key], value), key

    # fine-tuning from the checkpoint keeps the fitted scale factor too
    m3 = model(first_stage=kl_first_stage(), scale_by_std=True, image_size=8, ckpt_path=str(path))
    assert m3.restarted_from_ckpt and float(m3.scale_factor) == float(m1.scale_factor)
    torch.testing.assert_close(m3.model.diffusion_model.out[2].weight, m1.model.diffusion_model.out[2].weight)


# ----------------------------------------------------------------------------- sampling
def test_sampling_with_classifier_free_guidance_and_log_images():
    m = model(first_stage=kl_first_stage(), cond=class_embedder(), conditioning_key="crossattn",
              cond_stage_trainable=True, image_size=8,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    randomize_(m.model)
    m.eval()
    labels = torch.tensor([0, 5])
    kw = dict(steps=3, use_ema=False)
    plain = m.sample(labels, generator=torch.Generator().manual_seed(0), **kw)
    scale_one = m.sample(labels, generator=torch.Generator().manual_seed(0), guidance_scale=1.0, **kw)
    guided = m.sample(labels, generator=torch.Generator().manual_seed(0), guidance_scale=4.0, **kw)
    assert plain.shape == (2, 3, 16, 16) and plain.abs().max() <= 1
    torch.testing.assert_close(plain, scale_one)
    assert (plain - guided).abs().max() > 1e-4
    latents = m.sample(labels, return_latents=True, sampler="dpm_solver++", **kw)
    assert latents.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="conditional"):
        m.sample(2)
    logs = m.log_images(shapes_batch(3), N=2, ddim_steps=2, guidance_scale=3.0)
    assert {"inputs", "reconstruction", "samples", "samples_cfg_scale_3.00"} <= set(logs)
    assert all(v.shape[0] == 2 and v.abs().max() <= 1 for v in logs.values())


def test_original_get_input_interface():
    m = model(first_stage=kl_first_stage(), cond=class_embedder(), conditioning_key="crossattn", image_size=8,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    z, c, x, xrec, xc = m.get_input(shapes_batch(4), "image", return_first_stage_outputs=True,
                                    return_original_cond=True, bs=3)
    assert z.shape == (3, 3, 8, 8) and c.shape == (3, 1, 16) and x.shape == xrec.shape == (3, 3, 16, 16)
    assert torch.equal(xc, shapes_batch(4)["class_label"][:3])


# ----------------------------------------------------------------------------- demo configs
def _short_run(cfg_path, steps=20, lr=2e-3, **unet_over):
    cfg = OmegaConf.load(cfg_path)
    p = cfg.model.params
    p.timesteps = 100
    p.scheduler_config = None
    p.first_stage_config.params.ddconfig.resolution = 16  # random-init first stage, 16×16 images -> 4×4 latents
    p.image_size = 4
    p.unet_config.params.image_size = 4
    p.unet_config.params.update(unet_over)
    m = instantiate_from_config(cfg.model)
    with torch.no_grad():  # a random first stage: make its posterior narrow so latents carry the image
        m.first_stage_model.quant_conv.bias[3:] = -12.0
    m.learning_rate = lr
    batch = shapes_batch(16)
    if m.scale_by_std:
        m.estimate_scale_factor([batch])
    opt = m.configure_optimizers()
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, 100, (16,), generator=gen)
    noise = torch.randn(16, 3, 4, 4, generator=gen)

    def eval_loss():
        m.eval()
        with torch.no_grad():
            torch.manual_seed(0)
            z = m.encode_to_latent(batch["image"].to(m.device))
            cond = m.condition_from_batch(batch, drop=False)
            loss = m.p_losses(z, cond, t, noise)[1]["val/loss_simple"]
        m.train()
        return float(loss)

    before = eval_loss()
    for _ in range(steps):
        loss, _ = m.shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, eval_loss()


@pytest.mark.parametrize("name", ["uncond", "class", "text"])
def test_demo_config_short_run_lowers_the_loss(name):
    before, after = _short_run(f"configs/demo/ldm_{name}_kl_f4.yaml", num_res_blocks=1)
    assert after < 0.75 * before, (before, after)


# ----------------------------------------------------------------------------- cache / inpainting
def test_latent_cache_batches_need_no_encoder():
    m = model(first_stage=kl_first_stage(), scale_by_std=True, image_size=8)
    images = shapes_batch(4)["image"]
    mean, std = m.latent_moments(images)
    cached = {"latent_mean": mean, "latent_std": std}
    torch.manual_seed(0)
    from_images = m.latents_from_batch({"image": images})
    m.first_stage_model.encode = lambda *a: pytest.fail("the encoder ran on a latent-cache batch")
    torch.manual_seed(0)
    torch.testing.assert_close(m.latents_from_batch(cached), from_images)
    assert m.estimate_scale_factor([cached]) > 0
    loss, _ = m.shared_step(cached)
    assert torch.isfinite(loss)
    assert set(m.log_images(cached, N=2, sample=False)) == {"reconstruction"}


def test_inpainting_condition_gets_the_mask_channel():
    # the original inpainting model: masked-image latent (__is_first_stage__) + mask, concatenated
    m = LatentDiffusion(IDENTITY, "__is_first_stage__", unet_config=unet(in_channels=7), timesteps=T, image_size=8,
                        channels=3, cond_stage_key="masked_image", concat_mode=True, concat_mask_key="mask")
    assert m.conditioning_key == "concat"
    batch = shapes_batch(2, size=8)
    batch["masked_image"] = batch["image"] * (1 - batch["mask"])
    cond = m.condition_from_batch(batch)
    assert cond.shape == (2, 4, 8, 8)
    torch.testing.assert_close(cond[:, 3:], batch["mask"])
    loss, _ = m.shared_step(batch)
    assert torch.isfinite(loss)
    assert m.sample(batch, steps=2).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="concat_mask_key"):
        model(concat_mask_key="mask")
