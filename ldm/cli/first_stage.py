"""The one first-stage loader of the commands that only encode or decode (``cache_latents``,
``evaluate --autoencoder-config``, ``quickstart --ae-ckpt``).

The first stage is ``model.params.first_stage_config`` of a LatentDiffusion config, or the
``model`` section (or root node) of an autoencoder config. Its training loss (``lossconfig``) is
replaced by an identity: encoding and decoding do not need it, and building it could load
LPIPS / discriminator weights. Weights come from an autoencoder checkpoint, a stage-1 run
directory or a full LatentDiffusion checkpoint (its ``first_stage_model.*`` entries); the
architecture is checked before anything is copied
(:func:`ldm.models.first_stage_checkpoint.check_architecture`). The module comes back in eval
mode with its parameters frozen.
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

LATENT_DIFFUSION_SUFFIX = "LatentDiffusion"
NO_LOSS = {"target": "torch.nn.Identity"}


def without_training_loss(node: Mapping) -> dict:
    """A deep copy of a first-stage config node whose ``lossconfig`` (if any) is an identity."""
    node = copy.deepcopy(dict(node))
    params = dict(node.get("params") or {})
    if "lossconfig" in params:
        params["lossconfig"] = dict(NO_LOSS)
    node["params"] = params
    return node


def is_latent_diffusion(model_node: Mapping) -> bool:
    params = model_node.get("params") or {}
    return str(model_node.get("target", "")).endswith(LATENT_DIFFUSION_SUFFIX) or "first_stage_config" in params


def first_stage_node(config: Mapping, source: str = "config") -> tuple[dict, str | None]:
    """(the first-stage node without its training loss, the LatentDiffusion's ``ckpt_path`` or None)."""
    model = config.get("model", config)
    if not isinstance(model, Mapping) or "target" not in model:
        raise ValueError(f"{source}: expected a 'model' section (or a root node) with a 'target'")
    if not is_latent_diffusion(model):
        return without_training_loss(model), None
    params = model.get("params") or {}
    node = params.get("first_stage_config")
    if not isinstance(node, Mapping) or "target" not in node:
        raise ValueError(f"{source}: model.params.first_stage_config must be a target/params node")
    return without_training_loss(node), params.get("ckpt_path")


def build_first_stage(node: Mapping, ckpt: str | Path | None = None, *, trust: bool = False) -> torch.nn.Module:
    """Instantiate ``node``, load ``ckpt`` (see the module docstring), eval mode, frozen."""
    from ldm.checkpoint import load_state_dict, load_weights
    from ldm.models.first_stage_checkpoint import autoencoder_weights, check_architecture, resolve_checkpoint
    from ldm.util import instantiate_from_config

    model = instantiate_from_config(node, node="first_stage_config")
    if ckpt is not None:
        path = resolve_checkpoint(ckpt)
        state = autoencoder_weights(load_state_dict(path, trust_checkpoint=trust))
        check_architecture(model, state, path)
        report = load_weights(model, state, verbose=False)
        if report.missing:
            raise ValueError(f"{ckpt} lacks {len(report.missing)} first-stage weight(s), e.g. {report.missing[:3]}; "
                             "it does not match the first-stage config")
        print(f"[first stage] {type(model).__name__} loaded from {path} ({report.loaded} tensors)")
    return model.eval().requires_grad_(False)


def load_first_stage(config: str | Path | Mapping, ckpt: str | Path | None = None, *, trust: bool = False,
                     source: str | None = None) -> tuple[torch.nn.Module, dict, str | None]:
    """(first stage, its config node, the checkpoint file used) from a YAML file (or its loaded mapping,
    named ``source`` in messages) and an optional ``ckpt``.

    Without ``ckpt`` the LatentDiffusion's ``ckpt_path`` is used if set (else the node's own
    ``ckpt_path``, loaded by the model); with neither the weights are random and a warning says so.
    """
    if not isinstance(config, Mapping):
        from omegaconf import OmegaConf

        from ldm.cli.config import load_config_file

        source = source or str(config)
        config = OmegaConf.to_container(load_config_file(config), resolve=True)
    source = source or "config"
    from ldm.models.first_stage_checkpoint import resolve_checkpoint

    node, ldm_ckpt = first_stage_node(config, source)
    ckpt = ckpt or ldm_ckpt
    ckpt = None if ckpt is None else resolve_checkpoint(ckpt)
    model = build_first_stage(node, ckpt, trust=trust)
    if ckpt is None and not (node.get("params") or {}).get("ckpt_path"):
        print(f"warning: no checkpoint given and no ckpt_path in {source}: the first stage has random weights",
              file=sys.stderr)
    return model, node, None if ckpt is None else str(ckpt)
