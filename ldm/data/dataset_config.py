"""Finding and building one dataset split from a config file.

A data config is one of: a training config's ``data:`` section (a ``DataModuleFromConfig`` node
whose ``params`` hold ``train`` / ``validation`` / ``test`` / ``predict`` datasets), such a node at
the root, or a single dataset ``target``/``params`` node (used for every split).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test", "predict")


def dataset_node(config: Any, split: str, source: str = "config") -> dict:
    """A copy of the dataset node for ``split`` in a data config (see the module docstring)."""
    node = config.get("data", config) if isinstance(config, Mapping) else None
    if not isinstance(node, Mapping):
        raise ValueError(f"{source}: expected a mapping with a dataset or a 'data' section")
    params = node.get("params") or {}
    splits = [k for k in SPLITS if isinstance(params.get(k), Mapping)]
    if splits:
        if split not in splits:
            raise ValueError(f"{source}: no '{split}' split in the data config; available splits: {', '.join(splits)}")
        return copy.deepcopy(dict(params[split]))
    if "target" in node:
        return copy.deepcopy(dict(node))
    raise ValueError(f"{source}: found neither a 'data' section with splits ({', '.join(SPLITS)}) nor a dataset "
                     "'target'; pass a data config")


def build_dataset(config_path: str | Path, split: str) -> Any:
    """Load the YAML at ``config_path`` and instantiate its ``split`` dataset."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset config not found: {path}")
    node = dataset_node(OmegaConf.to_container(OmegaConf.load(path), resolve=True), split, str(path))
    return instantiate_from_config(node, node=f"{path.name}:{split}")
