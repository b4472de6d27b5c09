"""Issue 14 item 9: bad input ends as one ``error:`` line with exit code 2 and a remedy, before any
training or checkpoint write (the read-only ``-l`` case is in test_reliability_rundir.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import tiny_config, write_yaml  # noqa: E402
from ldm.cli.train import main  # noqa: E402

TINY = Path(__file__).resolve().parent / "fixtures" / "e2e_tiny_ldm.yaml"


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Seed set" not in line]
    assert len(err) == 1 and "error:" in err[0], err
    return err[0]


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return _one_error_line(capsys)


def _with_train(tmp_path: Path, node: dict) -> str:
    config = OmegaConf.load(TINY)
    config.data.params.train = node
    return str(write_yaml(tmp_path / "with_train.yaml", OmegaConf.to_container(config)))


def _no_checkpoints(logs: Path) -> None:
    assert not list(logs.rglob("*.ckpt")) if logs.exists() else True


def test_missing_dataset_files(tmp_path, capsys):
    missing = {"target": "ldm.data.faces.CelebAHQTrain",
               "params": {"size": 16, "data_root": str(tmp_path / "celeba"), "file_list": str(tmp_path / "list.txt")}}
    line = _fails(["-b", _with_train(tmp_path, missing), "-t", "-l", str(tmp_path / "logs")], capsys)
    assert "data.params.train" in line and "list.txt" in line
    _no_checkpoints(tmp_path / "logs")


def test_missing_lpips_weights(tmp_path, capsys):
    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "demo" / "autoencoder_kl_f4.yaml")
    loss = config.model.params.lossconfig.params
    loss.perceptual_weight = 1.0
    loss.perceptual_backbone = "vgg"
    loss.perceptual_weights_path = str(tmp_path / "vgg16.pth")
    path = write_yaml(tmp_path / "ae.yaml", OmegaConf.to_container(config))
    line = _fails(["-b", str(path), "-t", "-l", str(tmp_path / "logs")], capsys)
    assert "vgg16.pth" in line
    _no_checkpoints(tmp_path / "logs")


class _Pickled:  # any non-allow-listed global makes a checkpoint "unsafe"
    pass


@pytest.mark.parametrize("command", ["evaluate", "cache_latents"])
def test_unsafe_checkpoint_refusal_in_evaluate_and_cache_latents(tmp_path, capsys, command):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Pickled()}, evil)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "autoencoder_kl_f4.yaml")
    if command == "evaluate":
        from ldm.cli.evaluate import main as cli

        argv = ["--autoencoder-config", config, "--autoencoder-ckpt", str(evil), "--reference-config", config,
                "--metrics", "psnr", "--num-samples", "2"]
    else:
        from ldm.cli.cache_latents import main as cli

        argv = ["--config", config, "--ckpt", str(evil), "--out", str(tmp_path / "cache")]
    assert cli(argv) == 2
    line = _one_error_line(capsys)
    assert "refused to load" in line and "evil.ckpt" in line


def test_autoencoder_run_given_to_sample(tmp_path, capsys):
    from ldm.cli.sample import main as sample
    from ldm.util import instantiate_from_config

    run = tmp_path / "run"
    ae_config = {"model": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 2, "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": dict(double_z=True, z_channels=2, resolution=16, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
                         num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)}}}
    write_yaml(run / "configs" / "2024-project.yaml", ae_config)
    model = instantiate_from_config(ae_config["model"])
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": model.state_dict()}, run / "checkpoints" / "last.ckpt")
    assert sample(["uncond", "--run", str(run), "--outdir", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "AutoencoderKL" in line and "not a diffusion model" in line and "evaluate" in line


def test_latent_cache_from_another_first_stage_is_refused_before_training(tmp_path, capsys):
    from ldm.data.latent_cache import encode_dataset
    from ldm.data.shapes import ShapesDataset
    from ldm.util import instantiate_from_config

    config = OmegaConf.load(TINY)
    torch.manual_seed(1)
    other_first_stage = instantiate_from_config(config.model.params.first_stage_config)
    encode_dataset(other_first_stage, ShapesDataset(size=16, length=4), tmp_path / "cache", flip="off", batch_size=4,
                   info={"command": ["python", "-m", "ldm.cli.cache_latents", "--config", "c.yaml", "--ckpt",
                                     "OLD.ckpt", "--out", "cache"]})
    cache = {"target": "ldm.data.latent_cache.LatentCacheDataset", "params": {"path": str(tmp_path / "cache")}}
    line = _fails(["-b", _with_train(tmp_path, cache), "-t", "-l", str(tmp_path / "logs")], capsys)
    assert "different first stage" in line and "OLD.ckpt" not in line and "--ckpt <this model's" in line
    _no_checkpoints(tmp_path / "logs")  # no emergency checkpoint: training never started


def test_val_check_interval_without_validation_is_dropped_with_a_note(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=2))
    result = main(["-b", str(config), "-t", "-l", str(tmp_path / "logs"), "--val_check_interval", "500"])
    assert result.trainer.global_step == 2
    assert "val_check_interval=500 ignored: there is no validation data" in capsys.readouterr().out


def test_learned_range_with_wrong_out_channels_fails_when_built():
    from ldm.util import ConfigError, instantiate_from_config

    config = OmegaConf.load(TINY)
    config.model.params.variance_type = "learned_range"
    with pytest.raises(ConfigError, match="out_channels=6"):
        instantiate_from_config(config.model)
    config.model.params.unet_config.params.out_channels = 6
    assert instantiate_from_config(config.model).variance_type == "learned_range"
