"""``python -m ldm.cli.convert``: checkpoint conversions (see docs/finetuning.md).

* ``to-safetensors --ckpt X.ckpt --out X.safetensors [--ema] [--half]`` — weights only;
* ``to-diffusers --config C.yaml --ckpt X --out DIR`` — a diffusers Stable Diffusion folder;
* ``from-diffusers --diffusers DIR --config C.yaml --out X.safetensors|.ckpt`` — the reverse;
* ``merge-lora --config C.yaml --ckpt X --lora A.safetensors --out Y.safetensors`` — fold an adapter in.

Inputs are read without running pickled code (``--unsafe-load`` opts out for files you trust).
Errors print one ``convert: error: ...`` line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_unsafe_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unsafe-load", action="store_true",
                        help="allow pickled code in the input (trusted files only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldm.cli.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("to-safetensors", help="a .ckpt's weights as .safetensors")
    p.add_argument("--ckpt", required=True, help="input checkpoint (.ckpt/.pt/.safetensors)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--ema", action="store_true", help="copy the EMA weights into model.* and drop the shadows")
    p.add_argument("--half", action="store_true", help="store weights in float16")
    _add_unsafe_load(p)

    p = sub.add_parser("to-diffusers", help="our / original layout -> a diffusers folder")
    p.add_argument("--config", required=True, help="the model's YAML config")
    p.add_argument("--ckpt", required=True, help="the model's weights (.ckpt/.safetensors)")
    p.add_argument("--out", required=True, help="output folder (unet/, vae/, text_encoder/, ...)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights when the checkpoint has them")
    _add_unsafe_load(p)

    p = sub.add_parser("from-diffusers", help="a diffusers folder -> our / original layout")
    p.add_argument("--diffusers", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--config", required=True, help="the YAML config of the model to fill")
    p.add_argument("--out", required=True, help="output .safetensors or .ckpt")

    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into the base weights")
    p.add_argument("--config", required=True, help="the base model's YAML config (without lora)")
    p.add_argument("--ckpt", required=True, help="the base model's weights")
    p.add_argument("--lora", required=True, help="adapter .safetensors written by LoRA training")
    p.add_argument("--out", required=True, help="merged weights (.safetensors)")
    _add_unsafe_load(p)
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "to-safetensors":
        from ldm.convert.safetensors_io import checkpoint_to_safetensors

        sd = checkpoint_to_safetensors(args.ckpt, args.out, ema=args.ema, half=args.half,
                                       trust_checkpoint=args.unsafe_load)
        print(f"[convert] wrote {len(sd)} tensors to {args.out}"
              f"{' (EMA baked into model.*)' if args.ema else ''}{' (float16)' if args.half else ''}")
    elif args.command == "to-diffusers":
        from ldm.convert.diffusers_sd import export_diffusers

        export_diffusers(args.config, args.ckpt, args.out, ema=args.ema, trust_checkpoint=args.unsafe_load)
        print(f"[convert] wrote a diffusers Stable Diffusion folder to {args.out}")
    elif args.command == "from-diffusers":
        from ldm.convert.diffusers_sd import import_diffusers

        n = import_diffusers(args.diffusers, args.config, args.out)
        print(f"[convert] wrote {n} tensors to {args.out}")
    elif args.command == "merge-lora":
        from ldm.lora import merge_lora_file

        n = merge_lora_file(args.config, args.ckpt, args.lora, args.out, trust_checkpoint=args.unsafe_load)
        print(f"[convert] merged the adapter into {n} tensors, wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    from ldm.checkpoint import UnsafeCheckpointError
    from ldm.cli.errors import run_reporting_errors
    from ldm.util import ConfigError

    return run_reporting_errors(run, argv, (ConfigError, UnsafeCheckpointError, FileNotFoundError, ValueError,
                                            KeyError, ImportError), "convert")


if __name__ == "__main__":
    sys.exit(main())
