"""Gradient accumulation with manually optimised models (the GAN autoencoders) through the CLI."""
import types

import pytest

from ldm.cli.train import move_accumulation_into_manual_model
from ldm.util import ConfigError


def _model(automatic: bool, **attrs):
    return types.SimpleNamespace(automatic_optimization=automatic, **attrs)


def test_manual_model_takes_over_accumulation():
    model = _model(False, accumulate_grad_batches=1)
    kwargs = {"accumulate_grad_batches": 4, "max_steps": 10}
    move_accumulation_into_manual_model(model, kwargs)
    assert model.accumulate_grad_batches == 4
    assert "accumulate_grad_batches" not in kwargs  # Lightning 2 would refuse it
    assert kwargs["max_steps"] == 10


def test_automatic_model_keeps_trainer_accumulation():
    model = _model(True)
    kwargs = {"accumulate_grad_batches": 4}
    move_accumulation_into_manual_model(model, kwargs)
    assert kwargs == {"accumulate_grad_batches": 4}


def test_manual_model_without_accumulation_support_is_a_clear_error():
    with pytest.raises(ConfigError, match="accumulate_grad_batches=2"):
        move_accumulation_into_manual_model(_model(False), {"accumulate_grad_batches": 2})


def test_real_autoencoder_trains_with_trainer_level_accumulation(tmp_path):
    """`lightning.trainer.accumulate_grad_batches: 2` on a KL autoencoder config runs end to end."""
    from ldm.cli.train import run

    config = tmp_path / "ae.yaml"
    config.write_text("""
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    embed_dim: 3
    ddconfig: {double_z: true, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
    lossconfig:
      target: ldm.modules.losses.LPIPSWithDiscriminator
      params: {disc_start: 1000, perceptual_weight: 0.0, perceptual_backbone: random, kl_weight: 1.0e-6}
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 2
    num_workers: 0
    train: {target: ldm.data.shapes.ShapesTrain, params: {size: 16, length: 16}}
lightning:
  trainer: {accumulate_grad_batches: 2, max_steps: 4, accelerator: cpu, enable_progress_bar: false}
""")
    result = run(["-b", str(config), "-t", "--no-test", "-l", str(tmp_path / "logs")])
    assert result.model.accumulate_grad_batches == 2
    assert result.trainer.global_step > 0
