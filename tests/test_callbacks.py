"""ImageLogger, SetupCallback, EmergencyCheckpoint (signal / exception), CUDACallback, loggers."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import TinyData, TinyModule, tiny_config, write_yaml  # noqa: E402
from ldm.callbacks import CUDACallback, EmergencyCheckpoint, ImageLogger, SetupCallback  # noqa: E402
from ldm.cli.components import build_callbacks, build_logger, build_model_checkpoint  # noqa: E402
from ldm.cli.config import CLIError  # noqa: E402
from ldm.cli.logdir import RunPaths  # noqa: E402
from ldm.cli.train import main  # noqa: E402


def _trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


# -- ImageLogger ---------------------------------------------------------------------------
def test_image_logger_schedule_matches_the_original():
    doubling = ImageLogger(batch_frequency=4, max_images=1)
    assert [step for step in range(1, 13) if doubling.check_frequency(step)] == [1, 2, 4, 8, 12]
    fixed = ImageLogger(batch_frequency=4, max_images=1, increase_log_steps=False)
    assert [step for step in range(0, 13) if fixed.check_frequency(step)] == [4, 8, 12]
    first = ImageLogger(batch_frequency=4, max_images=1, increase_log_steps=False, log_first_step=True)
    assert first.check_frequency(0)
    with pytest.raises(ValueError, match="batch_frequency"):
        ImageLogger(batch_frequency=0, max_images=1)


def test_grid_maps_minus_one_to_black_and_one_to_white():
    images = torch.stack([torch.full((3, 2, 2), -1.0), torch.full((3, 2, 2), 1.0), torch.zeros(3, 2, 2)])
    grid = ImageLogger.to_grid(images, nrow=4, rescale=True)
    # make_grid: padding 2, three 2x2 tiles in a row -> 6 x 14
    assert grid.shape == (6, 14, 3) and grid.dtype == np.uint8
    assert (grid[2:4, 2:4] == 0).all() and (grid[2:4, 6:8] == 255).all() and (grid[2:4, 10:12] == 128).all()


def test_image_logger_writes_train_and_val_pngs(tmp_path):
    logger_cb = ImageLogger(batch_frequency=2, max_images=3, increase_log_steps=False, save_dir=str(tmp_path))
    trainer = _trainer(tmp_path, [logger_cb, CUDACallback()], val_check_interval=2, num_sanity_val_steps=1,
                       limit_val_batches=2)
    trainer.fit(TinyModule(), TinyData(batch_size=4, validation=True))
    train = sorted(p.name for p in (tmp_path / "images" / "train").iterdir())
    assert train == ["inputs_gs-000002_e-000000_b-000001.png", "inputs_gs-000004_e-000000_b-000003.png",
                     "reconstructions_gs-000002_e-000000_b-000001.png",
                     "reconstructions_gs-000004_e-000000_b-000003.png"]  # the caption entry is skipped
    val = sorted(p.name for p in (tmp_path / "images" / "val").iterdir())
    assert val == ["inputs_gs-000002_e-000000_b-000000.png", "inputs_gs-000004_e-000000_b-000000.png",
                   "reconstructions_gs-000002_e-000000_b-000000.png",
                   "reconstructions_gs-000004_e-000000_b-000000.png"]  # first val batch only; no sanity check
    png = np.asarray(Image.open(tmp_path / "images" / "train" / train[0]))
    assert png.shape == (12, 32, 3)  # max_images=3 tiles of 8x8 in one row, padding 2


def test_image_logger_writes_validation_inputs_exactly(tmp_path):
    """The val loader is unshuffled, so the logged grid must equal the rescaled first images."""
    logger_cb = ImageLogger(batch_frequency=1, max_images=2, increase_log_steps=False, save_dir=str(tmp_path))
    trainer = _trainer(tmp_path, [logger_cb], max_steps=1, limit_val_batches=1, num_sanity_val_steps=0,
                       val_check_interval=1)
    data = TinyData(batch_size=2, validation=True)
    trainer.fit(TinyModule(), data)
    (png_path,) = (tmp_path / "images" / "val").glob("inputs_*.png")
    png = np.asarray(Image.open(png_path)).astype(int)
    expected = next(iter(data.val_dataloader()))["image"]
    first = ((expected[0] + 1) / 2 * 255).round().permute(1, 2, 0).numpy().astype(int)
    assert np.abs(png[2:10, 2:10] - first).max() <= 1


# -- SetupCallback -------------------------------------------------------------------------
def test_setup_callback_snapshots_both_configs(tmp_path):
    from omegaconf import OmegaConf

    callback = SetupCallback(resume="", now="NOW", logdir=str(tmp_path / "run"),
                             ckptdir=str(tmp_path / "run/checkpoints"),
                             cfgdir=str(tmp_path / "run/configs"), config={"model": {"target": "a.B"}},
                             lightning_config={"trainer": {"max_steps": 3},
                                               "callbacks": {"metrics_over_trainsteps_checkpoint": {}}},
                             verbose=False)
    callback.write()
    assert OmegaConf.load(tmp_path / "run/configs/NOW-project.yaml") == OmegaConf.create({"model": {"target": "a.B"}})
    lightning = OmegaConf.load(tmp_path / "run/configs/NOW-lightning.yaml")
    assert lightning.lightning.trainer.max_steps == 3
    assert (tmp_path / "run/checkpoints/trainstep_checkpoints").is_dir()
    callback.write()  # the same start writing again (fit, then test) overwrites its own files
    resumed = SetupCallback(resume="x", now="NOW", logdir=str(tmp_path / "run"),
                            ckptdir=str(tmp_path / "run/checkpoints"),
                            cfgdir=str(tmp_path / "run/configs"), config={"model": {"target": "a.C"}}, verbose=False)
    resumed.write()  # a second start within the same second must not overwrite the first snapshot
    names = sorted(p.name for p in (tmp_path / "run/configs").glob("*-project.yaml"))
    assert names == ["NOW-project.yaml", "NOW.1-project.yaml"]  # name order == start order
    assert OmegaConf.load(tmp_path / "run/configs" / names[-1]).model.target == "a.C"


# -- emergency checkpoints -----------------------------------------------------------------
def test_sigusr1_saves_a_checkpoint_at_the_end_of_the_batch(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    callback = EmergencyCheckpoint(ckpt, on_exception=False)
    before = signal.getsignal(signal.SIGUSR1)
    trainer = _trainer(tmp_path, [callback], max_steps=4)
    trainer.fit(TinyModule(signal_at_step=2), TinyData())
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 3  # the batch that got the signal finished its step first
    assert signal.getsignal(signal.SIGUSR1) == before  # handler removed after training


def test_exception_saves_last_ckpt_unless_debug(tmp_path):
    config = write_yaml(tmp_path / "fail.yaml", tiny_config(max_steps=20, n_train=64, model_params={"fail_at_step": 3}))
    with pytest.raises(RuntimeError, match="planned failure at step 3"):
        main(["-b", str(config), "-t", "-l", str(tmp_path / "logs")])
    (run_dir,) = list((tmp_path / "logs").iterdir())
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and int(saved["state_dict"]["steps_taken"]) == 3

    with pytest.raises(RuntimeError, match="planned failure"):
        main(["-b", str(config), "-t", "-d", "-l", str(tmp_path / "debug")])
    (moved,) = list((tmp_path / "debug" / "debug_runs").iterdir())  # -d moves the run aside
    assert not (moved / "checkpoints" / "last.ckpt").exists()
    assert [p.name for p in (tmp_path / "debug").iterdir()] == ["debug_runs"]


# -- CLI wiring of callbacks, checkpoints and loggers --------------------------------------
def _paths(tmp_path) -> RunPaths:
    return RunPaths(logdir=tmp_path / "run", nowname="NOW_x", now="NOW")


def test_callback_defaults_merge_with_the_config_and_can_be_removed(tmp_path):
    callbacks = build_callbacks({"image_logger": {"target": "main.ImageLogger", "params": {"batch_frequency": 9}},
                                 "learning_rate_logger": None,
                                 "extra": {"target": "pytorch_lightning.callbacks.LearningRateMonitor"}},
                                _paths(tmp_path), debug=False, with_logger=True)
    by_type = {type(c).__name__: c for c in callbacks}
    image_logger = by_type["ImageLogger"]
    assert image_logger.batch_freq == 9 and image_logger.max_images == 4  # user value + default kept
    assert image_logger.save_dir == str(tmp_path / "run")  # grids go to <run>/images whatever the logger
    assert set(by_type) == {"ImageLogger", "CUDACallback", "ClampValCheckInterval", "EmergencyCheckpoint",
                            "LearningRateMonitor"}
    assert by_type["EmergencyCheckpoint"].ckpt_path.endswith("last.ckpt")


def test_top_k_by_monitor_only_with_validation(tmp_path):
    paths = _paths(tmp_path)
    ranked = build_model_checkpoint(None, paths, model_monitor="val/loss", has_validation=True)
    assert ranked.monitor == "val/loss" and ranked.save_top_k == 3 and ranked.save_last
    plain = build_model_checkpoint(None, paths, model_monitor="val/loss", has_validation=False)
    assert plain.monitor is None and plain.save_last and Path(plain.dirpath) == paths.ckptdir
    custom = build_model_checkpoint({"params": {"every_n_train_steps": 7}}, paths, model_monitor=None,
                                    has_validation=False)
    assert custom._every_n_train_steps == 7


def test_model_monitor_is_used_end_to_end_with_validation(tmp_path):
    config = write_yaml(tmp_path / "val.yaml", tiny_config(validation=True, max_steps=8,
                                                           model_params={"monitor": "val/loss"}))
    result = main(["-b", str(config), "-t", "-l", str(tmp_path / "logs"), "--limit_val_batches", "1"])
    checkpoint = next(c for c in result.trainer.callbacks if type(c).__name__ == "ModelCheckpoint")
    assert checkpoint.monitor == "val/loss" and checkpoint.best_model_path
    assert (result.logdir / "checkpoints" / "last.ckpt").is_file()


def test_loggers_csv_default_wandb_offline_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    paths = _paths(tmp_path)
    csv = build_logger(None, None, paths)
    assert type(csv).__name__ == "CSVLogger" and Path(csv.save_dir) == paths.logdir
    assert build_logger(None, "none", paths) is False
    wandb = build_logger({"target": "pytorch_lightning.loggers.WandbLogger", "params": {"project": "p"}}, None, paths)
    assert type(wandb).__name__ == "WandbLogger"
    init = wandb._wandb_init  # what wandb.init will receive once the run starts
    assert init["name"] == init["id"] == "NOW_x" and init["project"] == "p" and init["resume"] == "allow"
    assert Path(wandb.save_dir) == paths.logdir
    legacy = build_logger({"target": "pytorch_lightning.loggers.TestTubeLogger", "params": {"name": "tt"}}, None, paths)
    assert type(legacy).__name__ == "CSVLogger" and legacy.name == "tt"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(CLIError, match="not installed"):
            build_logger(None, "tensorboard", paths)
    else:
        assert type(build_logger(None, "tensorboard", paths)).__name__ == "TensorBoardLogger"
