"""``a.b=value`` overrides: format templates stay strings, flow mappings stay mappings."""
from ldm.cli.config import merge_configs


def _merged(tmp_path, *dotlist):
    base = tmp_path / "base.yaml"
    base.write_text("a: 1\n")
    return merge_configs([base], dotlist)


def test_checkpoint_filename_templates_stay_strings(tmp_path):
    config = _merged(tmp_path, "lightning.modelcheckpoint.params.filename={step:06}", "x.name={epoch}-{step}")
    assert config.lightning.modelcheckpoint.params.filename == "{step:06}"
    assert config.x.name == "{epoch}-{step}"


def test_mappings_lists_and_quoted_values_parse_as_yaml(tmp_path):
    config = _merged(tmp_path, "m={k: 1}", "l=[1, 2]", "q='{kept}'", "n=3")
    assert config.m == {"k": 1}
    assert list(config.l) == [1, 2]
    assert config.q == "{kept}"
    assert config.n == 3 and config.a == 1
