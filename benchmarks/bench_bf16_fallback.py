"""What bf16 costs on a CPU without native bf16 kernels: one 3x3 convolution, fp32 against bf16 autocast,
with oneDNN on (this CPU's real path) and off (PyTorch's reference kernels, the path a CPU without AVX-512 /
AMX takes for bf16 convolutions).

    python -m benchmarks.bench_bf16_fallback [--channels 128 --size 32 --batch 8 --threads 1]

Prints the CPU line of ``benchmarks.common.describe_device`` and the seconds and ratio of each path.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import add_threads_argument, autocast, describe_device, set_threads, time_call


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device("cpu")
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    w = torch.randn(args.channels, args.channels, 3, 3)

    def conv(dtype):
        def run():
            with autocast("cpu", dtype):
                F.conv2d(x, w, padding=1)
        return run

    results = {}
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn):
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                repeats = 3 if onednn or dtype is None else 1  # the reference bf16 kernel takes seconds
                results[(onednn, name)] = time_call(conv(dtype), device, warmup=1, repeats=repeats, reduce=min)
    print(f"# 3x3 convolution {args.batch}x{args.channels}x{args.size}x{args.size}, {describe_device(device)}")
    print("| path | fp32 s | bf16-mixed s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for onednn, label in ((True, "oneDNN (this CPU)"), (False, "reference kernels (oneDNN off)")):
        fp32, bf16 = results[(onednn, "fp32")], results[(onednn, "bf16")]
        print(f"| {label} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.1f}x |")
    return results


if __name__ == "__main__":
    main()
