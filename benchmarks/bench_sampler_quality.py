"""Each sampler's cost per image at a fixed quality, on a trained class-conditional demo model.

Every sampler draws the same class labels (``--per-class`` of each of the 12 shapes classes) from
the same initial noise, with classifier-free guidance (``--guidance-scale``, the conditional and null
batch in one forward); the shapes oracle (:mod:`ldm.eval.shapes_oracle`, training-free) scores
whether each image shows the requested shape and colour. Seconds per image include decoding.

    python -m benchmarks.bench_sampler_quality --run logs/<run of configs/demo/ldm_class_kl_f4.yaml>
    python -m benchmarks.bench_sampler_quality --run logs/<run> --ddpm-steps 250 --per-class 16
    python -m benchmarks.bench_sampler_quality --run logs/<run> --sweep            # accuracy vs steps
    python -m benchmarks.bench_sampler_quality --run logs/<run> --samplers ddim:50,dpmpp_2m@karras:10,heun:8

Default rows: DPM-Solver++(2M) at 10 and 20 steps, DDIM (eta 0) at 50, ancestral DDPM at
``--ddpm-steps`` (1000 = every training step). ``--sweep`` runs every sampler (the discrete-grid
ones and the sigma-space family on Karras sigmas, ``NAME@SIGMAS`` picks another schedule) at
``--sweep-steps`` and ends with the cheapest run, in UNet evaluations per image, whose accuracy is
at least DDIM-50's minus one standard error. UNet evaluations are counted (Heun and DPM++ 2S
call the model twice per step). ``±`` is one binomial standard error.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from benchmarks.common import describe_device, synchronize


def default_runs(ddpm_steps: int) -> list[tuple[str, int]]:
    return [("dpm_solver++", 10), ("dpm_solver++", 20), ("ddim", 50), ("ddpm", ddpm_steps)]


SWEEP_SAMPLERS = ("ddim", "plms", "dpm_solver++", "euler", "euler_a", "heun", "dpmpp_2m@karras", "dpmpp_2m_sde",
                  "dpmpp_2s_a", "lms")


def sweep_runs(steps: list[int]) -> list[tuple[str, int]]:
    return [("ddim", 50)] + [(name, n) for name in SWEEP_SAMPLERS for n in steps if (name, n) != ("ddim", 50)]


def parse_runs(text: str) -> list[tuple[str, int]]:
    runs = []
    for item in text.split(","):
        name, _, steps = item.strip().rpartition(":")
        if not name or not steps.isdigit():
            raise SystemExit(f"--samplers: expected NAME[@SIGMAS]:STEPS items such as ddim:50 or "
                             f"dpmpp_2m@karras:10, got {item!r}")
        runs.append((name, int(steps)))
    return runs


def split_name(name: str) -> tuple[str, str | None]:
    """``dpmpp_2m@karras`` -> (``dpmpp_2m``, ``karras``); a bare name has no sigma schedule."""
    sampler, _, sigmas = name.partition("@")
    return sampler, sigmas or None


def check_class_conditional(model) -> int:
    """Number of classes of a class-conditional model with a null class, or a clear error."""
    embedder = getattr(model, "cond_stage_model", None)
    n_classes = getattr(embedder, "n_classes", None)
    if n_classes is None or getattr(model, "null_conditioning", lambda n: None)(1) is None:
        raise SystemExit("--run must hold a class-conditional model with a null class (e.g. "
                         "configs/demo/ldm_class_kl_f4.yaml, ClassEmbedder with add_null_class)")
    return int(n_classes)


def sample_all(model, labels: torch.Tensor, sampler: str, steps: int, guidance: float, batch: int,
               seed: int) -> tuple[torch.Tensor, float, float]:
    """Images for ``labels`` (chunks of ``batch``; chunk ``i`` starts from seed ``seed + i``), seconds and
    UNet calls per sampling run (one call = one forward of the conditional + null batch)."""
    name, sigmas = split_name(sampler)
    options = {} if sigmas is None else {"sigmas": sigmas}
    calls = [0]
    hook = model.model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    images = []
    seconds = 0.0
    chunks = labels.split(batch)
    try:
        for i, chunk in enumerate(chunks):
            generator = torch.Generator(model.device).manual_seed(seed + i)
            synchronize(model.device)
            start = time.perf_counter()
            out = model.sample(chunk.to(model.device), sampler=name, steps=steps, guidance_scale=guidance,
                               generator=generator, **options)
            synchronize(model.device)
            seconds += time.perf_counter() - start
            images.append(out.float().cpu())
    finally:
        hook.remove()
    return torch.cat(images), seconds, calls[0] / len(chunks)


def cheapest_matching(rows, reference: float, reference_error: float):
    """The row with the fewest UNet evaluations whose accuracy reaches DDIM-50's (minus one std. error)."""
    good = [row for row in rows if row[4] >= reference - reference_error]
    return min(good, key=lambda row: (row[2], -row[4])) if good else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory of main.py (configs/ and checkpoints/last.ckpt)")
    parser.add_argument("--ckpt", default=None, help="checkpoint inside the run (default checkpoints/last.ckpt)")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (12 classes)")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="steps of the ancestral DDPM row")
    parser.add_argument("--samplers", default=None, help="NAME[@SIGMAS]:STEPS,... instead of the default rows")
    parser.add_argument("--sweep", action="store_true", help="every sampler at --sweep-steps (accuracy vs steps)")
    parser.add_argument("--sweep-steps", default="5,8,10,15,20,30", help="step counts of --sweep")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: the demo UNet is too small to gain from more, and on a "
                             "busy machine two threads ran 7x slower than one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ldm.cli.load_model import load_model
    from ldm.eval.shapes_oracle import oracle_accuracy

    loaded = load_model(run=args.run, ckpt=args.ckpt, device=args.device)
    model = loaded.model
    n_classes = check_class_conditional(model)
    labels = torch.arange(n_classes).repeat(args.per_class)
    if args.sweep:
        runs = sweep_runs([int(v) for v in args.sweep_steps.split(",")])
    else:
        runs = parse_runs(args.samplers) if args.samplers else default_runs(args.ddpm_steps)
    where = describe_device(model.device)
    print(f"# {loaded.checkpoint} (global step {_global_step(loaded.checkpoint)}), {labels.numel()} images "
          f"({args.per_class} per class), CFG scale {args.guidance_scale}, EMA weights, "
          f"device {model.device} ({where})")
    print("| sampler | steps | UNet evaluations/img (cond + null) | s/img | oracle accuracy | vs DDIM 50 |")
    print("|---|---|---|---|---|---|")
    reference = reference_error = None
    rows = []
    for name, steps in runs:
        images, seconds, calls = sample_all(model, labels, name, steps, args.guidance_scale, args.batch, args.seed)
        accuracy = oracle_accuracy(images, labels)
        error = math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / labels.numel())
        forwards = calls * (2 if args.guidance_scale != 1.0 else 1)
        rows.append((name, steps, forwards, seconds / labels.numel(), accuracy, error))
        if name == "ddim" and steps == 50:
            reference, reference_error = accuracy, error
    for name, steps, forwards, per_image, accuracy, error in rows:
        delta = "-" if reference is None else f"{(accuracy - reference) * 100:+.1f} pt"
        print(f"| {name} | {steps} | {forwards:g} | {per_image:.3f} | {accuracy * 100:.1f}% ± {error * 100:.1f} "
              f"| {delta} |")
    if reference is not None:
        best = cheapest_matching([r for r in rows if (r[0], r[1]) != ("ddim", 50)], reference, reference_error)
        if best is None:
            print(f"\nno run reached DDIM-50's accuracy ({reference * 100:.1f}%)")
        else:
            print(f"\ncheapest run reaching DDIM-50 ({reference * 100:.1f}% ± {reference_error * 100:.1f}): "
                  f"{best[0]} at {best[1]} steps, {best[2]:g} UNet evaluations/img ({best[4] * 100:.1f}%)")


def _global_step(checkpoint) -> str:
    try:
        meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return str(meta.get("global_step", "?"))
    except (OSError, RuntimeError, ValueError, EOFError):  # safetensors or unreadable: the step is informative only
        return "?"


if __name__ == "__main__":
    main()
