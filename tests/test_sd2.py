"""Stable Diffusion 2.x: the four original configs build with our classes (original target names),
to the original key layout (checked against the v2-inference-v checkpoint's key dump), load an
original-layout state dict strictly, and — shrunk to tiny widths — sample."""

import pytest
import torch
from omegaconf import OmegaConf

from key_dumps import read_keys
from ldm.models.sd2 import LatentInpaintDiffusion, LatentUpscaleDiffusion
from ldm.modules.upscaling import ImageConcatWithNoiseAugmentation
from ldm.util import instantiate_from_config
from sd2_fixtures import SD2_NAMES, original_model_node, tiny_model_node


def layout_state_dict(model, dump):
    """A state dict with the dump's keys and shapes: real buffers where the model has them, else meta."""
    own = model.state_dict()
    return {k: own[k].clone() if k in own and not own[k].is_meta else torch.empty(s, device="meta")
            for k, s in dump.items()}


def build_meta(name):
    with torch.device("meta"):
        return instantiate_from_config(original_model_node(name))


def test_v2_inference_v_matches_the_checkpoint_layout_and_loads_strictly():
    model = build_meta("v2-inference-v")
    dump = read_keys("ldm_sd2-v2-inference-v_keys.tsv")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == dump
    assert model.parameterization == "v" and model.scale_factor == pytest.approx(0.18215)
    assert model.cond_stage_model.layer == "penultimate"
    sd = layout_state_dict(model, dump)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # use_linear_in_transformer: proj_in is a linear layer (2-D weight), head width 64
    block = model.model.diffusion_model.input_blocks[1][1]
    assert block.proj_in.weight.shape == (320, 320) and block.transformer_blocks[0].attn1.heads == 5


