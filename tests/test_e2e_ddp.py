"""Multi-process DDP on the CPU: ``python main.py ... --accelerator cpu --devices 2 --strategy ddp``.

After a few steps of a tiny latent diffusion model with ``scale_by_std``: every rank holds the same
weights (model, EMA and the estimated ``scale_factor``, which must pool the latents of both ranks'
different batches), the checkpoint holds those weights, and the run directory, ``last.ckpt`` and the
logged images are written once (rank 0 only).

The two callbacks below are loaded by the training subprocesses from this file (``PYTHONPATH`` holds
``tests/``); they only import lightning and torch, so importing this module there is cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from ldm.callbacks.image_logger import ImageLogger

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "fixtures" / "e2e_tiny_ldm.yaml"


def state_digest(state_dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if torch.is_tensor(value):
            digest.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class DumpRankState(L.Callback):
    """Each rank writes ``rank<k>.json`` (state-dict digest, scale_factor, step) when training ends."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        record = {"digest": state_digest(pl_module.state_dict()), "scale_factor": float(pl_module.scale_factor),
                  "global_step": int(trainer.global_step), "world_size": int(trainer.world_size),
                  "first_batch_labels": getattr(pl_module, "_seen_labels", None)}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # proves the ranks saw different data
            pl_module._seen_labels = [int(v) for v in batch["class_label"]]


class RecordingImageLogger(ImageLogger):
    """The project's ImageLogger, also appending ``rank<TAB>file`` to a log for every image it saves."""

    def __init__(self, record_file: str, **kwargs):
        super().__init__(**kwargs)
        self.record_file = record_file

    def log_local(self, save_dir, split, images, global_step, current_epoch, batch_idx):
        grids = super().log_local(save_dir, split, images, global_step, current_epoch, batch_idx)
        rank = os.environ.get("LOCAL_RANK", "0")
        with open(self.record_file, "a") as handle:
            handle.writelines(f"{rank}\t{key}@{global_step}\n" for key in images)
        return grids


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_and_write_once(tmp_path):
    logs, dumps, record = tmp_path / "logs", tmp_path / "dumps", tmp_path / "images.tsv"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "main.py", "-b", str(TINY_CONFIG), "-t", "-l", str(logs), "-n", "ddp",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max_steps", "3",
           "lightning.callbacks.image_logger=null",
           "lightning.callbacks.rank_dump.target=test_e2e_ddp.DumpRankState",
           f"lightning.callbacks.rank_dump.params.out_dir={dumps}",
           "lightning.callbacks.recording_images.target=test_e2e_ddp.RecordingImageLogger",
           f"lightning.callbacks.recording_images.params.record_file={record}",
           "lightning.callbacks.recording_images.params.batch_frequency=2",
           "lightning.callbacks.recording_images.params.max_images=2",
           "lightning.callbacks.recording_images.params.increase_log_steps=false",
           "lightning.callbacks.recording_images.params.log_images_kwargs.ddim_steps=2"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 3 for r in ranks)
    assert ranks[0]["first_batch_labels"] != ranks[1]["first_batch_labels"]  # different shards of the data
    assert ranks[0]["digest"] == ranks[1]["digest"]                          # identical weights, EMA, buffers
    assert ranks[0]["scale_factor"] == ranks[1]["scale_factor"] != 1.0       # estimated, and agreed on

    runs = [p for p in logs.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs                                            # one run directory
    ckpts = sorted(p.name for p in (runs[0] / "checkpoints").rglob("*.ckpt"))
    assert ckpts.count("last.ckpt") == 1
    from ldm.checkpoint import safe_torch_load

    checkpoint = safe_torch_load(runs[0] / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    assert state_digest(checkpoint["state_dict"]) == ranks[0]["digest"]     # the checkpoint holds those weights
    assert float(checkpoint["state_dict"]["scale_factor"]) == ranks[0]["scale_factor"]

    lines = [line.split("\t") for line in record.read_text().splitlines()]
    assert lines, "the image logger saved nothing"
    assert {rank for rank, _ in lines} == {"0"}                            # only rank 0 writes images
    names = [name for _, name in lines]
    assert len(names) == len(set(names))                                   # each image written once
    on_disk = list((runs[0] / "images" / "train").iterdir())
    assert len(on_disk) == len(names)
