"""Issue 14 items 4 and 5: misspelled or mistyped config entries are errors that name the key, the
file (or the command line) and the closest valid name; repeated ``-b`` appends."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import write_yaml  # noqa: E402
from ldm.cli.args import parse_args  # noqa: E402
from ldm.cli.config_validation import init_parameters, validate_config  # noqa: E402
from ldm.cli.train import main, run  # noqa: E402
from ldm.util import ConfigError  # noqa: E402

TINY = Path(__file__).resolve().parent / "fixtures" / "e2e_tiny_ldm.yaml"


def _error(tmp_path, *argv) -> str:
    with pytest.raises(ConfigError) as err:
        run(["-b", str(TINY), *argv, "-l", str(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())  # nothing was written
    return str(err.value)


@pytest.mark.parametrize("override, key, closest", [
    ("model.parms.timesteps=10", "model.parms", "'params'"),
    ("model.base_learnig_rate=1.0", "model.base_learnig_rate", "'base_learning_rate'"),
    ("lightnin.trainer.max_steps=5", "lightnin", "'lightning'"),
    ("model.params.timestep=10", "model.params.timestep", "'timesteps'"),
    ("model.params.unet_config.params.model_chanels=8", "model.params.unet_config.params.model_chanels",
     "'model_channels'"),
    ("data.params.batchsize=2", "data.params.batchsize", "'batch_size'"),
    ("lightning.trainer.max_step=5", "lightning.trainer.max_step", "'max_steps'"),
    ("lightning.trainr.max_steps=5", "lightning.trainr", "'trainer'"),
])
def test_misspelled_keys_name_key_source_and_closest_name(tmp_path, override, key, closest):
    message = _error(tmp_path, override)
    assert message.startswith(key + " (in the command line)") and closest in message


def test_a_misspelled_section_in_a_second_file_names_that_file(tmp_path):
    second = write_yaml(tmp_path / "second.yaml", {"modle": {"params": {"timesteps": 10}}})
    message = _error(tmp_path, "-b", str(second))
    assert f"modle (in {second})" in message and "'model'" in message


@pytest.mark.parametrize("where, yaml_obj, override, expected", [
    ("file", {"data": {"params": {"batch_size": "four"}}}, None, "data.params.batch_size = 'four' (in {file})"),
    ("cli", None, "lightning.trainer.max_steps=ten", "lightning.trainer.max_steps = 'ten' (in the command line)"),
    ("file", {"model": {"params": {"unet_config": {"params": {"model_channels": "32"}}}}}, None,
     "model.params.unet_config.params.model_channels = '32' (in {file}): expected int"),
])
def test_wrong_types_name_key_and_file(tmp_path, where, yaml_obj, override, expected):
    argv = []
    file = None
    if yaml_obj is not None:
        file = write_yaml(tmp_path / "bad.yaml", yaml_obj)
        argv += ["-b", str(file)]
    if override:
        argv.append(override)
    assert expected.format(file=file) in _error(tmp_path, *argv)


def test_repeated_base_flags_append(tmp_path):
    a, b = write_yaml(tmp_path / "a.yaml", {"x": 1}), write_yaml(tmp_path / "b.yaml", {"y": 2})
    opt, _ = parse_args(["-b", str(a), "-b", str(b), "k=v"])
    assert opt.base == [str(a), str(b)]
    override = write_yaml(tmp_path / "steps.yaml", {"model": {"params": {"timesteps": 7}}})
    result = main(["-b", str(TINY), "-b", str(override), "-l", str(tmp_path / "logs"), "--no-test"])
    assert result.model.num_timesteps == 7  # the second file was merged over the first, not instead of it


def test_escape_hatches_for_deliberate_extras(tmp_path, capsys):
    extra = write_yaml(tmp_path / "extra.yaml", {"extra": {"anything": [1, 2]}})
    main(["-b", str(TINY), "-b", str(extra), "-l", str(tmp_path / "a"), "--no-test"])
    result = main(["-b", str(TINY), "-l", str(tmp_path / "b"), "--no-test", "--allow-unknown-keys", "model.note=hi"])
    assert result.model is not None
    assert "note: model.note (in the command line): unknown key of the model section" in capsys.readouterr().out


def test_schema_follows_the_class_signature_so_new_parameters_count_at_once():
    from ldm.models.latent_diffusion import LatentDiffusion

    accepted = init_parameters(LatentDiffusion)
    assert {"first_stage_config", "scale_by_std_batches", "timesteps", "unet_config", "skip_nonfinite"} <= set(accepted)
    # every shipped config passes
    configs = [p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")]
    assert configs
    for path in configs:
        config = OmegaConf.load(path)
        if "model" in config:
            validate_config(config, [str(path)])
