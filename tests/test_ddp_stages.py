"""Both stages under plain ``--strategy ddp`` with 2 CPU processes, and a ``torchrun`` launch.

* the demo GAN autoencoder trains through ``disc_start`` (discriminator idle, then active) and the
  class-conditional demo LDM trains a few steps: weights agree across ranks, and every validation
  metric (the checkpoint monitor included) is the same number on both ranks;
* ``python -m torch.distributed.run --nproc-per-node 2 main.py ...`` writes one run directory with
  identical weights on both ranks, and a second torchrun launch with ``-r`` resumes from its step.

:class:`DumpRank` is loaded by the training subprocesses from this file (``PYTHONPATH`` holds
``tests/``).
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

ROOT = Path(__file__).resolve().parents[1]
TINY_LDM = ROOT / "tests" / "fixtures" / "e2e_tiny_ldm.yaml"
QUIET = ["--enable_progress_bar", "false", "--enable_model_summary", "false", "--num_sanity_val_steps", "0",
         "lightning.callbacks.image_logger=null"]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]


def state_digest(state_dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if torch.is_tensor(state_dict[key]):
            digest.update(key.encode())
            digest.update(state_dict[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class DumpRank(L.Callback):
    """Each rank writes ``<tag>-rank<k>.json``: weights digest, steps, the validation metrics it holds
    after each validation run, and a fingerprint of its first training batch."""

    def __init__(self, out_dir: str, tag: str = "run"):
        self.out_dir, self.tag = out_dir, tag
        self.record: dict = {"validations": []}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["start_step"] = int(trainer.global_step)
        self.record["start_digest"] = state_digest(pl_module.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "first_batch" not in self.record:
            self.record["first_batch"] = float(batch["image"].double().sum())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.record["validations"].append({k: float(v) for k, v in trainer.callback_metrics.items()
                                               if k.startswith("val/")})

    def on_train_end(self, trainer, pl_module) -> None:
        state = pl_module.state_dict()
        self.record.update(digest=state_digest(state), global_step=int(trainer.global_step),
                           world_size=int(trainer.world_size),
                           key_digests={k: state_digest({k: v})[:12] for k, v in state.items()})
        os.makedirs(self.out_dir, exist_ok=True)
        Path(self.out_dir, f"{self.tag}-rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def _dump_overrides(out_dir: Path, tag: str = "run") -> list[str]:
    return ["lightning.callbacks.rank_dump.target=test_ddp_stages.DumpRank",
            f"lightning.callbacks.rank_dump.params.out_dir={out_dir}",
            f"lightning.callbacks.rank_dump.params.tag={tag}"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _launch(prefix: list[str], args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([*prefix, "main.py", *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _ranks(out_dir: Path, tag: str = "run") -> list[dict]:
    return [json.loads((out_dir / f"{tag}-rank{r}.json").read_text()) for r in (0, 1)]


def _assert_ranks_agree(ranks: list[dict], steps: int, monitor: str) -> None:
    assert all(r["world_size"] == 2 and r["global_step"] == steps for r in ranks)
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]   # each rank trained on its own shard
    differing = [k for k, v in ranks[0]["key_digests"].items() if ranks[1]["key_digests"].get(k) != v]
    assert ranks[0]["digest"] == ranks[1]["digest"], differing   # ... and the replicas stayed identical
    assert ranks[0]["validations"] and len(ranks[0]["validations"]) == len(ranks[1]["validations"])
    for mine, other in zip(ranks[0]["validations"], ranks[1]["validations"]):
        assert monitor in mine
        assert mine == other                                    # every metric reduced over both ranks


@pytest.mark.slow
def test_gan_autoencoder_trains_under_plain_ddp_through_disc_start(tmp_path):
    """Before the model asked for ``find_unused_parameters`` this failed with "parameters that were not
    used in producing the loss" (the discriminator idles before ``disc_start``)."""
    dumps = tmp_path / "dumps"
    proc = _launch([sys.executable], [
        "-b", "configs/demo/autoencoder_kl_f4.yaml", "-t", "-l", str(tmp_path / "logs"), *DDP, *QUIET,
        "--max_steps", "6", "--val_check_interval", "3", "--limit_val_batches", "2", "--precision", "32",
        "model.params.lossconfig.params.disc_start=2", "model.params.ddconfig.ch_mult=[1,1]",
        "data.params.batch_size=2", *_dump_overrides(dumps)])
    assert "DDP runs with find_unused_parameters=True" in proc.stdout
    ranks = _ranks(dumps)
    _assert_ranks_agree(ranks, steps=6, monitor="val/rec_loss")  # 4 autoencoder + 2 discriminator updates
    assert {"val/psnr", "val/ssim", "val/disc_loss"} <= set(ranks[0]["validations"][-1])


