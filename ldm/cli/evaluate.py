"""``python -m ldm.cli.evaluate``: FID / KID / IS / precision-recall of generated images, or
PSNR / SSIM / LPIPS / rFID of an autoencoder, written to a JSON report and printed as a table.

Generated samples against a reference::

    python -m ldm.cli.evaluate --generated samples/ --reference data/val_images/ \\
        --metrics fid,kid,is,pr --feature-extractor inception --out report.json
    python -m ldm.cli.evaluate --generated samples/ --reference-config configs/demo/data.yaml --split validation

Autoencoder reconstructions on a dataset split::

    python -m ldm.cli.evaluate --autoencoder-config ae.yaml --autoencoder-ckpt last.ckpt \\
        --reference-config data.yaml --split validation --metrics psnr,ssim,lpips,rfid

Inputs are folders of images (searched recursively) or a dataset config (``target``/``params``,
a ``data:`` section of a training config, or a ``DataModuleFromConfig`` node whose ``params``
hold ``train`` / ``validation`` / ``test`` datasets) yielding dict samples with ``image`` in
``[-1, 1]`` (``C×H×W`` or ``H×W×C``); the sources are :mod:`ldm.data.image_batches` and
:mod:`ldm.data.dataset_config`, the autoencoder loader :mod:`ldm.cli.first_stage`. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ldm.data.dataset_config import build_dataset
from ldm.data.image_batches import dataset_batches, folder_batches
from ldm.eval.generative import GENERATIVE_METRICS, compute_generative_metrics, parse_metric_names
from ldm.eval.reconstruction import RECONSTRUCTION_METRICS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ldm.cli.evaluate",
        description="FID/KID/IS/precision-recall of generated images, or PSNR/SSIM/LPIPS/rFID of an autoencoder.",
    )
    parser.add_argument("--generated", help="folder of generated images (searched recursively)")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="folder of reference images (searched recursively)")
    ref.add_argument("--reference-config", help="data config (YAML) whose dataset yields dict samples with 'image'")
    parser.add_argument("--split", default="validation",
                        help="dataset split of --reference-config (default: validation)")
    parser.add_argument("--metrics", default=None,
                        help=f"comma list; generated images: {','.join(GENERATIVE_METRICS)} (default all); "
                             f"autoencoder: {','.join(RECONSTRUCTION_METRICS)} (default all)")
    parser.add_argument("--feature-extractor", default="inception",
                        help="inception | inception:/path/weights.pth | random-cnn[:seed] | torchscript:/path.pt")
    parser.add_argument("--download-weights", action="store_true",
                        help="allow torch-fidelity to download the Inception weights when they are not cached")
    parser.add_argument("--num-samples", type=int, default=None, help="use at most N images from each set")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=None, help="resize every image to S×S before evaluation")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets and IS splits")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--is-splits", type=int, default=10)
    parser.add_argument("--pr-k", type=int, default=3, help="k of the k-NN radii for precision/recall")
    parser.add_argument("--autoencoder-config", help="autoencoder config (YAML, 'model:' section or root node)")
    parser.add_argument("--autoencoder-ckpt", help="autoencoder weights (.ckpt/.pt/.safetensors)")
    from ldm.config_trust import add_trust_arguments

    add_trust_arguments(parser)
    parser.add_argument("--lpips-backbone", default="vgg", choices=("vgg", "random"),
                        help="vgg: LPIPS-VGG with torchvision's ImageNet VGG-16 (needs its weights); "
                             "random: fixed-seed random trunk, offline smoke tests only")
    parser.add_argument("--lpips-weights", default=None, help="path to torchvision's vgg16-397923af.pth")
    parser.add_argument("--out", help="write the JSON report here")
    return parser


def _check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value}")


def _reference_source(args: argparse.Namespace, config_fallback: str | None = None):
    """(description, batches-iterator-factory) of the reference images, or None."""
    common = dict(batch_size=args.batch_size, image_size=args.image_size, num_samples=args.num_samples,
                  num_workers=args.num_workers)
    if args.reference:
        return {"reference": str(args.reference)}, lambda: folder_batches(args.reference, **common)
    config_path = args.reference_config or config_fallback
    if config_path:
        dataset = build_dataset(config_path, args.split)
        return ({"reference_config": str(config_path), "split": args.split},
                lambda: dataset_batches(dataset, **common))
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_table(report: Mapping) -> str:
    rows = [(name, f"{value:.6g}" if isinstance(value, float) else str(value))
            for name, value in report["metrics"].items()]
    width = max([len("metric")] + [len(name) for name, _ in rows])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    extractor = report.get("feature_extractor")
    if extractor:
        lines.append(f"features: {extractor['name']}" + ("" if extractor["comparable_to_published"]
                                                        else " (NOT comparable with published numbers)"))
    return "\n".join(lines)


def evaluate_generated(args: argparse.Namespace) -> dict:
    from ldm.eval.features import build_feature_extractor, extract_features

    metrics = parse_metric_names(args.metrics or ",".join(GENERATIVE_METRICS), GENERATIVE_METRICS)
    if not args.generated:
        raise ValueError("--generated DIR is required (or pass --autoencoder-config for reconstruction metrics)")
    reference = _reference_source(args)
    if reference is None and metrics != ["is"]:
        raise ValueError("a reference is required for fid/kid/pr: pass --reference DIR or --reference-config data.yaml")
    extractor = build_feature_extractor(args.feature_extractor, allow_download=args.download_weights)
    generated_batches = folder_batches(args.generated, batch_size=args.batch_size, image_size=args.image_size,
                                       num_samples=args.num_samples, num_workers=args.num_workers)
    generated = extract_features(extractor, generated_batches, device=args.device, max_samples=args.num_samples)
    inputs: dict[str, Any] = {"generated": str(args.generated)}
    reference_features = None
    if reference is not None:
        description, batches = reference
        inputs.update(description)
        reference_features = extract_features(extractor, batches(), device=args.device, max_samples=args.num_samples)
    values = compute_generative_metrics(reference_features, generated, metrics, kid_subsets=args.kid_subsets,
                                        kid_subset_size=args.kid_subset_size, is_splits=args.is_splits,
                                        pr_k=args.pr_k, seed=args.seed)
    counts = {"num_generated": int(generated.features.shape[0])}
    if reference_features is not None:
        counts["num_reference"] = int(reference_features.features.shape[0])
    return {"mode": "generative", "metrics": values, "feature_extractor": extractor.describe(), **counts,
            "inputs": inputs}


def evaluate_reconstructions(args: argparse.Namespace) -> dict:
    from ldm.cli.first_stage import load_first_stage
    from ldm.eval.features import build_feature_extractor
    from ldm.eval.reconstruction import build_lpips, evaluate_autoencoder

    metrics = parse_metric_names(args.metrics or ",".join(RECONSTRUCTION_METRICS), RECONSTRUCTION_METRICS)
    if args.generated:
        raise ValueError("--generated is not used with --autoencoder-config (reconstructions are made from the data)")
    reference = _reference_source(args, config_fallback=_config_with_data(args.autoencoder_config))
    if reference is None:
        raise ValueError("reconstruction metrics need data: pass --reference-config data.yaml [--split S] "
                         "or --reference DIR")
    extractor = build_feature_extractor(args.feature_extractor, allow_download=args.download_weights) \
        if "rfid" in metrics else None
    lpips_model = build_lpips(args.lpips_backbone, args.lpips_weights, seed=args.seed) if "lpips" in metrics else None
    model = load_first_stage(args.autoencoder_config, args.autoencoder_ckpt)[0]
    description, batches = reference
    values = evaluate_autoencoder(model, batches(), metrics, feature_extractor=extractor, lpips_model=lpips_model,
                                  device=args.device, max_samples=args.num_samples)
    num_images = values.pop("num_images")
    report = {"mode": "autoencoder", "metrics": values, "num_images": num_images,
              "inputs": {"autoencoder_config": str(args.autoencoder_config),
                         "autoencoder_ckpt": None if args.autoencoder_ckpt is None else str(args.autoencoder_ckpt),
                         **description},
              "lpips": None if lpips_model is None else {"net": "vgg", "backbone": args.lpips_backbone}}
    if extractor is not None:
        report["feature_extractor"] = extractor.describe()
    return report


def _config_with_data(config_path: str | None) -> str | None:
    """The autoencoder config itself, when it carries a ``data:`` section (used if no data is given)."""
    if not config_path or not Path(config_path).is_file():
        return None
    from omegaconf import OmegaConf

    return config_path if "data" in OmegaConf.load(config_path) else None


def run(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, evaluate, print the table, write ``--out``; return the report."""
    args = build_parser().parse_args(argv)
    for flag in ("num_samples", "batch_size", "image_size", "kid_subsets", "kid_subset_size", "is_splits", "pr_k"):
        _check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.time()
    from ldm.config_trust import trust_policy

    sources = " ".join(str(p) for p in (args.autoencoder_config, args.reference_config) if p) or "the config"
    with trust_policy(args.trust_config, args.allow_target, source=sources):
        report = evaluate_reconstructions(args) if args.autoencoder_config else evaluate_generated(args)
    report["settings"] = {
        "feature_extractor": args.feature_extractor, "num_samples": args.num_samples, "batch_size": args.batch_size,
        "image_size": args.image_size, "seed": args.seed, "kid_subsets": args.kid_subsets,
        "kid_subset_size": args.kid_subset_size, "is_splits": args.is_splits, "pr_k": args.pr_k, "device": args.device,
    }
    report["seconds"] = round(time.time() - started, 3)
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
        print(f"report written to {out}")
    return report


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "bad input or missing file/weights": reported as one message, exit code 2."""
    from ldm.checkpoint import UnsafeCheckpointError

    errors: list[type[BaseException]] = [ValueError, OSError, ImportError, UnsafeCheckpointError]
    try:
        from ldm.modules.losses.lpips import LPIPSWeightsError

        errors.append(LPIPSWeightsError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    from ldm.cli.errors import run_reporting_errors

    return run_reporting_errors(run, argv, _user_errors())


if __name__ == "__main__":
    sys.exit(main())
