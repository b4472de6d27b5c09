"""Sampler cost: seconds per image and per step, the sampler's own overhead beside the UNet's time,
and a classifier-free-guided step against one UNet forward at double batch.

    python benchmarks/bench_samplers.py                       # CPU, the demo UNet
    python benchmarks/bench_samplers.py --device cuda --model celebahq-f4 --batch 8 --dtype bf16

Overhead, two ways: "direct" = ``sampler.sample`` with an identity denoiser (the sampler's own work per
step: conversions, the update, noise, timestep tensors, Python) / one UNet forward; "end-to-end" =
(``sampler.sample`` with the UNet - the same number of bare UNet forwards) / the bare forwards.
Goal < 3%. Times are the minimum over repeats (noise on a shared machine only adds). Guided ratio = one
guided denoiser call (stacking, one forward at 2B, the combination) / one UNet forward at 2B. Goal <= 1.05.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import describe_device, interleaved_min, time_call
from ldm.diffusion import DiffusionSchedule
from ldm.modules.unet import UNetModel
from ldm.samplers import classifier_free_guidance, get_sampler

MODELS = {
    # the demo's latent UNet: 8x8x3 latents, cross-attention to a 77x64 context
    "demo": dict(image_size=8, in_channels=3, out_channels=3, model_channels=64, attention_resolutions=[1, 2],
                 num_res_blocks=1, channel_mult=[1, 2], num_head_channels=32, use_spatial_transformer=True,
                 context_dim=64, transformer_depth=1),
    # LDM celebahq-ldm-vq-4's UNet on 64x64x3 latents, with a cross-attention context added for guidance
    "celebahq-f4": dict(image_size=64, in_channels=3, out_channels=3, model_channels=224,
                        attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 2, 3, 4],
                        num_head_channels=32, use_spatial_transformer=True, context_dim=512, transformer_depth=1),
}
SAMPLER_RUNS = [("ddim", {}), ("ddpm", {}), ("plms", {}), ("dpm_solver++", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    params = MODELS[args.model]
    torch.manual_seed(0)
    unet = UNetModel(**params).to(device=device, dtype=dtype).eval()
    B, C, H = args.batch, params["in_channels"], params["image_size"]
    context = torch.randn(B, 77, params["context_dim"], device=device, dtype=dtype)
    null = torch.zeros(1, 77, params["context_dim"], device=device, dtype=dtype)

    @torch.no_grad()
    def denoise(x, t, cond):
        return unet(x, t, context=cond)

    schedule = DiffusionSchedule.from_config("linear", 1000, 0.0015, 0.0195)
    x = torch.randn(B, C, H, H, device=device, dtype=dtype)
    t = torch.full((B,), 500, device=device, dtype=torch.long)
    S = args.steps
    name = describe_device(device)
    print(f"# model {args.model} batch {B} latent {C}x{H}x{H} {args.dtype} on {device} ({name}), {S} steps")

    def bare():
        for _ in range(S):
            denoise(x, t, context)

    bare_s = time_call(bare, device, warmup=1, repeats=args.repeats, reduce=min)
    per_forward = bare_s / S
    print(f"UNet forward (batch {B}): {per_forward * 1e3:.3f} ms (the per-sampler rows re-measure it interleaved)")
    print(f"{'sampler':<14}{'forwards':>9}{'s/image':>10}{'ms/step':>10}{'own ms/step':>12}{'direct':>9}"
          f"{'end-to-end':>12}")
    for sampler_name, opts in SAMPLER_RUNS:
        sampler = get_sampler(sampler_name, schedule, steps=S, **opts)
        forwards = sampler.num_steps + (1 if sampler_name == "plms" else 0)
        gen = torch.Generator(device=device).manual_seed(0)
        best = interleaved_min({
            # the lambdas run inside this iteration (interleaved_min), so late binding is harmless
            "sampler": lambda: sampler.sample(  # noqa: B023
                denoise, x.shape, cond=context, generator=gen, device=device, dtype=dtype),  # noqa: B023
            "bare": lambda: [denoise(x, t, context) for _ in range(forwards)],  # noqa: B023
        }, device, args.repeats)
        total, per_forward = best["sampler"], best["bare"] / forwards
        overhead = (total - forwards * per_forward) / (forwards * per_forward)
        own = time_call(lambda: sampler.sample(lambda xx, tt, cc: xx, x.shape, cond=context, generator=gen,  # noqa: B023
                                               device=device, dtype=dtype), device, warmup=1,
                        repeats=args.repeats, reduce=min) / forwards
        print(f"{sampler_name:<14}{forwards:>9}{total / B:>10.4f}{total / sampler.num_steps * 1e3:>10.3f}"
              f"{own * 1e3:>12.4f}{own / per_forward * 100:>8.2f}%{overhead * 100:>11.2f}%")

    # guided step vs one forward at double batch
    guided = classifier_free_guidance(denoise, null, 7.5)
    x2, t2, c2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, null.expand_as(context)])
    reps = max(S, 10)

    def loop(fn):
        def run():
            for _ in range(reps):
                fn()
        return run

    best = interleaved_min({"double": loop(lambda: denoise(x2, t2, c2)), "guided": loop(lambda: guided(x, t, context))},
                           device, max(args.repeats, 5))
    double, guided_s = best["double"] / reps, best["guided"] / reps
    print(f"forward at batch {2 * B}: {double * 1e3:.3f} ms; guided step: {guided_s * 1e3:.3f} ms; "
          f"ratio {guided_s / double:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
