"""Stage 2 loads its autoencoder from a checkpoint or a stage-1 run directory, after an architecture check."""
import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL, VQModelInterface
from ldm.models.first_stage_checkpoint import architecture, describe, resolve_checkpoint
from ldm.util import ConfigError, instantiate_from_config

DD = {"double_z": True, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
      "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
IDENTITY = {"target": "torch.nn.Identity"}


def kl(**ddconfig):
    return AutoencoderKL(ddconfig={**DD, **ddconfig}, lossconfig=IDENTITY, embed_dim=3)


def vq(**ddconfig):
    return VQModelInterface(ddconfig={**DD, "double_z": False, **ddconfig}, lossconfig=IDENTITY, embed_dim=3,
                            n_embed=16)


def save_run(tmp_path, model):
    """A stage-1 run directory as main.py leaves it: <run>/checkpoints/last.ckpt (a Lightning dict)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 3}, ckpt)
    return ckpt.parent.parent


def test_run_directory_loads_last_ckpt(tmp_path):
    torch.manual_seed(0)
    trained = kl()
    run = save_run(tmp_path, trained)
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    torch.manual_seed(1)
    fresh = AutoencoderKL(ddconfig=DD, lossconfig=IDENTITY, embed_dim=3, ckpt_path=str(run))
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_ldm_checkpoint_gives_its_first_stage(tmp_path):
    trained = kl()
    ckpt = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in trained.state_dict().items()}
                | {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    fresh = AutoencoderKL(ddconfig=DD, lossconfig=IDENTITY, embed_dim=3, ckpt_path=str(ckpt))
    assert torch.equal(fresh.encoder.conv_in.weight, trained.encoder.conv_in.weight)


def test_describe_names_kind_factor_and_sizes():
    assert describe(architecture(kl().state_dict())) == (
        "a KL f4 autoencoder (ch 32, ch_mult [1, 2, 2], num_res_blocks 1, embed_dim 3, z_channels 3)")
    assert describe(architecture(vq(ch_mult=[1, 2, 2, 4]).state_dict())) == (
        "a VQ f8 autoencoder (ch 32, ch_mult [1, 2, 2, 4], num_res_blocks 1, embed_dim 3, n_embed 16, z_channels 3)")


@pytest.mark.parametrize("stage2, found, wanted", [
    (lambda: {"target": "ldm.models.autoencoder.VQModelInterface",
              "params": {"ddconfig": {**DD, "double_z": False}, "lossconfig": IDENTITY, "embed_dim": 3,
                         "n_embed": 16}},
     "a KL f4 autoencoder", "is a VQ f4 autoencoder"),
    (lambda: {"target": "ldm.models.autoencoder.AutoencoderKL",
              "params": {"ddconfig": {**DD, "ch_mult": [1, 2]}, "lossconfig": IDENTITY, "embed_dim": 3}},
     "a KL f4 autoencoder", "is a KL f2 autoencoder"),
])
def test_mismatch_is_one_line_naming_both(tmp_path, stage2, found, wanted):
    run = save_run(tmp_path, kl())
    config = stage2()
    config["params"]["ckpt_path"] = str(run)
    with pytest.raises(ConfigError) as err:
        instantiate_from_config(config, node="first_stage_config")
    message = str(err.value)
    assert "\n" not in message
    assert str(run / "checkpoints" / "last.ckpt") in message
    assert f"holds {found}" in message and wanted in message


def test_missing_checkpoint_and_empty_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="without checkpoints/last.ckpt"):
        resolve_checkpoint(tmp_path / "run")


def test_loss_and_ignored_keys_are_not_compared(tmp_path):
    state = kl().state_dict()
    state["loss.discriminator.weight"] = torch.zeros(2)           # a stage-1 training loss: not architecture
    del state["encoder.conv_in.bias"]
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": state}, ckpt)
    AutoencoderKL(ddconfig=DD, lossconfig=IDENTITY, embed_dim=3, ckpt_path=str(ckpt),
                  ignore_keys=["encoder.conv_in.bias"])
    with pytest.raises(ConfigError, match="encoder.conv_in.bias absent in the checkpoint"):
        AutoencoderKL(ddconfig=DD, lossconfig=IDENTITY, embed_dim=3, ckpt_path=str(ckpt))


def test_main_py_stage2_with_the_wrong_autoencoder_is_one_line(tmp_path, capsys):
    """tests/fixtures/e2e_tiny_ldm.yaml has a KL-f2 first stage (ch 32, ch_mult [1, 2]); give it a VQ run."""
    from pathlib import Path

    from ldm.cli.train import main

    fixture = Path(__file__).resolve().parent / "fixtures" / "e2e_tiny_ldm.yaml"
    run = save_run(tmp_path, vq(ch_mult=[1, 2]))
    with pytest.raises(SystemExit) as err:
        main(["-b", str(fixture), "-t", "-l", str(tmp_path / "logs"),
              f"model.params.first_stage_config.params.ckpt_path={run}"])
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("main.py: error: first_stage_config: ckpt_path=")
    assert "holds a VQ f2 autoencoder" in lines[0] and "(AutoencoderKL) is a KL f2 autoencoder" in lines[0]
