"""What the models state about themselves (sizes, condition kind, spatial inputs, samplers), the explicit
arguments of ``LatentDiffusion.sample`` and its positional shorthand, and the one EMA swap."""
import sys
from pathlib import Path

import pytest
import torch

from ldm.models.ddpm import DDPM
from ldm.samplers import ETA_SAMPLERS, get_sampler, takes_eta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_latent_diffusion import class_embedder, kl_first_stage, model, randomize_, unet  # noqa: E402


def pixel_ddpm(**kw):
    return DDPM(unet(), timesteps=20, image_size=8, channels=3, **kw)


def test_pixel_model_states_its_sizes():
    m = pixel_ddpm()
    assert (m.first_stage_factor, m.unet_downsampling, m.size_multiple) == (1, 2, 2)
    assert m.trained_image_size == (8, 8) and m.image_channels == 3
    assert m.latent_shape(6, 10) == (3, 6, 10)
    with pytest.raises(ValueError, match="width 7 must be a positive multiple of 2"):
        m.latent_shape(6, 7)
    assert m.condition_kind() == "none" and m.spatial_inputs() == [] and m.text_input_key() is None
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(m.encode_images(x), x)


def test_latent_model_states_its_sizes_from_the_first_stage():
    # ch_mult (1, 2, 2): the KL encoder halves twice (f = 4); the UNet's channel_mult [1, 2] once more
    m = model(first_stage=kl_first_stage((1, 2, 2)), image_size=4)
    assert m.first_stage_model.downsampling_factor == 4 and m.first_stage_factor == 4
    assert (m.unet_downsampling, m.size_multiple) == (2, 8)
    assert m.trained_image_size == (16, 16) and m.image_channels == 3
    assert m.latent_shape(16, 24) == (3, 4, 6)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(m.encode_images(images), m.encode_to_latent(images, sample=False))
    # a first stage that does not state its factor is measured (here an identity: 1)
    assert model().first_stage_factor == 1


def test_condition_kind_comes_from_the_conditioner():
    assert model().condition_kind() == "none"
    labelled = model(cond=class_embedder(), conditioning_key="crossattn")
    assert labelled.condition_kind() == "class"
    assert labelled.class_labels() == list(range(12))  # 12 classes + the added null row (index 12)
    assert model().class_labels() == [] and pixel_ddpm().class_labels() == []
    bert = {"target": "ldm.modules.conditioners.BERTEmbedder",
            "params": dict(n_embed=16, n_layer=1, use_tokenizer=False, max_seq_len=8)}
    assert model(cond=bert, conditioning_key="crossattn", cond_stage_key="caption").condition_kind() == "other"


def test_spatial_inputs_of_a_concat_model():
    rescaler = {"target": "ldm.modules.conditioners.SpatialRescaler",
                "params": dict(n_stages=1, in_channels=1, out_channels=3, multiplier=0.5)}
    m = model(cond=rescaler, conditioning_key="concat", cond_stage_key="mask",
              unet_cfg=unet(in_channels=6))
    assert m.spatial_inputs() == [("mask", 1, 2.0)]  # a 16 px mask for an 8-cell latent
    assert m.condition_kind() == "other" and m.extra_sampling_inputs(3) == {}


def test_which_samplers_take_eta_is_decided_once():
    m = pixel_ddpm()
    assert set(ETA_SAMPLERS) == {"ddim", "plms", "euler_a", "dpmpp_2s_a", "dpmpp_2m_sde"}
    for name in ("ddim", "plms", "euler_a", "dpmpp_2m_sde"):
        assert takes_eta(name) and m.sampler_takes_eta(name)
    for name in ("ddpm", "dpm_solver++", "euler", "heun", "lms"):
        assert not takes_eta(name)
    assert not takes_eta("dpmpp_2m") and not takes_eta("dpmpp_2m", "karras")
    assert {"ddim", "euler_a", "dpmpp_2m"} <= set(m.supported_samplers())
    # the model passes eta exactly to the samplers that take one; a non-zero eta elsewhere is refused
    assert m.build_sampler("ddim", 5, 0.5).eta == 0.5
    assert m.build_sampler("euler_a", 5, sigmas="karras").eta == 1.0
    with pytest.raises(ValueError, match="deterministic"):
        m.build_sampler("euler", 5, 0.5, sigmas="karras")
    with pytest.raises(ValueError, match="eta"):
        get_sampler("dpm_solver++", m.schedule, steps=5, eta=0.3)


def test_run_sampler_takes_a_built_sampler():
    torch.manual_seed(0)
    m = pixel_ddpm(use_ema=False)
    randomize_(m.model)
    x_T = torch.randn(2, 3, 8, 8)
    by_name = m.run_sampler(2, sampler="ddim", steps=4, x_T=x_T.clone())
    built = m.run_sampler(2, sampler=m.build_sampler("ddim", 4), x_T=x_T.clone())
    torch.testing.assert_close(by_name, built)
    with pytest.raises(ValueError, match="built sampler"):
        m.run_sampler(2, sampler=m.build_sampler("ddim", 4), steps=3)


def test_sample_explicit_arguments_and_the_positional_shorthand():
    torch.manual_seed(0)
    m = model(cond=class_embedder(), conditioning_key="crossattn", use_ema=False,
              unet_cfg=unet(use_spatial_transformer=True, context_dim=16, attention_resolutions=[1]))
    randomize_(m.model)
    labels = torch.tensor([1, 4])
    x_T = torch.randn(2, 3, 8, 8)
    run = dict(sampler="ddim", steps=3, x_T=x_T, guidance_scale=2.0)
    explicit = m.sample(inputs=labels, **run)
    torch.testing.assert_close(m.sample(labels, **run), explicit)  # shorthand: a tensor is `inputs`
    learned = m.get_learned_conditioning(labels)
    torch.testing.assert_close(m.sample(conditioning=learned, **run), explicit)
    with pytest.raises(ValueError, match="not both"):
        m.sample(labels, inputs=labels)
    with pytest.raises(ValueError, match="not both"):
        m.sample(inputs=labels, conditioning=learned)
    with pytest.raises(ValueError, match="conditional on"):
        m.sample(batch_size=2)

    u = model(use_ema=False)
    randomize_(u.model)
    torch.testing.assert_close(u.sample(2, sampler="ddim", steps=3, x_T=x_T),
                               u.sample(batch_size=2, sampler="ddim", steps=3, x_T=x_T))
    assert u.sample(sampler="ddim", steps=1).shape[0] == 16  # the default batch size stays 16
    with pytest.raises(ValueError, match="batch size, not a condition"):
        u.sample(inputs=labels)


def test_one_ema_swap_for_diffusion_models_and_the_vq_autoencoder():
    from ldm.models.autoencoder import VQModel

    vq = VQModel(ddconfig=dict(double_z=False, z_channels=3, resolution=8, in_channels=3, out_ch=3, ch=32,
                               ch_mult=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
                 lossconfig=None, n_embed=4, embed_dim=3, use_ema=True)
    before = [p.detach().clone() for p in vq.parameters()]
    with torch.no_grad():
        for p in vq.parameters():
            p.add_(1.0)  # the trained weights move away from the (initial) EMA
    with vq.ema_scope():
        assert all(torch.equal(p, b) for p, b in zip(vq.parameters(), before))
    assert all(torch.equal(p, b + 1.0) for p, b in zip(vq.parameters(), before))
    assert type(vq).ema_scope is type(pixel_ddpm()).ema_scope
