"""UNet train-step throughput and MFU: ours (fp32, bf16-mixed, channels-last, compiled) vs a naive path.

The naive path is the original's recipe, reproduced here on the same UNet weights: einsum attention,
gradient checkpointing forced on in every block, fp32. Each row is a full train step (forward, MSE
loss in fp32, backward, AdamW step: fused for ours, PyTorch's default for naive). MFU = model FLOPs per second
(``torch.utils.flop_counter``) /
the measured matmul peak of the precision the step runs in.

    python benchmarks/bench_unet.py --model celebahq-f4 --batch 1 --steps 3
    python benchmarks/bench_unet.py --model celebahq-f4 --device cuda --batch 32 --modes fp32,bf16,bf16-compiled
"""
from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F

import ldm.modules.attention as attention_module
from benchmarks.common import (
    PRECISION_NAMES,
    PeakMemory,
    add_threads_argument,
    autocast,
    count_flops,
    describe_device,
    matmul_peak_flops,
    naive_attention,
    set_checkpointing,
    set_threads,
    time_call,
)
from ldm.modules.unet import UNetModel
from ldm.optim import build_optimizer

MODELS = {
    # LDM celebahq-ldm-vq-4: the UNet on 64x64x3 latents of a 256x256 image (VQ-f4).
    "celebahq-f4": dict(image_size=64, in_channels=3, out_channels=3, model_channels=224,
                        attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 2, 3, 4],
                        num_head_channels=32),
    # the demo's latent UNet (configs/demo): 8x8x3 latents of 32x32 shapes, cross-attention to text.
    "demo": dict(image_size=8, in_channels=3, out_channels=3, model_channels=64, attention_resolutions=[1, 2],
                 num_res_blocks=1, channel_mult=[1, 2], num_head_channels=32, use_spatial_transformer=True,
                 context_dim=64, transformer_depth=1),
}

ALL_MODES = ["naive-fp32", "fp32", "bf16", "fp32-channels-last", "bf16-channels-last", "bf16-compiled"]


def make_step(model, params, batch, device, autocast_dtype, channels_last, naive=False):
    """One full train step closure on random data of the UNet's shape.

    The optimiser is ours (:func:`ldm.optim.build_optimizer`: fused AdamW) or, for the naive path, the
    original's ``torch.optim.AdamW`` with PyTorch's default implementation (a per-parameter loop on CPU).
    """
    x = torch.randn(batch, params["in_channels"], params["image_size"], params["image_size"], device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,), device=device)
    context = torch.randn(batch, 77 if params.get("context_dim", 0) > 128 else 8,
                          params["context_dim"], device=device) if params.get("use_spatial_transformer") else None
    target = torch.randn_like(x)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-5) if naive
                 else build_optimizer(model.parameters(), 1e-5, precision=PRECISION_NAMES[autocast_dtype]))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device.type, autocast_dtype):
            out = model(x, t, context=context)
        loss = F.mse_loss(out.float(), target.float())
        loss.backward()
        optimizer.step()

    return step


def build(mode: str, base: torch.nn.Module, device):
    """A fresh copy of ``base`` configured for ``mode``; returns (runner, autocast dtype or None, channels_last)."""
    model = copy.deepcopy(base).to(device)
    channels_last = "channels-last" in mode
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    set_checkpointing(model, mode.startswith("naive"))
    runner = torch.compile(model) if "compiled" in mode else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode.split("-")[0])
    return runner, dtype, channels_last


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="celebahq-f4")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(ALL_MODES))
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # fp32 on CUDA runs convolutions on TF32 tensor cores by default; let matmuls do the same so the
        # fp32 rows and the fp32 peak below measure the same arithmetic (else MFU would exceed 100%).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # the training configs set `lightning.trainer.benchmark: true` (as the original's): let cuDNN pick
        # its fastest convolution algorithms for these fixed shapes, for every mode alike
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    params = MODELS[args.model]
    base = UNetModel(**params).train()
    n_params = sum(p.numel() for p in base.parameters())

    peaks = {torch.float32: matmul_peak_flops(device, torch.float32),
             torch.bfloat16: matmul_peak_flops(device, torch.bfloat16)}
    print(f"# UNet '{args.model}' ({n_params / 1e6:.1f} M params), batch {args.batch}, device {device}"
          f" ({describe_device(device)})")
    print(f"# measured matmul peak: fp32 {peaks[torch.float32] / 1e12:.2f} TFLOP/s, "
          f"bf16 {peaks[torch.bfloat16] / 1e12:.2f} TFLOP/s")

    # counted on einsum attention (FlopCounterMode does not see every fused SDPA kernel), on a copy of its
    # own so that each mode below allocates its gradients and optimiser state inside its memory measurement
    runner, dtype, channels_last = build("fp32", base, device)
    with naive_attention(attention_module):
        flops = count_flops(make_step(runner, params, args.batch, device, dtype, channels_last))
    del runner
    rows = []
    for mode in args.modes.split(","):
        runner, dtype, channels_last = build(mode, base, device)
        step = make_step(runner, params, args.batch, device, dtype, channels_last, naive=mode.startswith("naive"))
        ctx = naive_attention(attention_module) if mode.startswith("naive") else contextlib.nullcontext()
        with ctx, PeakMemory(device) as memory:
            seconds = time_call(step, device, warmup=2 if "compiled" in mode else 1, repeats=args.steps)
        peak = peaks[dtype or torch.float32]
        rows.append((mode, seconds, args.batch / seconds, flops / seconds / peak, memory.mib))
        del runner, step

    naive_seconds = rows[0][1] if rows[0][0] == "naive-fp32" else None
    print(f"# model FLOPs per train step: {flops / 1e9:.1f} GFLOP")
    memory_note = "allocated" if device.type == "cuda" else "RSS growth over the weights"
    print(f"| mode | s/step | images/s | MFU | vs naive fp32 | peak mem (MiB, {memory_note}) |")
    print("|---|---|---|---|---|---|")
    for mode, seconds, ips, mfu, mem in rows:
        ratio = f"{naive_seconds / seconds:.2f}x" if naive_seconds else "-"
        memory = mem if mem is None else f"{mem:.0f}"
        print(f"| {mode} | {seconds:.3f} | {ips:.2f} | {mfu * 100:.1f}% | {ratio} | {memory} |")


if __name__ == "__main__":
    main()
