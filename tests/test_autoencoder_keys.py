"""The original first-stage configs build modules with the original state-dict keys and shapes."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import LEGACY_TARGETS, instantiate_from_config

FIXTURES = Path(__file__).parent / "fixtures"
ORIGINAL = sorted(FIXTURES.glob("ae_original_*.yaml"))
EXPECTED = {  # (class, z-channels of the latent, codebook size)
    "kl_f4": ("AutoencoderKL", 3, None), "kl_f8": ("AutoencoderKL", 4, None),
    "kl_f16": ("AutoencoderKL", 16, None), "kl_f32": ("AutoencoderKL", 64, None),
    "vq_f4": ("VQModel", 3, 8192), "vq_f4_noattn": ("VQModel", 3, 8192), "vq_f8": ("VQModel", 4, 16384),
    "vq_f8_n256": ("VQModel", 4, 256), "vq_f16": ("VQModel", 8, 16384),
}


def read_dump(name: str) -> dict:
    rows = (line.rstrip("\n").split("\t") for line in (FIXTURES / f"ae_keys_{name}.tsv").read_text().splitlines())
    return {key: tuple(int(d) for d in shape.strip("()").split(",") if d.strip()) for key, shape in rows}


def build_on_meta(name: str):
    config = OmegaConf.load(FIXTURES / f"ae_original_{name}.yaml").model
    # offline: the documented switch instead of downloading torchvision's VGG-16 (keys are unchanged)
    config.params.lossconfig.params.perceptual_backbone = "random"
    with torch.device("meta"):
        return instantiate_from_config(config)


def test_all_original_configs_are_fixtures():
    assert {p.stem.removeprefix("ae_original_") for p in ORIGINAL} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_original_config_instantiates(name):
    model = build_on_meta(name)
    cls, z_channels, n_embed = EXPECTED[name]
    assert type(model).__name__ == cls
    assert model.post_quant_conv.weight.shape[1] == z_channels
    if n_embed is not None:
        assert tuple(model.quantize.embedding.weight.shape) == (n_embed, z_channels)
    assert getattr(model, "monitor", None) == (None if name == "vq_f16" else "val/rec_loss")


@pytest.mark.parametrize("name", ["kl_f8", "vq_f4"])
def test_state_dict_matches_original_dump_and_loads_strictly(name):
    model = build_on_meta(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dump = read_dump(name)
    assert sorted(set(dump) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(dump)) == [], "keys the original does not have"
    assert {k: ours[k] for k in dump} == dump
    zeros = {k: torch.zeros(shape) for k, shape in dump.items()}
    result = model.load_state_dict(zeros, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    weight = model.encoder.conv_in.weight
    assert weight.device.type == "cpu" and float(weight.detach().abs().sum()) == 0.0


def test_loading_a_dump_with_a_wrong_shape_fails():
    model = build_on_meta("vq_f4")
    bad = {k: torch.zeros(shape) for k, shape in read_dump("vq_f4").items()}
    bad["quantize.embedding.weight"] = torch.zeros(16, 3)
    with pytest.raises(RuntimeError, match="quantize.embedding.weight"):
        model.load_state_dict(bad, strict=True, assign=True)


def test_legacy_loss_targets_resolve():
    from ldm.modules.losses import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator
    from ldm.util import resolve_target

    assert resolve_target("taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator") is VQLPIPSWithDiscriminator
    assert resolve_target("ldm.modules.losses.contperceptual.LPIPSWithDiscriminator") is LPIPSWithDiscriminator
    assert resolve_target("ldm.modules.losses.LPIPSWithDiscriminator") is LPIPSWithDiscriminator
    assert "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator" in LEGACY_TARGETS


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "autoencoder").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_autoencoder_configs_build(path):
    config = OmegaConf.load(path).model
    config.params.lossconfig.params.perceptual_backbone = "random"
    with torch.device("meta"):
        model = instantiate_from_config(config)
    factor = 2 ** (len(config.params.ddconfig.ch_mult) - 1)
    assert f"f{factor}" in path.stem
    assert model.learning_rate == pytest.approx(4.5e-6)
