"""Encode a dataset split once with a frozen first stage and write a latent cache.

    python -m ldm.cli.cache_latents --config configs/ldm/<model>.yaml --split train --out caches/train
    python -m ldm.cli.cache_latents --config <autoencoder>.yaml --ckpt ae.ckpt \
        --data-config <data>.yaml --split train --out caches/train --flip both

``--config`` is a LatentDiffusion config (the first stage is ``model.params.first_stage_config``)
or an autoencoder config (``model`` is the first stage). ``--ckpt`` loads first-stage weights: an
autoencoder checkpoint or stage-1 run directory, or a full LatentDiffusion checkpoint (its
``first_stage_model.*`` weights are used; :mod:`ldm.cli.first_stage`). Without ``--ckpt`` the LDM
config's ``model.params.ckpt_path`` is used if set, else the first stage's own ``ckpt_path``. The
dataset is ``data.params.<split>`` of ``--data-config`` (default: ``--config``). Train from the
cache with ``ldm.data.latent_cache.LatentCacheDataset`` (see docs/performance.md, "Latent cache").
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldm.cli.cache_latents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="LatentDiffusion or autoencoder YAML")
    parser.add_argument("--ckpt", default=None, help="first-stage (or full LatentDiffusion) checkpoint")
    parser.add_argument("--data-config", default=None, help="YAML with the data section (default: --config)")
    parser.add_argument("--split", default="train", help="dataset split under data.params (default: train)")
    parser.add_argument("--out", required=True, help="output directory of the cache")
    parser.add_argument("--flip", choices=("both", "off"), default="off",
                        help="both: also encode mirrored images (keeps flip augmentation); off: no flips")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1000, help="entries per shard file")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading the dataset")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype of the latents")
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N samples")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    parser.add_argument("--unsafe-load", action="store_true", help="allow pickled checkpoints you trust")
    from ldm.config_trust import add_trust_arguments

    add_trust_arguments(parser)
    return parser


def _load_yaml(path: str | Path) -> dict:
    from omegaconf import OmegaConf

    from ldm.cli.config import load_config_file

    return OmegaConf.to_container(load_config_file(path), resolve=True)


def _freeze_augmentation(node: dict) -> list[str]:
    """Random augmentations would be frozen into the cache: switch random flips off, warn about crops."""
    params = node.setdefault("params", {}) or {}
    node["params"] = params
    notes = []
    if params.get("flip_p"):
        notes.append(f"dataset flip_p={params['flip_p']} set to 0 (use --flip both to keep flips)")
        params["flip_p"] = 0.0
    if params.get("random_crop"):
        notes.append("random_crop is on: one random crop per image is frozen into the cache")
    return notes


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from ldm.config_trust import trust_policy

    args = build_parser().parse_args(argv)
    sources = " ".join(str(p) for p in (args.config, args.data_config) if p)
    with trust_policy(args.trust_config, args.allow_target, source=sources):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    from ldm.cli.first_stage import is_latent_diffusion, load_first_stage
    from ldm.data.dataset_config import dataset_node
    from ldm.data.latent_cache import encode_dataset, file_sha256
    from ldm.util import instantiate_from_config

    for flag in ("batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    config = _load_yaml(args.config)
    first_stage, node, ckpt = load_first_stage(config, args.ckpt, trust=args.unsafe_load, source=args.config)

    data_source = args.data_config or args.config
    data_config = config if args.data_config is None else _load_yaml(args.data_config)
    data_node = dataset_node(data_config, args.split, data_source)
    notes = _freeze_augmentation(data_node)
    if args.flip == "both":
        notes.append("mirrored entries keep the sample's caption/labels unchanged: use --flip off if they name "
                     "left/right (e.g. the shapes captions)")
    for note in notes:
        print(f"[cache_latents] {note}")
    dataset = instantiate_from_config(data_node, node=f"data.params.{args.split}")

    model_node = config.get("model", config)
    model_params = model_node.get("params") or {}
    image_key = model_params.get("first_stage_key", model_params.get("image_key", "image"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {
        "command": ["python", "-m", "ldm.cli.cache_latents", *(sys.argv[1:] if argv is None else list(argv))],
        "first_stage": {
            "target": node["target"],
            "config": node,
            "checkpoint": None if ckpt is None else {"path": str(Path(ckpt).resolve()), "sha256": file_sha256(ckpt)},
        },
        "source": {"config": str(Path(data_source).resolve()), "split": args.split, "dataset": data_node,
                   "notes": notes},
        "scale_factor": model_params.get("scale_factor") if is_latent_diffusion(model_node) else None,
    }
    manifest = encode_dataset(first_stage, dataset, args.out, image_key=image_key, flip=args.flip,
                              batch_size=args.batch_size, shard_size=args.shard_size, num_workers=args.num_workers,
                              device=device, dtype=DTYPES[args.dtype], limit=args.limit, info=info,
                              overwrite=args.overwrite, progress=sys.stdout.isatty())
    print(f"[cache_latents] wrote {manifest['num_entries']} entries ({manifest['num_samples']} samples, "
          f"flip={args.flip}, latent {manifest['latent']['shape']}) in {len(manifest['shards'])} shard(s) "
          f"to {args.out}; "
          f"first-stage sha256 {manifest['first_stage']['state_dict_sha256']}")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from ldm.checkpoint import UnsafeCheckpointError
    from ldm.cli.errors import run_reporting_errors
    from ldm.data.latent_cache import LatentCacheError
    from ldm.util import ConfigError

    return run_reporting_errors(run, argv, (ConfigError, LatentCacheError, FileNotFoundError, FileExistsError,
                                            ValueError, KeyError, TypeError, UnsafeCheckpointError), "cache_latents")


if __name__ == "__main__":
    sys.exit(main())
