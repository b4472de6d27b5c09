"""FSDP for diffusion models that do not fit one GPU: Lightning's ``FSDPStrategy`` built from YAML.

``--strategy fsdp`` works with Lightning's defaults (one FSDP unit for the whole model). For a UNet,
shard per block instead; in the config::

    lightning:
      trainer:
        strategy:
          target: ldm.fsdp.unet_fsdp_strategy
          params:
            wrap: [ResBlock, SpatialTransformer, AttentionBlock]  # one FSDP unit per UNet block
            activation_checkpointing: [ResBlock, SpatialTransformer]  # recompute these in backward
            mixed_precision: bf16        # bf16 parameters in all-gathers and bf16 gradient reduction
            sharding_strategy: FULL_SHARD  # or SHARD_GRAD_OP, HYBRID_SHARD (shard within a node)
            state_dict_type: full          # one consolidated checkpoint (rank 0); "sharded" for huge models

Block names are the classes of ``ldm.modules`` (``ResBlock``, ``SpatialTransformer``,
``AttentionBlock``, ``BasicTransformerBlock``, ``TimestepEmbedSequential``) or dotted class paths.
``mixed_precision`` ``null`` (default) leaves it to ``--precision``: ``bf16-mixed`` autocasts with
fp32 parameters. ``use_orig_params`` defaults to True because a LatentDiffusion model mixes frozen
(first stage) and trainable parameters in the root unit, which FSDP only allows that way.
``main.py`` instantiates a ``strategy`` mapping with a ``target`` (:func:`build_strategy`). FSDP needs
CUDA: on the CPU the Trainer refuses it in one line. Not tested in CI (no GPU); with EMA weights
(``use_ema``) FSDP's sharded parameters are not what ``LitEma`` expects: prefer DDP there.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["BLOCKS", "block_classes", "build_strategy", "unet_fsdp_strategy"]

#: short names of the modules worth one FSDP unit / one activation checkpoint each
BLOCKS = {
    "ResBlock": "ldm.modules.unet_blocks.ResBlock",
    "TimestepEmbedSequential": "ldm.modules.unet_blocks.TimestepEmbedSequential",
    "SpatialTransformer": "ldm.modules.attention.SpatialTransformer",
    "BasicTransformerBlock": "ldm.modules.attention.BasicTransformerBlock",
    "AttentionBlock": "ldm.modules.attention.AttentionBlock",
}
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "16": "float16", "float16": "float16",
           "fp32": "float32", "32": "float32", "float32": "float32"}


def block_classes(names: Iterable[str] | None) -> set[type]:
    """``["ResBlock", "my.pkg.Block"]`` -> the classes; an unknown name is a one-line error."""
    from ldm.util import ConfigError, get_obj_from_str

    classes = set()
    for name in names or ():
        path = BLOCKS.get(str(name), str(name))
        try:
            cls = get_obj_from_str(path)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"FSDP block {name!r}: not one of {sorted(BLOCKS)} nor an importable class path") from err
        classes.add(cls)
    return classes


def unet_fsdp_strategy(wrap: Iterable[str] | None = ("ResBlock", "SpatialTransformer", "AttentionBlock"),
                       activation_checkpointing: Iterable[str] | None = None, mixed_precision: str | None = None,
                       sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full",
                       cpu_offload: bool = False, use_orig_params: bool = True, **kwargs: Any):
    """A ``lightning.pytorch.strategies.FSDPStrategy`` wrapping and checkpointing the named blocks."""
    import torch
    from lightning.pytorch.strategies import FSDPStrategy

    from ldm.util import ConfigError

    precision = None
    if mixed_precision is not None:
        from torch.distributed.fsdp import MixedPrecision

        if str(mixed_precision).lower() not in _DTYPES:
            raise ConfigError(f"FSDP mixed_precision: expected bf16, fp16 or fp32, got {mixed_precision!r}")
        dtype = getattr(torch, _DTYPES[str(mixed_precision).lower()])
        precision = MixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype)
    checkpointed = block_classes(activation_checkpointing)
    return FSDPStrategy(auto_wrap_policy=block_classes(wrap) or None,
                        activation_checkpointing_policy=checkpointed or None, mixed_precision=precision,
                        sharding_strategy=sharding_strategy, state_dict_type=state_dict_type,
                        cpu_offload=bool(cpu_offload), use_orig_params=bool(use_orig_params), **kwargs)


def build_strategy(trainer_kwargs: dict) -> dict:
    """A copy of ``trainer_kwargs`` whose ``strategy``, when a ``{target, params}`` mapping, is built."""
    strategy = trainer_kwargs.get("strategy")
    if not isinstance(strategy, dict) or "target" not in strategy:
        return trainer_kwargs
    from ldm.util import instantiate_from_config

    return {**trainer_kwargs, "strategy": instantiate_from_config(strategy, node="lightning.trainer.strategy")}
