"""The one first-stage loader (``ldm.cli.first_stage``) the cache, evaluation and quick-start commands share,
and the one list of image extensions (``ldm.data.image_files``)."""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ldm.cli.first_stage import first_stage_node, load_first_stage
from ldm.data.image_files import WEBDATASET_IMAGE_KEYS, is_image_file, list_image_files
from ldm.models.autoencoder import AutoencoderKL

DDCONFIG = dict(double_z=True, z_channels=2, resolution=16, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)
AE_NODE = {"target": "ldm.models.autoencoder.AutoencoderKL",
           "params": {"embed_dim": 2, "ddconfig": DDCONFIG,
                      "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                                     "params": {"disc_start": 1}}}}
LDM_CONFIG = {"model": {"target": "ldm.models.latent_diffusion.LatentDiffusion",
                        "params": {"ckpt_path": None, "first_stage_config": AE_NODE}}}


@pytest.fixture()
def trained():
    torch.manual_seed(3)
    return AutoencoderKL(ddconfig=DDCONFIG, lossconfig=None, embed_dim=2).eval()


def _same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_node_of_an_autoencoder_and_of_a_latent_diffusion_config_drops_the_training_loss():
    for config in ({"model": AE_NODE}, AE_NODE, LDM_CONFIG):
        node, ldm_ckpt = first_stage_node(config)
        assert node["target"] == AE_NODE["target"] and ldm_ckpt is None
        assert node["params"]["lossconfig"] == {"target": "torch.nn.Identity"}
    assert AE_NODE["params"]["lossconfig"]["target"].endswith("LPIPSWithDiscriminator")  # the input is not changed
    with pytest.raises(ValueError, match="first_stage_config"):
        first_stage_node({"model": {"target": "x.LatentDiffusion", "params": {"first_stage_config": "nope"}}})
    with pytest.raises(ValueError, match="'target'"):
        first_stage_node({"data": {}})


def test_loads_autoencoder_and_latent_diffusion_checkpoints_frozen(tmp_path, trained):
    ae_ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": trained.state_dict()}, ae_ckpt)
    ldm_ckpt = tmp_path / "ldm.safetensors"
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in trained.state_dict().items()}
              | {"model.diffusion_model.dummy": torch.zeros(1)}, str(ldm_ckpt))
    config = tmp_path / "ldm.yaml"
    config.write_text(yaml.safe_dump(LDM_CONFIG))
    for ckpt in (ae_ckpt, ldm_ckpt):
        model, node, used = load_first_stage(config, ckpt)
        assert isinstance(model, AutoencoderKL) and isinstance(model.loss, torch.nn.Identity)
        assert used == str(ckpt) and not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert _same_weights(model, trained)
    run = tmp_path / "run" / "checkpoints"  # a stage-1 run directory
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(ae_ckpt.read_bytes())
    model, _, used = load_first_stage(LDM_CONFIG, tmp_path / "run", source="in memory")
    assert used == str(run / "last.ckpt") and _same_weights(model, trained)


def test_wrong_checkpoints_and_random_weights_are_reported(tmp_path, trained, capsys):
    partial = tmp_path / "partial.ckpt"
    torch.save({"state_dict": {k: v for k, v in trained.state_dict().items() if not k.startswith("decoder.")}},
               partial)
    with pytest.raises(ValueError, match="decoder"):
        load_first_stage(LDM_CONFIG, partial)
    model, _, used = load_first_stage(LDM_CONFIG, source="ldm.yaml")
    assert used is None and "random weights" in capsys.readouterr().err and not model.training


def test_quickstart_ae_ckpt_loads_through_the_shared_loader(tmp_path):
    from ldm.cli.quickstart import AUTOENCODER_CONFIG, load_autoencoder

    torch.manual_seed(0)
    model, node, _ = load_first_stage(AUTOENCODER_CONFIG)  # random weights, the quick start's architecture
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    loaded = load_autoencoder(ckpt)
    assert type(loaded) is type(model) and _same_weights(loaded, model)
    with pytest.raises(SystemExit, match="does not exist"):
        load_autoencoder(tmp_path / "missing.ckpt")


def test_one_list_of_image_extensions(tmp_path):
    for name in ("a.png", "b.JPG", "c.webp", "d.tiff", "e.gif"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / name).write_bytes(b"")
    (tmp_path / "f.npy").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.png", "b.JPG", "c.webp", "d.tiff", "e.gif"]
    assert len(list_image_files(tmp_path, arrays=True)) == 6
    assert is_image_file("x.npy") and not is_image_file("x.npy", arrays=False) and not is_image_file("x.txt")
    assert WEBDATASET_IMAGE_KEYS[:3] == ("jpg", "jpeg", "png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_image_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        list_image_files(tmp_path / "missing")
