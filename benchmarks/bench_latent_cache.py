"""LatentDiffusion train step: encoding every batch on the fly vs reading the latent cache.

Both paths run the same training step (forward, loss, backward, the model's optimiser on the UNet and a
trainable conditioner, the EMA update when the config has one; ``--precision bf16-mixed`` runs it under
bf16 autocast, encoder included); the on-the-fly path also runs the frozen first stage's encoder on the image
batch (no grad), the cached path draws ``z = scale_factor * (mean + std * eps)`` from a batch of
``LatentCacheDataset`` (written by ``ldm.data.latent_cache.encode_dataset`` at the start of the
run). Batches are fetched before timing; the cache's read time per batch is reported separately.
The paths are timed in turns (medians of wall-clock and of process CPU time): on a CPU shared with
other processes, wall time mostly measures waiting, and the CPU-time ratio with ``--threads 1`` is the
one that measures the work.
Weights are random (timing only).

    python -m benchmarks.bench_latent_cache                        # the demo configs (configs/demo/ldm_*_kl_f4.yaml)
    python -m benchmarks.bench_latent_cache --model celebahq-f4    # celebahq-f4 UNet + VQ-f4, 256 px, batch 1
    python -m benchmarks.bench_latent_cache --threads 1            # a busy shared CPU: read the CPU-time ratio
    python -m benchmarks.bench_latent_cache --precision bf16-mixed # both paths under bf16 autocast
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_unet import MODELS as UNETS  # noqa: E402
from benchmarks.common import (  # noqa: E402
    PRECISION_NAMES,
    REPO_ROOT,
    add_threads_argument,
    autocast,
    describe_device,
    set_threads,
    synchronize,
)

# LDM celebahq-ldm-vq-4 (used when configs/ldm/celebahq-f4.yaml is absent): unconditional, the paper's UNet
# (224 channels) on 64x64x3 latents of a VQ-f4 first stage (n_embed 8192) at 256x256.
VQ_F4 = {"target": "ldm.models.autoencoder.VQModelInterface",
         "params": {"embed_dim": 3, "n_embed": 8192, "lossconfig": {"target": "torch.nn.Identity"},
                    "ddconfig": dict(double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128,
                                     ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)}}
CELEBAHQ_F4 = {"target": "ldm.models.latent_diffusion.LatentDiffusion",
               "params": {"linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "first_stage_key": "image",
                          "image_size": 64, "channels": 3, "cond_stage_config": "__is_unconditional__",
                          "first_stage_config": VQ_F4, "use_ema": False,
                          "unet_config": {"target": "ldm.modules.unet.UNetModel", "params": UNETS["celebahq-f4"]}}}

# name -> (config files, fallback model node, image size, default batch)
SETUPS = {
    "demo": ([REPO_ROOT / "configs/demo/ldm_uncond_kl_f4.yaml", REPO_ROOT / "configs/demo/ldm_class_kl_f4.yaml",
              REPO_ROOT / "configs/demo/ldm_text_kl_f4.yaml"], None, 32, 32),
    "celebahq-f4": ([REPO_ROOT / "configs/ldm/celebahq-f4.yaml"], CELEBAHQ_F4, 256, 1),
}


def model_nodes(name: str) -> list[tuple[str, dict]]:
    """(label, LatentDiffusion model node) for each config of a setup."""
    from omegaconf import OmegaConf

    files, fallback, _, _ = SETUPS[name]
    nodes = [(path.stem, OmegaConf.to_container(OmegaConf.load(path), resolve=True)["model"])
             for path in files if path.is_file()]
    if not nodes and fallback is not None:
        nodes = [(f"{name} (embedded config)", fallback)]
    if not nodes:
        raise SystemExit(f"no config found for {name}: {[str(f) for f in files]}")
    return nodes


def build_model(node: dict, device: torch.device):
    from ldm.util import instantiate_from_config

    node = copy.deepcopy(node)
    params = node["params"]
    first = params["first_stage_config"]["params"]
    first["ckpt_path"] = None  # random weights: timing only
    first["lossconfig"] = {"target": "torch.nn.Identity"}
    params.pop("ckpt_path", None)
    return instantiate_from_config(node, node="model").to(device).train()


def make_step(model, batch, autocast_dtype=None):
    """One training step as the trainer runs it: ``LatentDiffusion.shared_step`` (which encodes an image
    batch or reads a cached one) under the precision's autocast, backward, the model's optimiser
    (:func:`ldm.optim.build_optimizer`), and the EMA update when the config uses EMA."""
    from ldm.optim import build_optimizer

    optimizer = build_optimizer(model.parameter_groups(), 1e-5, model.optimizer_config,
                                precision=PRECISION_NAMES[autocast_dtype])
    device_type = next(model.parameters()).device.type

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device_type, autocast_dtype):
            loss = model.shared_step(batch)[0]
        loss.backward()
        optimizer.step()
        if model.use_ema:
            model.model_ema(model.model)

    return step


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def interleaved_medians(runs: dict, device: torch.device, repeats: int) -> dict:
    """Median wall-clock and process-CPU seconds of each callable, timed in turns after one warm-up
    call each, so that load from other processes on a shared machine hits every path alike. On a busy
    CPU the CPU time (with ``--threads 1``) measures the work itself; wall time includes waiting."""
    for fn in runs.values():
        fn()
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    if os.environ.get("BENCH_VERBOSE"):
        print("# wall (s):", {name: [round(v, 3) for v in values] for name, values in wall.items()})
        print("# cpu (s): ", {name: [round(v, 3) for v in values] for name, values in cpu.items()})
    return {name: statistics.median(values) for name, values in wall.items()} | \
        {f"{name} cpu": statistics.median(values) for name, values in cpu.items()}


def bench_one(label: str, node: dict, image_size: int, batch_size: int, steps: int, device: torch.device,
              autocast_dtype: torch.dtype | None = None) -> dict:
    from torch.utils.data import DataLoader

    from ldm.data.datamodule import collate
    from ldm.data.latent_cache import LatentCacheDataset, encode_dataset
    from ldm.data.shapes import ShapesDataset

    torch.manual_seed(0)
    model = build_model(node, device)
    dataset = ShapesDataset(size=image_size, length=batch_size, seed=0)
    image_batch = to_device(collate([dataset[i] for i in range(batch_size)]), device)
    with tempfile.TemporaryDirectory() as cache_dir:
        synchronize(device)
        start = time.perf_counter()
        encode_dataset(model.first_stage_model, dataset, cache_dir, batch_size=batch_size, device=device)
        synchronize(device)
        encode_seconds = time.perf_counter() - start
        cache = LatentCacheDataset(cache_dir)
        cache.verify_first_stage(model.first_stage_model)
        start = time.perf_counter()
        cached_batch = to_device(next(iter(DataLoader(cache, batch_size=batch_size, collate_fn=collate))), device)
        read_seconds = time.perf_counter() - start
        cache_bytes = sum(f.stat().st_size for f in Path(cache_dir).glob("*.safetensors"))
    x = image_batch[model.first_stage_key].float()

    @torch.no_grad()
    def encode():
        with autocast(device.type, autocast_dtype):
            model.first_stage_model.latent_moments(x)

    runs = {"encoder": encode,
            "on-the-fly": make_step(model, image_batch, autocast_dtype),
            "cached": make_step(model, cached_batch, autocast_dtype)}
    times = interleaved_medians(runs, device, steps)
    n_unet = sum(p.numel() for p in model.model.parameters()) / 1e6
    n_first = sum(p.numel() for p in model.first_stage_model.parameters()) / 1e6
    print(f"# {label}: UNet {n_unet:.1f} M params, {type(model.first_stage_model).__name__} {n_first:.1f} M params, "
          f"{image_size} px -> latent {list(cache.latent_shape)}; "
          f"encode into the cache {encode_seconds / batch_size:.3f} "
          f"s/image (one time), cache read {read_seconds * 1e3:.1f} ms/batch, {cache_bytes / batch_size / 1024:.1f} "
          f"KiB/image on disk")
    return {"label": label, "batch": batch_size, **times, "speedup": times["on-the-fly"] / times["cached"],
            "speedup cpu": times["on-the-fly cpu"] / times["cached cpu"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SETUPS), default="demo")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 (demo, as its configs), 1 (celebahq-f4)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per path, interleaved (median reported); default 9 demo, 5 celebahq-f4")
    parser.add_argument("--device", default="cpu")
    add_threads_argument(parser)
    parser.add_argument("--precision", choices=[PRECISION_NAMES[None], PRECISION_NAMES[torch.bfloat16]], default="32",
                        help="both paths (encoder included) run under this precision's autocast, as in training")
    args = parser.parse_args(argv)
    autocast_dtype = {name: dtype for dtype, name in PRECISION_NAMES.items()}[args.precision]
    set_threads(args.threads)
    device = torch.device(args.device)
    _, _, image_size, default_batch = SETUPS[args.model]
    batch_size = args.batch or default_batch
    steps = args.steps or (9 if args.model == "demo" else 5)
    where = describe_device(device)
    print(f"# latent cache vs on-the-fly encoding, {args.model}, batch {batch_size}, precision {args.precision}, "
          f"device {device} ({where})")
    rows = [bench_one(label, node, image_size, batch_size, steps, device, autocast_dtype)
            for label, node in model_nodes(args.model)]
    print("| config | batch | encoder s/batch | on-the-fly s/step | cached s/step | images/s on-the-fly "
          "| images/s cached | speedup (wall) | encoder CPU s/batch | on-the-fly CPU s/step | cached CPU s/step "
          "| speedup (CPU time) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['batch']} | {r['encoder']:.3f} | {r['on-the-fly']:.3f} | {r['cached']:.3f} | "
              f"{r['batch'] / r['on-the-fly']:.2f} | {r['batch'] / r['cached']:.2f} | {r['speedup']:.2f}x | "
              f"{r['encoder cpu']:.3f} | {r['on-the-fly cpu']:.3f} | {r['cached cpu']:.3f} | {r['speedup cpu']:.2f}x |")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
