"""The conditioner stack (ldm/modules/conditioners/stack.py) inside LatentDiffusion: hybrid (text by
cross-attention + masked image by concat), class + low-res image, per-entry dropout, null conditions
from spatial inputs, and negative prompts as the null condition of classifier-free guidance."""
from __future__ import annotations

import pytest
import torch

from ldm.models.conditioning import concat_inputs, join_slot, masked_image
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.modules.conditioners import ConditionerStack
from ldm.util import ConfigError

FIRST_STAGE = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
    "embed_dim": 3, "lossconfig": {"target": "torch.nn.Identity"},
    "ddconfig": {"double_z": True, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
TEXT = {"input_key": "caption", "ucg_rate": 0.5, "target": "ldm.modules.conditioners.BERTEmbedder",
        "params": {"n_embed": 32, "n_layer": 1, "heads": 2, "dim_head": 16, "vocab_size": 49408,
                   "tokenizer": "open_clip", "max_seq_len": 8}}
MASKED = {"input_key": "masked_image", "target": "__is_first_stage__"}
MASK = {"input_key": "inpaint_mask", "target": "ldm.modules.conditioners.SpatialRescaler",
        "params": {"n_stages": 2, "multiplier": 0.5, "method": "area", "in_channels": 1}}
CLASS = {"input_key": "class_label", "ucg_rate": 0.5, "target": "ldm.modules.conditioners.ClassEmbedder",
         "params": {"n_classes": 12, "add_null_class": True, "embed_dim": 32, "output_key": "vector"}}
LOWRES = {"input_key": "LR_image", "target": "ldm.modules.conditioners.SpatialRescaler",
          "params": {"n_stages": 0, "in_channels": 3}}


def build(entries, conditioning_key, in_channels, **unet):
    torch.manual_seed(0)
    unet_params = {"image_size": 4, "in_channels": in_channels, "out_channels": 3, "model_channels": 32,
                   "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "num_head_channels": 32,
                   **unet}
    model = LatentDiffusion(
        first_stage_config=FIRST_STAGE, timesteps=20, image_size=4, channels=3, conditioning_key=conditioning_key,
        cond_stage_config={"target": "ldm.modules.conditioners.stack.ConditionerStack",
                           "params": {"conditioners": entries}},
        unet_config={"target": "ldm.modules.unet.UNetModel", "params": unet_params}, use_ema=False)
    with torch.no_grad():  # the UNet's zero-initialised output layers would hide every condition
        for param in model.model.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return model.eval()


def batch(n=4):
    from ldm.data.shapes_tasks import ShapesTasksTrain

    data = ShapesTasksTrain(size=16, length=n, lowres_size=4)
    items = [data[i] for i in range(n)]
    out = {k: torch.stack([s[k] for s in items]) for k in ("image", "LR_image", "inpaint_mask", "masked_image")}
    out["caption"] = [s["caption"] for s in items]
    out["class_label"] = torch.tensor([s["class_label"] for s in items])
    return out


@pytest.fixture(scope="module")
def hybrid():
    return build([TEXT, MASKED, MASK], "hybrid", 3 + 3 + 1, use_spatial_transformer=True, context_dim=32,
                 attention_resolutions=[1], transformer_depth=1)


def test_hybrid_condition_dict_and_training_step(hybrid):
    b = batch()
    cond = hybrid.condition_from_batch(b, drop=False)
    assert set(cond) == {"crossattn", "concat"}
    assert cond["crossattn"].shape[:1] == (4,) and cond["crossattn"].shape[-1] == 32
    assert cond["concat"].shape == (4, 4, 4, 4)  # E(masked image) 3 channels + mask 1
    latent = hybrid.encode_to_latent(b["masked_image"], sample=False)
    assert torch.allclose(cond["concat"][:, :3], latent)  # the first stage, with the model's scale factor
    assert torch.allclose(cond["concat"][:, 3:], torch.nn.functional.avg_pool2d(b["inpaint_mask"], 4))
    hybrid.train()
    loss, _ = hybrid.shared_step(b)
    hybrid.eval()
    loss.backward()
    assert torch.isfinite(loss) and not any(p.grad is not None for p in hybrid.cond_stage_model.parameters())


def test_hybrid_null_keeps_the_spatial_inputs_and_nulls_the_text(hybrid):
    b = batch()
    raw = hybrid.raw_condition(b)
    cond = hybrid.condition_from_batch(b, drop=False)
    null = hybrid.null_conditioning(4, raw=raw)
    assert torch.equal(null["concat"], cond["concat"])  # ucg_rate 0: the masked image stays in both CFG branches
    text = hybrid.cond_stage_model.embedders[0]
    assert torch.allclose(null["crossattn"], text.null_condition(raw["caption"]))
    with pytest.raises(ValueError, match="raw inputs"):
        hybrid.null_conditioning(4)


def test_hybrid_samples_with_guidance_and_logs_images(hybrid):
    b = batch(2)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    plain = hybrid.sample(b, steps=2, x_T=x_T)
    guided = hybrid.sample(b, steps=2, x_T=x_T, guidance_scale=3.0)
    assert plain.shape == (2, 3, 16, 16) and not torch.allclose(plain, guided)
    logged = hybrid.log_images(b, N=2, ddim_steps=2, guidance_scale=2.0)
    assert {"samples", "samples_cfg_scale_2.00", "conditioning_masked_image",
            "conditioning_inpaint_mask"} <= set(logged)


def test_negative_prompt_is_cfg_with_that_condition_as_the_null(hybrid):
    b = batch(2)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    negative = ["a green triangle", "a blue square"]
    guided = hybrid.sample(b, steps=2, x_T=x_T, guidance_scale=3.0)
    with_negative = hybrid.sample(b, steps=2, x_T=x_T, guidance_scale=3.0, negative=negative)
    assert not torch.allclose(guided, with_negative)
    raw = hybrid.raw_condition(b)
    cond = hybrid.condition_from_batch(b, drop=False)
    null = {"crossattn": hybrid.cond_stage_model.embedders[0].encode(negative), "concat": cond["concat"]}
    explicit = hybrid.sample(None, conditioning=cond, null_conditioning=null, steps=2, x_T=x_T, guidance_scale=3.0)
    assert torch.allclose(with_negative, explicit, atol=1e-6)
    assert torch.allclose(hybrid.null_conditioning(2, raw=raw, negative={"caption": negative})["crossattn"],
                          null["crossattn"])


def test_class_plus_lowres_and_per_entry_dropout():
    model = build([CLASS, LOWRES], "concat", 3 + 3, num_classes="sequential", adm_in_channels=32)
    b = batch(4)
    cond = model.condition_from_batch(b, drop=False)
    assert set(cond) == {"vector", "concat"} and cond["vector"].shape == (4, 32)
    assert torch.equal(cond["concat"], b["LR_image"])
    stack = model.cond_stage_model
    assert stack.ucg_rates == [0.5, 0.0] and stack.null_modes == ["learned", "keep"]
    # per entry: dropping the class rows leaves the low-res rows alone
    masks = [torch.tensor([True, False, True, False]), torch.zeros(4, dtype=torch.bool)]
    dropped = stack.encode(model.raw_condition(b), drop_mask=masks)
    null_class = stack.embedders[0].null_condition(4)
    assert torch.equal(dropped["vector"][[0, 2]], null_class[[0, 2]])
    assert torch.equal(dropped["vector"][[1, 3]], cond["vector"][[1, 3]])
    assert torch.equal(dropped["concat"], cond["concat"])
    # training draws one independent Bernoulli(ucg_rate) mask per entry
    torch.manual_seed(0)
    drawn = stack.sample_drop_masks(20_000)
    assert abs(drawn[0].float().mean() - 0.5) < 0.02 and not drawn[1].any()
    both = ConditionerStack([CLASS, {**LOWRES, "ucg_rate": 0.5}])
    torch.manual_seed(0)
    a, c = both.sample_drop_masks(20_000)
    assert abs((a & c).float().mean() - 0.25) < 0.02  # independent, not one shared mask
    model.train()
    torch.manual_seed(3)
    trained = model.condition_from_batch(b)
    model.eval()
    rows = (trained["vector"] == null_class).all(dim=1)
    assert torch.equal(trained["concat"], cond["concat"])  # ucg_rate 0 entry never dropped
    assert torch.equal(trained["vector"][~rows], cond["vector"][~rows])


def test_stack_config_errors():
    with pytest.raises(ConfigError, match="input_key"):
        ConditionerStack([{"target": "torch.nn.Identity"}])
    with pytest.raises(ConfigError, match="output_key"):
        ConditionerStack([{"input_key": "x", "target": "torch.nn.Identity"}])
    with pytest.raises(ConfigError, match="ucg_rate"):
        ConditionerStack([{**LOWRES, "ucg_rate": 2.0}])
    with pytest.raises(ConfigError, match="null"):
        ConditionerStack([{**LOWRES, "null": "nothing"}])
    with pytest.raises(ConfigError, match="at least one"):
        ConditionerStack([])
    stack = ConditionerStack([{"input_key": "x", "target": "torch.nn.Identity", "output_key": "concat"}])
    with pytest.raises(KeyError, match="missing"):
        stack.encode({"y": torch.zeros(1, 3, 4, 4)})
    with pytest.raises(RuntimeError, match="first stage"):
        ConditionerStack([MASKED]).encode({"masked_image": torch.zeros(1, 3, 16, 16)})


def test_concat_helpers():
    a, m = torch.randn(2, 3, 4, 4), torch.ones(2, 1, 16, 16)
    joined = concat_inputs([a, m])
    assert joined.shape == (2, 4, 4, 4)
    assert torch.equal(joined[:, :3], a) and torch.equal(joined[:, 3:], m[:, :, :4, :4])
    assert concat_inputs([m, a], size=(4, 4)).shape == (2, 4, 4, 4)  # SD 2's order: mask first
    assert join_slot([torch.zeros(2, 5, 8), torch.ones(2, 5, 4)], "crossattn").shape == (2, 5, 12)
    with pytest.raises(ValueError, match="crossattn"):
        join_slot([torch.zeros(2, 5, 8), torch.ones(2, 6, 4)], "crossattn")
    image = torch.full((1, 3, 2, 2), 0.5)
    hole = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(masked_image(image, hole)[0, :, 0, 0], torch.zeros(3))
    assert torch.equal(masked_image(image, hole)[0, :, 1, 1], torch.full((3,), 0.5))
