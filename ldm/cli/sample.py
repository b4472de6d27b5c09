"""Sampling commands: ``python -m ldm.cli.sample MODE [model] [options]`` (docs/sampling.md).

Modes::

    uncond    unconditional models
    class     class-conditional models          --classes 0,3,5 | all
    txt2img   text-conditional models           --prompt "a red circle" [--prompt ...] | --from-file F
    img2img   any of the above, from an image   --init-img PATH --strength 0.75 [--prompt | --classes]
    inpaint   any of the above, with a mask     --image PATH --mask PATH (white = regenerate); an
              inpainting model (masked image + mask concatenated) fills the hole itself, with
              the known latents held at every step as for other models (--no-blend: not held)
    superres  super-resolution models           --input low.png
    mask2img  mask / semantic-map models        --input mask.png

``--negative-prompt`` replaces the null condition of classifier-free guidance by a caption's
(text-conditional and hybrid models). The spatial modes live in :mod:`ldm.cli.sample_spatial`.

The model comes from ``--run DIR`` (a run directory of ``main.py``: configs/*-project.yaml and
checkpoints/last.ckpt) or ``--ckpt PATH --config YAML``; weights are loaded without unpickling
code. EMA weights are used by default (``--no-ema`` for the trained weights). ``--H/--W`` set the
pixel size; sizes larger than trained sample convolutionally (LDM Sec. 4.3.2).

Each run writes ``OUTDIR/samples/NNNNN.png``, ``OUTDIR/grid.png`` and ``OUTDIR/settings.json``.
``run(argv)`` returns a :class:`SampleResult` and raises :class:`SampleError` on bad input;
``main(argv)`` prints ``sample: error: ...`` and returns exit code 2 instead.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.cli.load_model import SampleError

MODES = ("uncond", "class", "txt2img", "img2img", "inpaint", "superres", "mask2img")
#: which conditioning each mode drives; img2img / inpaint follow the model
MODE_KIND = {"uncond": "none", "class": "class", "txt2img": "text"}
#: classifier-free guidance scale when --scale is not given (original txt2img: 5.0; class notebook: 3.0)
DEFAULT_SCALE = {"none": 1.0, "class": 3.0, "text": 5.0}
SAMPLER_CHOICES = ("ddpm", "ddim", "plms", "dpm++", "dpm_solver++", "dpmpp_2m")
#: the sigma-space samplers (docs/samplers.md); ``--sigmas`` picks their noise schedule
SIGMA_SAMPLER_CHOICES = ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_a", "lms")


@dataclass
class SampleResult:
    outdir: Path
    files: list[Path]
    grid: Path
    settings_path: Path
    settings: dict


# ---------------------------------------------------------------------------- arguments
def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--run", help="run directory of main.py (configs/*-project.yaml + checkpoints/last.ckpt), "
                                     "or a checkpoint inside its checkpoints/ folder")
    model.add_argument("--ckpt", help="checkpoint (.ckpt/.pt/.safetensors); with --run: instead of last.ckpt")
    model.add_argument("--config", nargs="+", default=[], help="model config YAML(s) for --ckpt; with --run: merged "
                                                               "after the run's configs")
    model.add_argument("--no-ema", "--no_ema", dest="no_ema", action="store_true",
                       help="use the trained weights instead of the EMA weights")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    model.add_argument("--unsafe-load", "--unsafe_load", dest="unsafe_load", action="store_true",
                       help="allow full unpickling of a checkpoint you trust")
    from ldm.config_trust import add_trust_arguments

    add_trust_arguments(model)
    sampling = common.add_argument_group("sampling")
    sampling.add_argument("--sampler", default=None, help=f"{' | '.join(SAMPLER_CHOICES[:4])} | "
                                                          f"{' | '.join(SIGMA_SAMPLER_CHOICES)} "
                                                          "(default: the model's sampler_config, else ddim)")
    sampling.add_argument("--sigmas", default=None, choices=("karras", "exponential", "discrete"),
                          help="noise schedule of the sigma-space samplers (default karras; dpmpp_2m without "
                               "--sigmas is DPM-Solver++(2M) on the training grid)")
    sampling.add_argument("--steps", type=_positive_int, default=None,
                          help="sampling steps (default: model config, else 50)")
    sampling.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic DDIM); the "
                          "ancestral euler_a / dpmpp_2s_a / dpmpp_2m_sde default to 1")
    sampling.add_argument("--scale", type=float, default=None,
                          help="classifier-free guidance scale (default 5.0 text, 3.0 class; 1 = no guidance)")
    sampling.add_argument("--rescale", type=float, default=0.0, help="guidance rescale in [0, 1] (default 0)")
    sampling.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    sampling.add_argument("--n_samples", "--n-samples", dest="n_samples", type=_positive_int, default=4,
                          help="samples per prompt / class / init image (default 4)")
    sampling.add_argument("--batch_size", "--batch-size", dest="batch_size", type=_positive_int, default=4,
                          help="samples per forward pass (default 4)")
    sampling.add_argument("--H", dest="H", type=_positive_int, default=None,
                          help="image height in pixels (default: trained size, or the init image's)")
    sampling.add_argument("--W", dest="W", type=_positive_int, default=None, help="image width in pixels")
    output = common.add_argument_group("output")
    output.add_argument("--outdir", default=None, help="output directory (default outputs/<mode>-samples)")
    output.add_argument("--n_rows", "--n-rows", dest="n_rows", type=_positive_int, default=None,
                        help="images per grid row (default: n_samples when there are several conditions)")
    output.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true",
                        help="no progress bar")
    return common


def _add_condition_flags(parser: argparse.ArgumentParser, *, text: bool, classes: bool) -> None:
    if text:
        parser.add_argument("--prompt", action="append", default=None, help="a caption (repeatable)")
        parser.add_argument("--negative-prompt", "--negative_prompt", dest="negative_prompt", default=None,
                            help="a caption to steer away from: its condition replaces the null condition "
                                 "in classifier-free guidance (needs --scale != 1)")
        parser.add_argument("--from-file", "--from_file", dest="from_file", default=None,
                            help="a text file with one prompt per line")
    if classes:
        parser.add_argument("--classes", "--class", dest="classes", default=None,
                            help="class indices, comma-separated (e.g. 0,3,5), or 'all'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldm.cli.sample", allow_abbrev=False,
                                     description="Sample images from a trained (latent) diffusion model.")
    modes = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    common = _common_parser()
    kw = {"parents": [common], "allow_abbrev": False}
    modes.add_parser("uncond", help="unconditional sampling", **kw)
    _add_condition_flags(modes.add_parser("class", help="class-conditional sampling", **kw), text=False, classes=True)
    _add_condition_flags(modes.add_parser("txt2img", help="text-to-image", **kw), text=True, classes=False)
    for mode, text in (("img2img", "image-to-image: noise an image to --strength, then denoise"),
                       ("inpaint", "regenerate the white region of --mask, keep the rest")):
        sub = modes.add_parser(mode, help=text, **kw)
        _add_condition_flags(sub, text=True, classes=True)
        sub.add_argument("--init-img", "--init_img", "--image", dest="init_img", required=True,
                         help="the input image")
        if mode == "img2img":
            sub.add_argument("--strength", type=float, default=0.75,
                             help="noise level to start from, in (0, 1]: 1 = pure noise (default 0.75)")
        else:
            sub.add_argument("--mask", required=True, help="mask image: white = regenerate, black = keep")
            sub.add_argument("--no-paste", "--no_paste", dest="no_paste", action="store_true",
                             help="do not paste the known pixels back over the decoded result")
            sub.add_argument("--no-blend", "--no_blend", dest="no_blend", action="store_true",
                             help="inpainting models: do not hold the known latents during sampling (the "
                                  "model alone then decides the known region; default: held, as for other models)")
    for mode, text in (("superres", "super-resolution: --input is the low-resolution image"),
                       ("mask2img", "mask-to-image: --input is the mask (white = shape) or a label map")):
        sub = modes.add_parser(mode, help=text, **kw)
        _add_condition_flags(sub, text=True, classes=False)
        sub.add_argument("--input", required=True, help="the conditioning image")
    return parser


# ---------------------------------------------------------------------------- conditions
def _conditions(args: argparse.Namespace, model, kind: str) -> list[Any]:
    """The raw conditions (class indices or captions), one per group of n_samples; [None] if none."""
    from ldm.cli.sampling_io import parse_classes, read_prompts
    from ldm.cli.sampling_model import check_classes, describe, valid_classes

    prompts = read_prompts(getattr(args, "prompt", None), getattr(args, "from_file", None))
    class_spec = getattr(args, "classes", None)
    what = describe(model)
    if kind == "class" and prompts:
        raise SampleError(f"--prompt / --from-file given, but this model is {what}: ask for class indices with "
                          "--classes (e.g. --classes 0,3,5)")
    if kind == "text" and class_spec is not None:
        raise SampleError(f"--classes given, but this model is {what}: pass captions with --prompt or --from-file")
    if kind == "none" and (prompts or class_spec is not None):
        raise SampleError(f"this model is {what}: it takes no --prompt or --classes")
    if kind == "class":
        if class_spec is None and args.mode != "class":
            raise SampleError(f"{args.mode} with a {what} model needs --classes (e.g. --classes 3)")
        return check_classes(model, parse_classes(class_spec, valid_classes(model)))
    if kind == "text":
        if not prompts:
            raise SampleError(f"{args.mode} with a {what} model needs --prompt \"...\" or --from-file prompts.txt")
        return prompts
    return [None]


def _check_mode(args: argparse.Namespace, kind: str, model) -> None:
    from ldm.cli.sampling_model import describe

    if kind == "other":
        raise SampleError(f"this model is {describe(model)}; the sampling commands drive unconditional, class- and "
                          "text-conditional models")
    wanted = MODE_KIND.get(args.mode)
    if wanted is not None and wanted != kind:
        suggestion = {v: k for k, v in MODE_KIND.items()}[kind]
        needs = {"none": "an unconditional", "class": "a class-conditional", "text": "a text-conditional"}[wanted]
        raise SampleError(f"mode {args.mode!r} needs {needs} model, but this model is {describe(model)}: "
                          f"use the {suggestion!r} mode")


def _raw_batch(kind: str, items: Sequence[Any], device):
    import torch

    if kind == "class":
        return torch.tensor(list(items), dtype=torch.long, device=device)
    if kind == "text":
        return list(items)
    return None


# ---------------------------------------------------------------------------- the run
def _repeat(tensor, n: int):
    """A batch-1 tensor (encoded init image, mask) repeated to ``n`` rows (a view), or None."""
    return None if tensor is None else tensor.expand(n, *tensor.shape[1:])


def _pixel_size(args: argparse.Namespace, model) -> tuple[int, int]:
    from ldm.cli.sampling_io import image_size
    from ldm.cli.sampling_model import round_to_multiple, trained_pixel_size

    if args.mode in ("img2img", "inpaint"):
        default = round_to_multiple(model, *image_size(args.init_img))
    else:
        default = trained_pixel_size(model)
    return (args.H or default[0]), (args.W or default[1])


def _check_numbers(args: argparse.Namespace) -> None:
    import math

    for flag, value in (("--scale", args.scale), ("--eta", args.eta), ("--rescale", args.rescale),
                        ("--strength", getattr(args, "strength", None))):
        if value is not None and not math.isfinite(value):
            raise SampleError(f"{flag} must be a finite number, got {value}")
    if args.scale is not None and args.scale < 0:
        raise SampleError(f"--scale must be >= 0 (1 = no guidance), got {args.scale}")
    if args.mode == "img2img" and not 0.0 < args.strength <= 1.0:
        raise SampleError(f"--strength must be in (0, 1], got {args.strength}")
    if not 0.0 <= args.rescale <= 1.0:
        raise SampleError(f"--rescale must be in [0, 1], got {args.rescale}")
    if args.eta is not None and args.eta < 0:
        raise SampleError(f"--eta must be >= 0, got {args.eta}")
    if getattr(args, "input", None) is not None:
        from ldm.cli.sampling_io import image_size

        image_size(args.input, "--input")
    if args.mode in ("img2img", "inpaint"):
        from ldm.cli.sampling_io import image_size

        image_size(args.init_img)  # fail on an unreadable image before loading the model
        if args.mode == "inpaint":
            image_size(args.mask, "--mask")


def run(argv: Sequence[str] | None = None) -> SampleResult:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    import torch

    from ldm.cli.load_model import load_model
    from ldm.cli.sampling_draw import build_sampler, draw_batch, sampler_settings
    from ldm.cli.sampling_io import SampleWriter, load_image, load_mask
    from ldm.cli.sampling_model import (
        conditioning_kind,
        describe,
        downsample_mask,
        encode_images,
        first_stage_factor,
        grid_rows,
        image_channels,
        latent_shape,
    )
    from ldm.config_trust import trust_policy

    with trust_policy(args.trust_config, args.allow_target, source=args.run or " ".join(args.config) or "the config"):
        loaded = load_model(run=args.run, ckpt=args.ckpt, config=args.config, device=args.device,
                            trust_checkpoint=args.unsafe_load)
    model = loaded.model
    if not callable(getattr(model, "run_sampler", None)):
        raise SampleError(f"{args.run or args.ckpt} holds a {type(model).__name__}, not a diffusion model: "
                          "sample draws from DDPM / LatentDiffusion runs. For an autoencoder, check its "
                          "reconstructions with "
                          "python -m ldm.cli.evaluate --autoencoder-config ... --autoencoder-ckpt ...")
    for note in loaded.notes:
        print(f"note: {note}")
    from ldm.cli import sample_spatial

    kind = conditioning_kind(model)
    spatial = args.mode in sample_spatial.SPATIAL_MODES or (args.mode == "inpaint"
                                                           and sample_spatial.has_concat_inputs(model))
    if not spatial:
        _check_mode(args, kind, model)
    elif sample_spatial.text_input_key(model):
        kind = "text"  # a hybrid model: captions by cross-attention + spatial inputs by concat
    conditions = _conditions(args, model, kind)
    scale = (1.0 if spatial else DEFAULT_SCALE[kind]) if args.scale is None else float(args.scale)
    if kind == "none" and scale != 1.0:
        raise SampleError(f"--scale {scale}: guidance needs a conditional model; this model is unconditional")
    negative = getattr(args, "negative_prompt", None)
    if negative is not None and kind != "text" and not sample_spatial.text_input_key(model):
        raise SampleError(f"--negative-prompt needs a text-conditional model; this model is {describe(model)}")
    if negative is not None and scale == 1.0:
        raise SampleError("--negative-prompt acts through classifier-free guidance: give --scale other than 1")
    spatial_raw = spatial_px = None
    if spatial:
        spatial_raw, (height, width), spatial_px = sample_spatial.spatial_condition(args, model)
    else:
        height, width = _pixel_size(args, model)
    shape = latent_shape(model, height, width)
    settings = sampler_settings(model, args.sampler, args.steps, args.eta)
    sampler = build_sampler(model, settings, progress=not args.no_progress, sigmas=args.sigmas)
    use_ema = not args.no_ema and bool(getattr(model, "use_ema", False))
    if not args.no_ema and not use_ema:
        print("note: this model has no EMA weights; sampling with its trained weights")

    device = model.device
    generator = torch.Generator().manual_seed(args.seed)
    items = [c for c in conditions for _ in range(args.n_samples)]
    init = regenerate = keep_px = x_start = keep_latent = None
    if spatial_px:  # an inpainting model: it sees the masked image
        init, regenerate = spatial_px["init"].to(device), spatial_px["regenerate"].to(device)
    elif args.mode in ("img2img", "inpaint"):
        init = load_image(args.init_img, height, width, image_channels(model)).to(device)
        if args.mode == "inpaint":
            regenerate = load_mask(args.mask, height, width).to(device)
    # the known latents are held at every step (an inpainting model's only with its --no-blend off); the
    # known pixels are pasted back after decoding
    hold_latents = not (spatial_px and args.no_blend)
    if init is not None and hold_latents:
        x_start = encode_images(model, init)
    if regenerate is not None:
        keep_px = 1.0 - regenerate
        if hold_latents:
            keep_latent = 1.0 - downsample_mask(regenerate, first_stage_factor(model))
    # starting noise for every sample at once: a sample does not depend on --batch_size (DDIM eta=0)
    noise = None if args.mode == "img2img" else torch.randn((len(items), *shape), generator=generator)

    outdir = Path(args.outdir or f"outputs/{args.mode}-samples")
    writer = SampleWriter(outdir)
    print(f"sampling {len(items)} image(s) of {height}x{width} (latent {'x'.join(map(str, shape))}) with "
          f"{sampler!r}, scale {scale}, {'EMA' if use_ema else 'trained'} weights, on {device}; "
          f"model: {describe(model)}")
    started = time.perf_counter()
    with (model.ema_scope() if use_ema else nullcontext()):
        for begin in range(0, len(items), args.batch_size):
            chunk = items[begin:begin + args.batch_size]
            n = len(chunk)
            raw = _raw_batch(kind, chunk, device)
            if spatial:
                raw = sample_spatial.repeat_inputs(spatial_raw, n, device, sample_spatial.text_inputs(model, chunk),
                                                   model)
            images = draw_batch(model, sampler, raw_condition=raw, batch_size=n,
                                negative=None if negative is None else [negative] * n,
                                scale=scale, rescale=args.rescale, shape=(n, *shape),
                                x_T=None if noise is None else noise[begin:begin + n].to(device),
                                x_start=_repeat(x_start, n), strength=getattr(args, "strength", 1.0),
                                keep_mask=_repeat(keep_latent, n), generator=generator)
            if keep_px is not None and not args.no_paste:
                images = keep_px * init + (1.0 - keep_px) * images
            writer.add(images)
    seconds = time.perf_counter() - started

    n_rows = args.n_rows or grid_rows(len(items), args.n_samples, len(conditions))
    grid = writer.write_grid(n_rows)
    record = {
        "mode": args.mode, "model": {"run": None if loaded.run_dir is None else str(loaded.run_dir),
                                     "checkpoint": str(loaded.checkpoint),
                                     "configs": [str(c) for c in loaded.config_files],
                                     "conditioning": describe(model)},
        "sampler": settings.name, "sigmas": getattr(sampler, "sigma_schedule", None), "steps": settings.steps,
        "steps_run": sampler.num_steps, "eta": settings.eta,
        "scale": scale, "rescale": args.rescale, "seed": args.seed, "n_samples": args.n_samples,
        "batch_size": args.batch_size, "H": height, "W": width, "latent_shape": list(shape), "ema": use_ema,
        "device": str(device), "conditions": conditions if kind != "none" else [],
        "strength": getattr(args, "strength", None), "init_img": getattr(args, "init_img", None),
        "mask": getattr(args, "mask", None), "input": getattr(args, "input", None),
        "negative_prompt": negative, "concat_inputs": sorted(spatial_raw) if spatial else [],
        "paste_known": None if args.mode != "inpaint" else not args.no_paste,
        "seconds": round(seconds, 3), "seconds_per_image": round(seconds / max(1, len(items)), 4),
    }
    settings_path, record = writer.write_settings(record, items if kind != "none" else [None] * len(items))
    first, last = writer.files[0].name, writer.files[-1].name
    print(f"wrote {len(writer.files)} sample(s) to {writer.sample_dir}/ ({first} .. {last}), grid {grid}, "
          f"settings {settings_path} ({seconds:.1f} s)")
    return SampleResult(outdir=outdir, files=list(writer.files), grid=grid, settings_path=settings_path,
                        settings=record)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ldm.cli.config import CLIError
    from ldm.util import ConfigError

    return SampleError, ConfigError, CLIError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input ends with one line ``sample: error: ...`` on stderr and exit code 2."""
    from ldm.cli.errors import run_reporting_errors

    return run_reporting_errors(run, argv, _user_errors(), prog="sample")


if __name__ == "__main__":
    sys.exit(main())
