"""``convert to-diffusers`` / ``from-diffusers``: diffusers' own modules, built from the converted
folder, compute what ours compute (UNet, VAE, text encoder), and the round trip is exact.
Tiny random models on both sides; nothing is downloaded."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ldm.cli.convert import main
from ldm.util import instantiate_from_config
from sd2_fixtures import tiny_clip_text_dir, tiny_model_node, tiny_sd1_node


def _randomise(model):
    """Zero-initialised output layers would make every comparison trivial."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (model, config path, checkpoint path)"""
    root = tmp_path_factory.mktemp("models")
    clip_dir = tiny_clip_text_dir(root / "clip")
    out = {}
    for name, node in (("sd1", tiny_sd1_node(clip_dir)), ("sd2-v", tiny_model_node("v2-inference-v")),
                       ("sd2-inpaint", tiny_model_node("v2-inpainting-inference")),
                       ("sd2-x4", tiny_model_node("x4-upscaling"))):
        torch.manual_seed(0)
        model = _randomise(instantiate_from_config(node)).eval()
        config, ckpt = root / f"{name}.yaml", root / f"{name}.safetensors"
        OmegaConf.save({"model": node}, config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
        out[name] = (model, config, ckpt)
    return out


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    out = {}
    for name, (_, config, ckpt) in models.items():
        folder = root / name
        assert main(["to-diffusers", "--config", str(config), "--ckpt", str(ckpt), "--out", str(folder)]) == 0
        out[name] = folder
    return out


@pytest.mark.parametrize("name", ["sd1", "sd2-v", "sd2-inpaint", "sd2-x4"])
def test_unet_matches(models, converted, name):
    from diffusers import UNet2DConditionModel

    model = models[name][0]
    ours = model.model.diffusion_model
    theirs = UNet2DConditionModel.from_pretrained(converted[name] / "unet").eval()
    x = torch.randn(2, ours.in_channels, 8, 8)
    t = torch.tensor([3, 900])
    ctx = torch.randn(2, 77, ours.context_dim)
    level = torch.tensor([20, 300]) if ours.num_classes else None  # the x4 upscaler's noise level
    with torch.no_grad():
        expected = ours(x, t, context=ctx, y=level)
        got = theirs(x, t, encoder_hidden_states=ctx, class_labels=level).sample
    assert expected.abs().mean() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
def test_vae_matches(models, converted, name):
    from diffusers import AutoencoderKL

    model = models[name][0]
    vae = AutoencoderKL.from_pretrained(converted[name] / "vae").eval()
    assert vae.config.scaling_factor == pytest.approx(model.scale_factor)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean, _ = model.first_stage_model.latent_moments(x)
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, mean, rtol=1e-4, atol=1e-4)
        z = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(vae.decode(z).sample, model.first_stage_model.decode_latent(z),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
def test_text_encoder_and_tokenizer_match(models, converted, name):
    from transformers import CLIPTextModel, CLIPTokenizer

    model = models[name][0]
    tokenizer = CLIPTokenizer.from_pretrained(converted[name] / "tokenizer")
    text = CLIPTextModel.from_pretrained(converted[name] / "text_encoder").eval()
    prompts = ["a red square", ""]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, model.cond_stage_model.tokenize(prompts))
    with torch.no_grad():
        torch.testing.assert_close(text(ids).last_hidden_state, model.get_learned_conditioning(prompts),
                                   rtol=1e-4, atol=1e-4)


def test_pipeline_loads_and_denoises_like_ours(models, converted):
    """One DDIM step of diffusers' pipeline from our x_T equals our model's epsilon/v step."""
    from diffusers import StableDiffusionPipeline

    model = models["sd2-v"][0]
    pipe = StableDiffusionPipeline.from_pretrained(converted["sd2-v"], safety_checker=None)
    index = json.loads((converted["sd2-v"] / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"][1] == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.float(), model.alphas_cumprod.float())
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = pipe("a red square", height=16, width=16, num_inference_steps=2, guidance_scale=1.0,
               latents=latents.clone(), output_type="latent").images
    # our DDIM on the same two timesteps (diffusers' "leading" spacing with steps_offset=1: 501, 1)
    from ldm.diffusion.gaussian import x0_eps_from_output

    cond = model.get_learned_conditioning(["a red square"])
    x = latents.clone()
    ac = model.alphas_cumprod.double()
    steps = [501, 1]
    with torch.no_grad():
        for i, t in enumerate(steps):
            a = ac[t]
            a_prev = ac[steps[i + 1]] if i + 1 < len(steps) else ac.new_tensor(ac[0].item())
            v = model.apply_model(x, torch.tensor([t]), cond).double()
            x0, eps = x0_eps_from_output(v, x.double(), a.sqrt(), (1 - a).sqrt(), "v")
            x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
    torch.testing.assert_close(out, x, rtol=1e-3, atol=1e-3)


def test_x4_upscaler_pipeline_loads(models, converted):
    from diffusers import StableDiffusionUpscalePipeline

    model = models["sd2-x4"][0]
    pipe = StableDiffusionUpscalePipeline.from_pretrained(converted["sd2-x4"])
    assert pipe.config.max_noise_level == 350
    torch.testing.assert_close(pipe.low_res_scheduler.alphas_cumprod.float(), model.low_scale_model.alphas_cumprod)
    assert pipe.unet.config.only_cross_attention == [True, False]
    assert pipe.vae.config.scaling_factor == pytest.approx(0.08333)


@pytest.mark.parametrize("name", ["sd1", "sd2-v", "sd2-inpaint", "sd2-x4"])
def test_from_diffusers_round_trip_is_exact(models, converted, tmp_path, name):
    model, config, _ = models[name]
    out = tmp_path / "back.safetensors"
    assert main(["from-diffusers", "--diffusers", str(converted[name]), "--config", str(config),
                 "--out", str(out)]) == 0
    back = load_file(str(out))
    own = model.state_dict()
    assert set(back) == set(own)
    different = [k for k in own if not torch.equal(back[k].float(), own[k].float())]
    assert different == []


def test_unsupported_models_are_refused(models, tmp_path, capsys):
    node = tiny_model_node("v2-inference")
    node["params"]["unet_config"]["params"]["use_scale_shift_norm"] = True
    config, ckpt = tmp_path / "x4.yaml", tmp_path / "x4.safetensors"
    OmegaConf.save({"model": node}, config)
    model = instantiate_from_config(node)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    assert main(["to-diffusers", "--config", str(config), "--ckpt", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "convert: error:" in capsys.readouterr().err


def test_from_diffusers_with_a_mismatched_config_is_a_clear_error(models, converted, tmp_path, capsys):
    _, config, _ = models["sd2-v"]
    code = main(["from-diffusers", "--diffusers", str(converted["sd1"]), "--config", str(config),
                 "--out", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert "convert: error:" in capsys.readouterr().err
