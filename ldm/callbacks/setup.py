"""Create the run directory and snapshot the configs (global rank 0 only).

Writes ``configs/<now>-project.yaml`` (everything but the ``lightning`` section) and
``configs/<now>-lightning.yaml`` (``{lightning: ...}``, with the trainer arguments actually used),
as the original ``main.SetupCallback`` did. ``-r`` merges every file in ``configs/`` in name order,
so a resumed run sees the latest settings.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf


class SetupCallback(L.Callback):
    def __init__(self, resume: Any, now: str, logdir: str, ckptdir: str, cfgdir: str,
                 config: Mapping | None = None, lightning_config: Mapping | None = None,
                 verbose: bool = True) -> None:
        super().__init__()
        self.resume = resume
        self.now = now
        self.logdir = str(logdir)
        self.ckptdir = str(ckptdir)
        self.cfgdir = str(cfgdir)
        self.config = OmegaConf.create(config if config is not None else {})
        self.lightning_config = OmegaConf.create(lightning_config if lightning_config is not None else {})
        self.verbose = verbose
        self._printed = False
        self._stem: str | None = None

    def _snapshot_stem(self) -> str:
        """``now``, or ``now.1``, ``now.2`` ... if another start in the same second already wrote
        snapshots (they then still sort after it, so a resume merges them in order)."""
        if self._stem is None:
            stem, n = self.now, 0
            while any(os.path.exists(os.path.join(self.cfgdir, f"{stem}-{kind}.yaml"))
                      for kind in ("project", "lightning")):
                n += 1
                stem = f"{self.now}.{n}"
            self._stem = stem
        return self._stem

    @property
    def project_file(self) -> str:
        return os.path.join(self.cfgdir, f"{self._snapshot_stem()}-project.yaml")

    @property
    def lightning_file(self) -> str:
        return os.path.join(self.cfgdir, f"{self._snapshot_stem()}-lightning.yaml")

    def write(self) -> None:
        for directory in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(directory, exist_ok=True)
        callbacks = self.lightning_config.get("callbacks") or {}
        if "metrics_over_trainsteps_checkpoint" in callbacks:
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        if self.verbose and not self._printed:
            self._printed = True
            rank_zero_info("Project config\n" + OmegaConf.to_yaml(self.config))
            rank_zero_info("Lightning config\n" + OmegaConf.to_yaml(self.lightning_config))
        OmegaConf.save(self.config, self.project_file)
        OmegaConf.save(OmegaConf.create({"lightning": self.lightning_config}), self.lightning_file)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank == 0:
            from ldm.callbacks.checkpoint_io import remove_stale_temporaries

            for path in remove_stale_temporaries(self.ckptdir):
                rank_zero_info(f"removed {path}, left by an interrupted checkpoint write")
            self.write()
