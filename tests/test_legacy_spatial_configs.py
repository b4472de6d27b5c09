"""The original spatially conditioned configs (tests/fixtures/ldm_configs: ``semantic_synthesis256``,
``bsr_sr``, ``inpainting_big``) build with tiny random weights (widths shrunk, layout as shipped) and
sample from their concat inputs, through the model API and the sampling CLI's input assembly.

``inpainting_big``'s UNet takes 7 channels: the masked image's latent (3) and the mask (1) that the
original inference script concatenated by hand; here ``concat_mask_key`` names the mask's batch key.
"""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.util import instantiate_from_config

CONFIGS = Path(__file__).parent / "fixtures" / "ldm_configs"


def tiny(name: str, **params):
    cfg = OmegaConf.load(CONFIGS / f"models_ldm_{name}.yaml").model
    p = cfg.params
    p.timesteps, p.image_size, p.use_ema = 20, 8, False
    unet = p.unet_config.params
    unet.update(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=list(unet.channel_mult)[:2],
                attention_resolutions=[2])
    if "num_heads" in unet:
        unet.num_heads = 2
    first = p.first_stage_config.params
    first.n_embed = 16
    first.ddconfig.update(ch=32, resolution=32)
    p.update(params)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg).eval()
    with torch.no_grad():  # zero-initialised output layers would make every condition look alike
        for param in model.model.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return model


def _x_T(n=2):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_semantic_synthesis256_samples_from_a_label_map():
    model = tiny("semantic_synthesis256")
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:24, 8:24] = 5
    seg = torch.nn.functional.one_hot(labels, 182).permute(0, 3, 1, 2).float()
    out = model.sample(seg, steps=2, x_T=_x_T())
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    null = model.null_conditioning(2, raw=seg)  # zeros of the rescaled map (3 channels after channel_mapper)
    assert null.shape == (2, 3, 8, 8) and not null.any()
    guided = model.sample(seg, steps=2, x_T=_x_T(), guidance_scale=2.0)
    assert torch.isfinite(guided).all() and not torch.allclose(out, guided)
    other = model.sample(torch.roll(seg, 8, dims=3), steps=2, x_T=_x_T())
    assert not torch.allclose(out, other)  # the map steers the sample


def test_bsr_sr_samples_from_a_low_res_image():
    model = tiny("bsr_sr")
    assert type(model.cond_stage_model).__name__ == "Identity" and model.conditioning_key == "concat"
    low = torch.rand(2, 3, 8, 8) * 2 - 1  # LR_image: the latent's size (f4 first stage, 4x upscaling)
    out = model.sample(low, steps=2, x_T=_x_T())
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, model.sample(-low, steps=2, x_T=_x_T()))


def test_inpainting_big_samples_from_masked_image_and_mask():
    model = tiny("inpainting_big", concat_mask_key="mask")
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :, :16] = 1
    from ldm.models.conditioning import masked_image

    batch = {"masked_image": masked_image(image, mask), "mask": mask}
    cond = model.condition_from_batch(batch, drop=False)
    assert cond.shape == (2, 4, 8, 8)  # 3-channel latent of the masked image + the mask at latent size
    out = model.sample(batch, steps=2, x_T=_x_T())
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,mode", [("bsr_sr", "superres"), ("semantic_synthesis256", "mask2img"),
                                       ("inpainting_big", "inpaint")])
def test_cli_input_assembly_for_the_original_layouts(tmp_path, name, mode):
    from ldm.cli.sample_spatial import concat_inputs, spatial_condition

    model = tiny(name, **({"concat_mask_key": "mask"} if name == "inpainting_big" else {}))
    picture = tmp_path / "in.png"
    if mode == "mask2img":
        labels = np.zeros((32, 32), dtype=np.uint8)
        labels[4:20, 4:20] = 7
        Image.fromarray(labels, mode="L").save(picture)
    else:
        Image.fromarray(np.full((8 if mode == "superres" else 32,) * 2 + (3,), 90, dtype=np.uint8)).save(picture)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(32)[None, :] < 16, 255, 0).repeat(32, 0).astype(np.uint8)).save(mask)
    args = Namespace(mode=mode, input=str(picture), init_img=str(picture), mask=str(mask), H=None, W=None)
    raw, (height, width), _ = spatial_condition(args, model)
    assert (height, width) == (32, 32)
    assert sorted(raw) == sorted(i.key for i in concat_inputs(model))
    if mode == "mask2img":
        assert raw["segmentation"].shape == (1, 182, 32, 32) and raw["segmentation"][0, 7, 10, 10] == 1
    cond = model.condition_from_batch(raw, drop=False)
    assert cond.shape[-2:] == (8, 8)
    assert model.sample(raw, steps=1, x_T=_x_T(1)).shape == (1, 3, 32, 32)
