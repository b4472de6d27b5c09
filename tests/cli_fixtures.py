"""Tiny LightningModule / DataModule for the CLI, callback and checkpoint tests (CPU, milliseconds).

Referenced from test configs as ``cli_fixtures.TinyModule`` / ``cli_fixtures.TinyData``; the
tests put this folder on ``sys.path`` (and on ``PYTHONPATH`` for subprocess runs).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class TinyImages(Dataset):
    """Deterministic dict samples: ``image`` 3×8×8 in [-1, 1]."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=generator) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}


class TinyData(L.LightningDataModule):
    def __init__(self, batch_size: int = 2, n_train: int = 16, validation: bool = False, test: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.n_train = n_train
        self.validation = validation
        self.test = test

    def train_dataloader(self):
        return DataLoader(TinyImages(self.n_train, seed=0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TinyImages(4, seed=1), batch_size=self.batch_size) if self.validation else []

    def test_dataloader(self):
        return DataLoader(TinyImages(4, seed=2), batch_size=self.batch_size) if self.test else []


class TinyModule(L.LightningModule):
    """A 1×1-conv "denoiser". Counts optimiser steps in a buffer so resumes can be checked.

    ``fail_at_step``: raise at that global step (exception checkpoint test);
    ``signal_at_step``: send SIGUSR1 to this process at that step (signal checkpoint test).
    """

    def __init__(self, width: int = 3, monitor: str | None = None, fail_at_step: int = -1,
                 signal_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Conv2d(3, width, 1)
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))
        self.learning_rate = 1e-3
        self.fail_at_step = fail_at_step
        self.signal_at_step = signal_at_step
        self.tested = False
        self.calls = 0  # training steps run by this process (not saved)
        if monitor:
            self.monitor = monitor

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError(f"planned failure at step {self.global_step}")
        if self.global_step == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGUSR1)
        loss = self(batch["image"]).pow(2).mean()
        self.steps_taken += 1
        self.calls += 1
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self(batch["image"]).pow(2).mean())

    def test_step(self, batch, batch_idx):
        self.tested = True
        self.log("test/loss", self(batch["image"]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch, split="train", N=4, **kwargs):
        x = batch["image"][:N]
        return {"inputs": x, "reconstructions": torch.tanh(self(x)), "caption": ["not an image"]}


TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def tiny_config(*, validation: bool = False, test: bool = False, n_train: int = 16, max_steps: int = 4,
                model_params: dict | None = None, callbacks: dict | None = None) -> dict:
    """A complete main.py config around TinyModule / TinyData."""
    config = {
        "model": {"base_learning_rate": 0.01, "target": "cli_fixtures.TinyModule",
                  "params": {"width": 3, **(model_params or {})}},
        "data": {"target": "cli_fixtures.TinyData",
                 "params": {"batch_size": 2, "n_train": n_train, "validation": validation, "test": test}},
        "lightning": {
            "trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                        "enable_model_summary": False, "log_every_n_steps": 1},
            "callbacks": callbacks or {},
        },
    }
    return config


def write_yaml(path, obj) -> Path:
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(obj), path)
    return path


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env