def test_inpainting_config_has_nine_input_channels():
    model = build_meta("v2-inpainting-inference")
    assert isinstance(model, LatentInpaintDiffusion) and model.conditioning_key == "hybrid"
    dump = read_keys("ldm_sd2-v2-inference-v_keys.tsv")
    dump["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dump
    result = model.load_state_dict(layout_state_dict(model, dump), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_x4_upscaler_config_layout():
    model = build_meta("x4-upscaling")
    assert isinstance(model, LatentUpscaleDiffusion) and model.conditioning_key == "hybrid-adm"
    assert isinstance(model.low_scale_model, ImageConcatWithNoiseAugmentation)
    assert model.low_scale_model.max_noise_level == 350
    sd = model.state_dict()
    unet = model.model.diffusion_model
    assert sd["model.diffusion_model.label_emb.weight"].shape == (1000, 1024)  # the noise-level embedding
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape == (256, 7, 3, 3)
    assert sd["low_scale_model.betas"].shape == (1000,) and "low_scale_model.posterior_variance" not in sd
    # disable_self_attentions [True, True, True, False]: attn1 attends to the text (context width 1024)
    assert 1 not in unet.attention_resolutions and len(unet.input_blocks[1]) == 1
    assert unet.input_blocks[4][1].transformer_blocks[0].attn1.to_k.weight.shape == (512, 1024)
    assert unet.input_blocks[10][1].transformer_blocks[0].attn1.to_k.weight.shape == (1024, 1024)
    assert unet.middle_block[1].transformer_blocks[0].attn1.to_k.weight.shape == (1024, 1024)
    assert model.scale_factor == pytest.approx(0.08333) and model.parameterization == "v"
    result = model.load_state_dict(layout_state_dict(model, {k: v.shape for k, v in sd.items()}),
                                   strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_noise_augmentation_follows_q_sample():
    aug = ImageConcatWithNoiseAugmentation({"linear_start": 1e-4, "linear_end": 2e-2}, max_noise_level=350)
    x = torch.randn(3, 3, 4, 4)
    torch.manual_seed(0)
    z, level = aug(x, torch.tensor([0, 10, 349]))
    torch.manual_seed(0)
    eps = torch.randn_like(x)
    a = aug.alphas_cumprod[level].view(-1, 1, 1, 1)
    torch.testing.assert_close(z, a.sqrt() * x + (1 - a).sqrt() * eps)
    _, drawn = aug(torch.zeros(256, 1, 1, 1))
    assert drawn.min() >= 0 and drawn.max() < 350
    with pytest.raises(ValueError, match="noise_level"):
        aug(x, 1000)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {name: instantiate_from_config(tiny_model_node(name)).eval() for name in SD2_NAMES}


@pytest.mark.parametrize("name", SD2_NAMES)
def test_tiny_model_roundtrips_its_state_dict_strictly(tiny_models, name):
    model = tiny_models[name]
    torch.manual_seed(1)
    other = instantiate_from_config(tiny_model_node(name))
    result = other.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))


def test_txt2img_sampling_v_model(tiny_models):
    model = tiny_models["v2-inference-v"]
    g = torch.Generator().manual_seed(0)
    images = model.sample(["a red square", "a blue circle"], steps=3, guidance_scale=3.0, generator=g)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert images.abs().max() <= 1


def test_inpaint_sampling_and_loss(tiny_models):
    model = tiny_models["v2-inpainting-inference"]
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    batch = {"txt": ["a", "b"], "jpg": image, "mask": mask, "masked_image": image * (mask < 0.5)}
    cond = model.condition_from_batch(batch, drop=False)
    assert cond["concat"].shape == (2, 5, 8, 8)  # mask (1) + masked-image latent (4)
    torch.testing.assert_close(cond["concat"][:, :1], torch.nn.functional.interpolate(mask, size=(8, 8)))
    loss, _ = model.shared_step(batch)
    assert torch.isfinite(loss)
    images = model.sample(batch, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_inpainting_initialises_from_a_four_channel_checkpoint(tiny_models, tmp_path):
    base = tiny_models["v2-inference"]
    path = tmp_path / "base.ckpt"
    torch.save({"state_dict": base.state_dict()}, path)
    node = tiny_model_node("v2-inpainting-inference")
    node["params"]["ckpt_path"] = str(path)
    node["params"]["finetune_keys"] = ["model.diffusion_model.input_blocks.0.0.weight"]  # the shipped config: null
    model = instantiate_from_config(node)
    w = model.model.diffusion_model.input_blocks[0][0].weight
    torch.testing.assert_close(w[:, :4], base.model.diffusion_model.input_blocks[0][0].weight)
    assert torch.count_nonzero(w[:, 4:]) == 0


def test_upscale_sampling_uses_the_noise_level(tiny_models):
    model = tiny_models["x4-upscaling"]
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    batch = {"txt": ["a", "b"], "lr": low, "noise_level": torch.tensor([20, 20])}
    cond = model.condition_from_batch(batch, drop=False)
    assert cond["concat"].shape == (2, 3, 8, 8) and cond["vector"].tolist() == [20, 20]
    images = model.sample(batch, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    loss, _ = model.shared_step({"txt": ["a", "b"], "lr": low, "jpg": torch.rand(2, 3, 16, 16) * 2 - 1})
    assert torch.isfinite(loss)


def _checkpoint_and_config(model, name, tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    config = tmp_path / f"{name}.yaml"
    OmegaConf.save({"model": tiny_model_node(name)}, config)
    return ckpt, config


def _png(path, array):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def test_inpaint_and_superres_cli_from_checkpoints(tiny_models, tmp_path):
    """The SD 2 inpainting and x4 models sample through the command: the inpainting model keeps the
    known pixels (pasted back) and fills the hole; the upscaler turns an 8x8 image into 32x32."""
    import numpy as np
    from PIL import Image

    from ldm.cli.sample import main

    rng = np.random.default_rng(0)
    image = _png(tmp_path / "x.png", rng.integers(0, 256, (16, 16, 3)))
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[4:12, 4:12] = 255
    mask = _png(tmp_path / "m.png", hole)
    ckpt, config = _checkpoint_and_config(tiny_models["v2-inpainting-inference"], "v2-inpainting-inference", tmp_path)
    out = tmp_path / "inpaint"
    assert main(["inpaint", "--ckpt", str(ckpt), "--config", str(config), "--image", image, "--mask", mask,
                 "--prompt", "a cat", "--n_samples", "1", "--steps", "2", "--outdir", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    samples = sorted((out / "samples").glob("*.png"))
    assert samples
    result = np.asarray(Image.open(samples[0]).convert("RGB"), dtype=np.int16)
    source = np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)
    keep = hole == 0
    assert np.abs(result[keep] - source[keep]).max() <= 1          # known pixels pasted back
    assert np.abs(result[~keep] - source[~keep]).mean() > 5         # the hole was generated

    low = _png(tmp_path / "low.png", rng.integers(0, 256, (8, 8, 3)))
    ckpt, config = _checkpoint_and_config(tiny_models["x4-upscaling"], "x4-upscaling", tmp_path)
    out = tmp_path / "superres"
    assert main(["superres", "--ckpt", str(ckpt), "--config", str(config), "--input", low, "--prompt", "a cat",
                 "--n_samples", "1", "--steps", "2", "--outdir", str(out), "--device", "cpu", "--no-progress"]) == 0
    samples = sorted((out / "samples").glob("*.png"))
    f = 2 ** (tiny_models["x4-upscaling"].first_stage_model.encoder.num_resolutions - 1)
    assert samples and Image.open(samples[0]).size == (8 * f, 8 * f)


def test_txt2img_cli_from_a_checkpoint(tiny_models, tmp_path):
    from ldm.cli.sample import main

    ckpt, config = _checkpoint_and_config(tiny_models["v2-inference"], "v2-inference", tmp_path)
    out = tmp_path / "out"
    code = main(["txt2img", "--ckpt", str(ckpt), "--config", str(config), "--prompt", "a cat", "--n_samples", "1",
                 "--steps", "2", "--outdir", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    assert len(list(out.rglob("*.png"))) >= 1