@pytest.mark.slow
def test_class_conditional_demo_ldm_trains_under_ddp_with_synced_validation(tmp_path):
    dumps = tmp_path / "dumps"
    unet = "model.params.unet_config.params"
    _launch([sys.executable], [
        "-b", "configs/demo/ldm_class_kl_f4.yaml", "-t", "-l", str(tmp_path / "logs"), *DDP, *QUIET,
        "--max_steps", "4", "--val_check_interval", "2", "--limit_val_batches", "2", "--precision", "32",
        "model.params.timesteps=100", "model.params.scale_by_std_batches=1", f"{unet}.model_channels=32",
        f"{unet}.num_res_blocks=1", f"{unet}.attention_resolutions=[2]", "data.params.batch_size=4",
        *_dump_overrides(dumps)])
    _assert_ranks_agree(_ranks(dumps), steps=4, monitor="val/loss_simple_ema")


def test_apply_model_ddp_requests_respects_an_explicit_choice():
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from ldm.distributed import apply_model_ddp_requests

    class Gan:
        ddp_find_unused_parameters = True

    plain = DDPStrategy()
    assert "find_unused_parameters=True" in apply_model_ddp_requests(plain, Gan())
    assert plain._ddp_kwargs["find_unused_parameters"] is True
    explicit = DDPStrategy(find_unused_parameters=False)
    assert apply_model_ddp_requests(explicit, Gan()) is None
    assert explicit._ddp_kwargs["find_unused_parameters"] is False
    other = DDPStrategy()
    assert apply_model_ddp_requests(other, object()) is None and "find_unused_parameters" not in other._ddp_kwargs
    assert apply_model_ddp_requests(SingleDeviceStrategy("cpu"), Gan()) is None


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs" / "autoencoder").glob("*.yaml")))
def test_every_autoencoder_config_asks_for_unused_parameter_detection(config):
    """The seven configs under plain ``ddp`` (each was run with 2 CPU processes, see docs/cli.md): the
    model they build asks DDP for ``find_unused_parameters`` and no config overrides the strategy."""
    from omegaconf import OmegaConf

    from ldm.distributed import wants_find_unused_parameters
    from ldm.util import get_obj_from_str

    cfg = OmegaConf.load(ROOT / "configs" / "autoencoder" / config)
    assert wants_find_unused_parameters(get_obj_from_str(cfg.model.target))
    assert "strategy" not in (cfg.lightning.get("trainer") or {})


def test_adopt_launcher_world_follows_torchrun():
    from ldm.distributed import adopt_launcher_world

    kwargs = {"devices": 1}
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}
    assert "devices=4, num_nodes=2" in adopt_launcher_world(kwargs, torchrun)
    assert kwargs == {"devices": 4, "num_nodes": 2}
    assert adopt_launcher_world(kwargs, torchrun) is None                        # already agrees
    assert adopt_launcher_world({"devices": [0, 1, 2, 3], "num_nodes": 2}, torchrun) is None
    plain = {"devices": 1}
    assert adopt_launcher_world(plain, {"LOCAL_WORLD_SIZE": "4"}) is None and plain == {"devices": 1}


@pytest.mark.slow
def test_torchrun_launch_writes_one_run_and_resumes(tmp_path):
    logs, dumps = tmp_path / "logs", tmp_path / "dumps"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # no --devices: main.py takes devices / nodes from torchrun (else: 2 independent runs in one directory)
    proc = _launch(torchrun, ["-b", str(TINY_LDM), "-t", "-l", str(logs), "-n", "tr", "--accelerator", "cpu",
                              "--strategy", "ddp", *QUIET, "--max_steps", "2", *_dump_overrides(dumps, "first")])
    assert "torchrun started 2 process(es) per node on 1 node(s): devices=2, num_nodes=1" in proc.stdout
    runs = [p for p in logs.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs                                  # one run directory for both processes
    first = _ranks(dumps, "first")
    assert first[0]["digest"] == first[1]["digest"] and first[0]["global_step"] == 2
    assert first[0]["first_batch"] != first[1]["first_batch"]

    _launch(torchrun, ["-r", str(runs[0]), "-t", *DDP, *QUIET, "--max_steps", "4",
                       *_dump_overrides(dumps, "resumed")])
    assert [p for p in logs.iterdir() if p.is_dir()] == runs    # the resume wrote into the same run
    resumed = _ranks(dumps, "resumed")
    for rank in resumed:
        assert rank["start_step"] == 2 and rank["start_digest"] == first[0]["digest"]  # restored, not restarted
        assert rank["global_step"] == 4
    assert resumed[0]["digest"] == resumed[1]["digest"] != first[0]["digest"]
    from ldm.checkpoint import safe_torch_load

    last = safe_torch_load(runs[0] / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4 and state_digest(last["state_dict"]) == resumed[0]["digest"]
