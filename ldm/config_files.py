"""YAML config files -> one merged :class:`omegaconf.DictConfig` (files left to right, then ``KEY=VALUE``
overrides). Used by training (:mod:`ldm.cli.config`), the sampling command and :mod:`ldm.model_loading`."""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldm.util import ConfigError


def load_config_file(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    if not isinstance(config, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return config


# ``{step:06}``-style format templates (checkpoint file names): YAML would read them as a mapping.
_FORMAT_TEMPLATE = re.compile(r"^[^=]*=(?=.*\{\w+(?::[^\s}]*)?\})(?!.*:\s)(.*)$")


def quote_format_templates(item: str) -> str:
    """``key={epoch}-{step:06}`` -> ``key='{epoch}-{step:06}'`` so the value stays a string."""
    match = _FORMAT_TEMPLATE.match(item)
    if match is None or match.group(1).startswith(("'", '"')):
        return item
    key = item[: match.start(1) - 1]
    return f"{key}='{match.group(1)}'"


def merge_configs(paths: Iterable[str | Path], dotlist: Iterable[str] = ()) -> DictConfig:
    """Merge config files left to right, then the ``a.b.c=value`` overrides."""
    configs = [load_config_file(path) for path in paths]
    try:
        overrides = OmegaConf.from_dotlist([quote_format_templates(item) for item in dotlist])
    except Exception as err:
        raise ConfigError(f"bad KEY=VALUE override in {list(dotlist)}: {err}") from err
    return OmegaConf.merge(*configs, overrides)
