"""First-stage encode and decode time: fp32 and bf16 autocast against a naive fp32 path, in one run.

Encode is ``latent_moments(x)`` (what the latent cache and ``LatentDiffusion`` call: the KL
posterior's mean and std, the VQ pre-quantisation latent); decode is ``decode_latent(z)`` (VQ
quantises first). The naive path is the original's: the attention blocks' explicit einsum
``softmax(q kᵀ) v`` instead of the fused kernel, fp32. Weights are random (the architecture decides
the cost), inference mode, batch of ``--batch`` images of ``--size``².

    python -m benchmarks.bench_autoencoder                               # CPU, 256², batch 1
    python -m benchmarks.bench_autoencoder --device cuda --batch 8 --modes naive-fp32,fp32,bf16,fp16
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from omegaconf import OmegaConf

import ldm.modules.autoencoder.blocks as ae_blocks
from benchmarks.common import naive_attention, peak_memory_mb, reset_peak_memory, time_call
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


def autocast(device: torch.device, mode: str):
    dtype = AUTOCAST[mode.split("-")[-1] if mode.startswith("naive") else mode.split("-")[0]]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def measure(model, x, device, mode: str, repeats: int) -> tuple[float, float, float | None]:
    """(encode s, decode s, peak MiB) of one mode."""
    naive = naive_attention(ae_blocks) if mode.startswith("naive") else contextlib.nullcontext()
    with naive, torch.inference_mode():
        with autocast(device, mode):
            z = model.latent_moments(x)[0]
        z = z.float()

        def encode():
            with autocast(device, mode):
                model.latent_moments(x)

        def decode():
            with autocast(device, mode):
                model.decode_latent(z)

        reset_peak_memory(device)
        encode_s = time_call(encode, device, warmup=1, repeats=repeats)
        decode_s = time_call(decode, device, warmup=1, repeats=repeats)
    return encode_s, decode_s, peak_memory_mb(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--modes", default=",".join(ALL_MODES), help="naive-fp32, fp32, bf16, fp16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode (median reported)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ALL_MODES + ["fp16", "naive-bf16"]:
            raise SystemExit(f"unknown mode {mode!r}; choose from {ALL_MODES + ['fp16']}")
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"# first stage encode/decode, batch {args.batch} at {args.size}x{args.size}, device {device} ({where}),"
          f" median of {args.repeats}")
    print("| model | params (M) | mode | encode s/img | decode s/img | encode vs naive | decode vs naive "
          "| enc+dec vs fp32 | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        model = build_first_stage(MODELS[name], device)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
        results = {mode: measure(model, x, device, mode, args.repeats) for mode in modes}
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
