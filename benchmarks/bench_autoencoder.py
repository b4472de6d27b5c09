"""First-stage encode and decode time: fp32 and bf16 autocast against a naive fp32 path, in one run.

Encode is ``latent_moments(x)`` (what the latent cache and ``LatentDiffusion`` call: the KL
posterior's mean and std, the VQ pre-quantisation latent); decode is ``decode_latent(z)`` (VQ
quantises first). The naive path is the original's: the attention blocks' explicit einsum
``softmax(q kᵀ) v`` instead of the fused kernel, fp32. Weights are random (the architecture decides
the cost), inference mode, batches of ``--batch`` images of ``--size``². Modes are timed in
interleaved rounds and the minimum is reported (load from other processes only adds time).

    python -m benchmarks.bench_autoencoder --threads 1                   # CPU, 256², batch 1
    python -m benchmarks.bench_autoencoder --device cuda --batch 8 --modes naive-fp32,fp32,bf16,fp16
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from omegaconf import OmegaConf

import ldm.modules.autoencoder.blocks as ae_blocks
from benchmarks.common import (
    PeakMemory,
    add_threads_argument,
    autocast,
    describe_device,
    interleaved_min,
    naive_attention,
    set_threads,
)
from ldm.util import instantiate_from_config

#: name -> config file (the model section is used; the training loss is replaced by Identity)
MODELS = {
    "demo-kl-f4": "configs/demo/autoencoder_kl_f4.yaml",        # the demo's tiny KL-f4 (ch 32)
    "kl-f4": "configs/autoencoder/autoencoder_kl_f4.yaml",       # the original kl-f4 (ch 128, 1-2-4)
    "vq-f4": "configs/autoencoder/autoencoder_vq_f4.yaml",       # the original vq-f4 (celebahq-f4's stage 1)
}
ALL_MODES = ["naive-fp32", "fp32", "bf16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_first_stage(config_path: str, device: torch.device) -> torch.nn.Module:
    config = OmegaConf.load(config_path).model
    config.params.lossconfig = {"target": "torch.nn.Identity"}
    config.params.ckpt_path = None
    return instantiate_from_config(config).to(device).eval()


def mode_dtype(mode: str) -> torch.dtype | None:
    """Autocast dtype of a mode (``naive-fp32`` -> None, ``bf16`` -> bfloat16)."""
    return AUTOCAST[mode.split("-")[-1] if mode.startswith("naive") else mode.split("-")[0]]


def mode_calls(model, x, device, mode: str) -> dict:
    """``{"encode": fn, "decode": fn}`` running ``mode`` (each call sets up its own autocast / attention)."""
    naive = mode.startswith("naive")

    def context():
        stack = contextlib.ExitStack()
        if naive:
            stack.enter_context(naive_attention(ae_blocks))
        stack.enter_context(autocast(device.type, mode_dtype(mode)))
        return stack

    with torch.inference_mode(), context():
        z = model.latent_moments(x)[0].float()

    def encode():
        with torch.inference_mode(), context():
            model.latent_moments(x)

    def decode():
        with torch.inference_mode(), context():
            model.decode_latent(z)

    return {"encode": encode, "decode": decode}


def peak_memory(calls: dict, device: torch.device) -> dict:
    """Peak memory (MiB) of one encode + decode per mode (see :class:`benchmarks.common.PeakMemory`)."""
    peaks = {}
    for mode in {key[0] for key in calls}:
        with PeakMemory(device) as memory:
            calls[(mode, "encode")]()
            calls[(mode, "decode")]()
        peaks[mode] = memory.mib
    return peaks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--modes", default=",".join(ALL_MODES), help="naive-fp32, fp32, bf16, fp16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (minimum reported)")
    parser.add_argument("--device", default="cpu")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ALL_MODES + ["fp16", "naive-bf16"]:
            raise SystemExit(f"unknown mode {mode!r}; choose from {ALL_MODES + ['fp16']}")
    torch.manual_seed(0)
    where = describe_device(device)
    print(f"# first stage encode/decode, batch {args.batch} at {args.size}x{args.size}, device {device} ({where}),"
          f" min of {args.repeats} interleaved rounds")
    print("| model | params (M) | mode | encode s/img | decode s/img | encode vs naive | decode vs naive "
          "| enc+dec vs fp32 | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        model = build_first_stage(MODELS[name], device)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
        calls = {(mode, part): fn for mode in modes for part, fn in mode_calls(model, x, device, mode).items()}
        best = interleaved_min(calls, device, args.repeats)
        peaks = peak_memory(calls, device)
        results = {mode: (best[(mode, "encode")], best[(mode, "decode")], peaks[mode]) for mode in modes}
        naive = results.get("naive-fp32")
        fp32 = results.get("fp32")
        for mode, (enc, dec, mem) in results.items():
            vs_naive_e = f"{naive[0] / enc:.2f}x" if naive else "-"
            vs_naive_d = f"{naive[1] / dec:.2f}x" if naive else "-"
            vs_fp32 = f"{(fp32[0] + fp32[1]) / (enc + dec):.2f}x" if fp32 else "-"
            memory = "-" if mem is None else f"{mem:.0f}"
            print(f"| {name} | {n_params:.1f} | {mode} | {enc / args.batch:.3f} | {dec / args.batch:.3f} | "
                  f"{vs_naive_e} | {vs_naive_d} | {vs_fp32} | {memory} |", flush=True)
        del model


if __name__ == "__main__":
    main()
