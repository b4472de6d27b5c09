"""UNetModel: original key layout (from dumped key lists), shapes, conditioning paths, checkpointing."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ldm.modules.unet import UNetModel
from ldm.modules.unet_layers import timestep_embedding
from ldm.util import instantiate_from_config

FIXTURES = Path(__file__).parent / "fixtures"

# unet_config params copied from the original configs
SD_V1_PARAMS = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                    attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
                    use_spatial_transformer=True, transformer_depth=1, context_dim=768, use_checkpoint=True,
                    legacy=False)
CELEBAHQ_PARAMS = dict(image_size=64, in_channels=3, out_channels=3, model_channels=224,
                       attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 2, 3, 4],
                       num_head_channels=32)
CIN256_V2_PARAMS = dict(image_size=64, in_channels=3, out_channels=3, model_channels=192,
                        attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1,
                        use_spatial_transformer=True, transformer_depth=1, context_dim=512)


def read_key_dump(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (FIXTURES / f"unet_{name}_keys.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def build_on_meta(params: dict) -> UNetModel:
    with torch.device("meta"):
        return UNetModel(**params)


@pytest.mark.parametrize("name,params", [("sd-v1-inference", SD_V1_PARAMS),
                                         ("celebahq-ldm-vq-4", CELEBAHQ_PARAMS)])
def test_keys_and_shapes_match_original_dump(name, params):
    expected = read_key_dump(name)
    model = build_on_meta(params)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) - set(expected) == set()
    assert set(expected) - set(ours) == set()
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    # a state dict with exactly the dumped keys/shapes loads strictly (meta tensors: no memory)
    dumped = {k: torch.zeros(s, device="meta") for k, s in expected.items()}
    report = model.load_state_dict(dumped, strict=True, assign=True)
    assert not report.missing_keys and not report.unexpected_keys


def test_dump_with_wrong_shape_is_rejected():
    expected = read_key_dump("celebahq-ldm-vq-4")
    expected["out.2.weight"] = (4, 224, 3, 3)
    model = build_on_meta(CELEBAHQ_PARAMS)
    with pytest.raises(RuntimeError, match="out.2.weight"):
        model.load_state_dict({k: torch.zeros(s, device="meta") for k, s in expected.items()}, strict=True)


def test_cin256_v2_structure_through_legacy_target():
    config = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": CIN256_V2_PARAMS}
    with torch.device("meta"):
        model = instantiate_from_config(config)
    sd = model.state_dict()
    # cross-attention keys take the ClassEmbedder width (512); heads=1 -> inner width = channels
    assert sd["input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (384, 512)
    assert not any(k.startswith("input_blocks.1.1") for k in sd)  # no attention at full resolution
    assert sd["middle_block.1.transformer_blocks.0.attn1.to_q.weight"].shape == (960, 960)
    assert sd["out.2.weight"].shape == (3, 192, 3, 3)
    assert "label_emb.weight" not in sd


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 3.0, 999.0])
    emb = timestep_embedding(t, 6)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = [[math.cos(tt * f) for f in freqs] + [math.sin(tt * f) for f in freqs] for tt in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert timestep_embedding(t, 7).shape == (3, 7)
    assert torch.all(timestep_embedding(t, 7)[:, -1] == 0)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised output layers make every output 0; give all weights random values."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def tiny_unet(**overrides) -> UNetModel:
    params = dict(image_size=8, in_channels=3, out_channels=5, model_channels=32, num_res_blocks=1,
                  attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                  context_dim=16)
    params.update(overrides)
    return randomize(UNetModel(**params))


def test_output_shape_and_context_changes_output():
    model = tiny_unet().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    c1, c2 = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    out1 = model(x, t, context=c1)
    assert out1.shape == (2, 5, 8, 8)
    out2 = model(x, t, context=c2)
    assert (out1 - out2).abs().max() > 1e-3
    # timestep changes the output, scalar timesteps broadcast
    assert (model(x, torch.tensor([5, 5]), context=c1) - model(x, 5, context=c1)).abs().max() == 0
    assert (model(x, 5, context=c1) - out1).abs().max() > 1e-3


def test_class_labels_change_output():
    model = tiny_unet(use_spatial_transformer=False, context_dim=None, num_classes=4,
                      use_scale_shift_norm=True, resblock_updown=True).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    out_a = model(x, t, y=torch.tensor([0, 1]))
    out_b = model(x, t, y=torch.tensor([2, 1]))
    assert out_a.shape == (2, 5, 8, 8)
    assert (out_a[0] - out_b[0]).abs().max() > 1e-3
    torch.testing.assert_close(out_a[1], out_b[1])  # the unchanged row is unaffected
    with pytest.raises(ValueError, match="num_classes"):
        model(x, t)


def test_vector_conditioning_sequential_label_emb():
    model = tiny_unet(use_spatial_transformer=False, context_dim=None, num_classes="sequential",
                      adm_in_channels=6).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    assert "label_emb.0.0.weight" in model.state_dict()
    out1 = model(x, t, y=torch.randn(2, 6))
    out2 = model(x, t, y=torch.randn(2, 6))
    assert (out1 - out2).abs().max() > 1e-3


@pytest.mark.parametrize("spatial", [True, False])
def test_checkpointing_gives_identical_outputs_and_gradients(spatial):
    extra = {} if spatial else dict(use_spatial_transformer=False, context_dim=None)
    ref = tiny_unet(dropout=0.0, **extra)
    ckpt = tiny_unet(use_checkpoint=True, **extra)
    ckpt.load_state_dict(ref.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([4, 9])
    kwargs = {"context": torch.randn(2, 3, 16)} if spatial else {}
    outs, grads = [], []
    for model in (ref, ckpt):
        model.train()
        model.zero_grad()
        out = model(x, t, **kwargs)
        (out ** 2).mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for g_ref, g_ckpt in zip(*grads):
        torch.testing.assert_close(g_ref, g_ckpt, rtol=1e-6, atol=1e-7)


def test_bad_inputs_raise_clear_errors():
    model = tiny_unet().eval()
    with pytest.raises(ValueError, match="context"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="in_channels|\\[B, 3"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1]), context=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 7, 7), torch.tensor([1]), context=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="width"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]), context=torch.randn(1, 2, 15))
    with pytest.raises(ValueError, match="context_dim"):
        UNetModel(8, 3, 32, 3, 1, [2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True)
    with pytest.raises(ValueError, match="divisible by 32"):
        UNetModel(8, 3, 20, 3, 1, [2], channel_mult=[1, 2], num_heads=2)


def test_checkpointing_keeps_autocast_in_recompute():
    ref = tiny_unet()
    ckpt = tiny_unet(use_checkpoint=True)
    ckpt.load_state_dict(ref.state_dict())
    x, t, ctx = torch.randn(1, 3, 8, 8), torch.tensor([7]), torch.randn(1, 2, 16)
    grads = []
    for model in (ref, ckpt):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, context=ctx)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        grads.append(model.input_blocks[0][0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
