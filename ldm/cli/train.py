"""``main.py``: train / test a model from YAML configs on Lightning 2.

Flow (as in the original latent-diffusion main.py): parse flags -> find the run directory (new, or
the one being resumed) -> merge configs (resumed run's snapshots, then ``-b`` files left to right,
then ``KEY=VALUE`` overrides) -> build model (optionally initialised ``--init-from`` weights), data,
logger, callbacks and trainer -> set the learning rate -> ``fit`` (restoring the full trainer
state with ``-r``) -> ``test`` when a test split exists.

``main(argv)`` turns configuration problems into a one-line message and exit code 2;
``run(argv)`` raises them (for use from Python).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ldm.cli.args import parse_args, trainer_overrides
from ldm.cli.config import (
    CLIError,
    build_trainer_kwargs,
    check_gpus_available,
    merge_configs,
    parse_gpus,
    require_section,
    split_lightning,
)
from ldm.cli.logdir import (
    RunPaths,
    check_writable_run,
    move_to_debug_runs,
    reserve_run_directory,
    resolve_run_paths,
    timestamp,
)
from ldm.util import ConfigError, instantiate_from_config


@dataclass
class RunResult:
    paths: RunPaths
    trainer: Any
    model: Any
    datamodule: Any
    base_learning_rate: float | None
    learning_rate: float | None

    @property
    def logdir(self):
        return self.paths.logdir


# -- data splits ---------------------------------------------------------------------------
def split_declared(data_config: Mapping, datamodule: Any, split: str) -> bool:
    """Whether the data config provides ``split`` ("validation" / "test")."""
    import lightning as L
    from lightning.pytorch.utilities.model_helpers import is_overridden

    params = data_config.get("params") or {}
    if split in params:
        return bool(params[split])
    declared = getattr(datamodule, "dataset_configs", None)
    if isinstance(declared, Mapping):
        return split in declared
    hook = {"validation": "val_dataloader", "test": "test_dataloader"}[split]
    return isinstance(datamodule, L.LightningDataModule) and is_overridden(hook, datamodule, L.LightningDataModule)


def has_step(model: Any, name: str) -> bool:
    import lightning as L
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return is_overridden(name, model, L.LightningModule)


# -- learning rate -------------------------------------------------------------------------
def configure_learning_rate(model: Any, config: Mapping, trainer: Any,
                            scale_lr: bool) -> tuple[float | None, float | None]:
    """Set ``model.learning_rate`` from ``model.base_learning_rate``; print base and effective LR.

    With ``--scale_lr`` the original rule applies: effective = accumulate_grad_batches x devices x
    nodes x batch_size x base. Without it (the default) the base LR is used as is.
    """
    base = config["model"].get("base_learning_rate")
    if base is None:
        print("model.base_learning_rate not set: the model keeps its own learning rate")
        return None, getattr(model, "learning_rate", None)
    base = float(base)
    if scale_lr:
        batch_size = (config["data"].get("params") or {}).get("batch_size")
        if batch_size is None:
            raise ConfigError("--scale_lr needs data.params.batch_size")
        accumulate = int(getattr(model, "accumulate_grad_batches", None) or trainer.accumulate_grad_batches)
        devices = int(trainer.num_devices) * int(trainer.num_nodes)
        effective = accumulate * devices * int(batch_size) * base
        print(f"base_learning_rate={base:.2e}, effective={effective:.2e} (scale_lr on: "
              f"{accumulate} (accumulate_grad_batches) * {devices} (devices x nodes) * "
              f"{batch_size} (batch_size) * {base:.2e} (base))")
    else:
        effective = base
        print(f"base_learning_rate={base:.2e}, effective={effective:.2e} (scale_lr off)")
    model.learning_rate = effective
    return base, effective


# -- the run -------------------------------------------------------------------------------
# Under DDP Lightning re-launches this script once per extra local rank; they inherit the
# environment, so they read the parent's timestamp and agree on the run directory.
_RUN_TIMESTAMP_ENV = "LDM_RUN_TIMESTAMP"
_RUN_DIR_ENV = "LDM_RUN_DIR"  # the directory the parent reserved (it may carry a collision suffix)


def move_accumulation_into_manual_model(model: Any, trainer_kwargs: dict) -> None:
    """Lightning 2 refuses ``accumulate_grad_batches`` with manual optimisation (the GAN autoencoders):
    hand the setting to the model, which accumulates itself, instead of failing."""
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", 1) or 1)
    if accumulate == 1 or getattr(model, "automatic_optimization", True):
        return
    if not hasattr(model, "accumulate_grad_batches"):
        raise ConfigError(f"accumulate_grad_batches={accumulate}: {type(model).__name__} optimises manually and "
                          "does not accumulate gradients itself")
    trainer_kwargs.pop("accumulate_grad_batches")
    model.accumulate_grad_batches = accumulate
    print(f"note: accumulate_grad_batches={accumulate} is done by the model (manual optimisation)")


def run(argv: Sequence[str] | None = None) -> RunResult:
    inherited = os.environ.get(_RUN_TIMESTAMP_ENV)
    now = inherited or timestamp()
    os.environ[_RUN_TIMESTAMP_ENV] = now
    try:
        return _run(argv, now, child=inherited is not None)
    except BaseException:
        reserved = os.environ.get(_RUN_DIR_ENV)
        if inherited is None and reserved:
            _remove_if_empty(Path(reserved))  # a run that failed before writing anything leaves no trace
        raise
    finally:
        if inherited is None:
            os.environ.pop(_RUN_TIMESTAMP_ENV, None)
            os.environ.pop(_RUN_DIR_ENV, None)


def _launcher_rank() -> int:
    """This process's global rank as an external launcher (torchrun, SLURM) set it; 0 otherwise."""
    for variable in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def _run(argv: Sequence[str] | None, now: str, child: bool = False) -> RunResult:
    from ldm.config_trust import trust_policy

    opt, dotlist = parse_args(argv)
    # a resumed run's configs/ may come from anyone with write access to the run folder: allow-listed targets only
    source = f"the configs of {opt.resume} (-r)"
    with trust_policy(opt.trust_config or not opt.resume, opt.allow_target, source=source):
        return _run_parsed(opt, dotlist, now, child)


def _run_parsed(opt, dotlist: list[str], now: str, child: bool) -> RunResult:
    if opt.threads:
        import torch

        torch.set_num_threads(opt.threads)
    if opt.gpus is not None:  # fail fast, before building anything
        gpus = parse_gpus(opt.gpus)
        if gpus is not None:
            import torch

            check_gpus_available(gpus, torch.cuda.device_count())

    if opt.init_from and not Path(opt.init_from).is_file():
        raise CLIError(f"--init-from: checkpoint not found: {opt.init_from}")

    paths = resolve_run_paths(resume=opt.resume, name=opt.name, postfix=opt.postfix, base=opt.base,
                              logdir_root=opt.logdir, now=now)
    config_files = [str(p) for p in paths.resumed_configs] + list(opt.base)
    if not config_files:
        raise ConfigError("no config given: pass one or more -b/--base config.yaml (or -r a run with configs/)")
    merged = merge_configs(config_files, dotlist)
    from ldm.cli.config_validation import validate_config

    for note in validate_config(merged, config_files, dotlist, allow_unknown=opt.allow_unknown_keys):
        print(f"note: {note}")
    config, lightning_config = split_lightning(merged)
    model_config = require_section(config, "model")
    data_config = require_section(config, "data")
    trainer_kwargs, notes = build_trainer_kwargs(lightning_config.get("trainer"), trainer_overrides(opt), opt.gpus)
    from ldm.distributed import adopt_launcher_world
    from ldm.precision import resolve_trainer_precision

    notes.append(adopt_launcher_world(trainer_kwargs))  # torchrun: devices / nodes from the launcher
    notes.append(resolve_trainer_precision(trainer_kwargs))  # --precision auto; warns on slow CPU bf16
    for note in filter(None, notes):
        print(f"note: {note}")
    if paths.resume_ckpt is not None:
        check_writable_run(paths.logdir)
    elif child:  # a DDP rank started by Lightning: the parent's directory
        reserved = os.environ.get(_RUN_DIR_ENV)
        if reserved:
            paths.logdir, paths.nowname = Path(reserved), Path(reserved).name
    elif _launcher_rank() == 0:
        reserve_run_directory(paths)
        os.environ[_RUN_DIR_ENV] = str(paths.logdir)
    # else: a rank > 0 started by torchrun / SLURM writes nothing of its own (checkpoints, configs and
    # logs are global rank 0's), so it must not create a directory of its own either

    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ldm.callbacks.checkpoint_io import AtomicCheckpointIO
    from ldm.callbacks.rng_state import RNGStateCheckpoint
    from ldm.callbacks.setup import SetupCallback
    from ldm.cli.components import build_callbacks, build_logger, build_model_checkpoint

    L.seed_everything(opt.seed, workers=True)
    model = instantiate_from_config(model_config, node="model")
    if opt.init_from:
        from ldm.checkpoint import load_weights

        load_weights(model, opt.init_from, trust_checkpoint=opt.unsafe_load)
    move_accumulation_into_manual_model(model, trainer_kwargs)
    datamodule = instantiate_from_config(data_config, node="data")

    has_validation = (split_declared(data_config, datamodule, "validation") and has_step(model, "validation_step")
                      and trainer_kwargs.get("limit_val_batches", 1) != 0)
    has_test = split_declared(data_config, datamodule, "test") and has_step(model, "test_step")
    from ldm.cli.preflight import preflight

    for note in preflight(model, datamodule, trainer_kwargs, has_validation=has_validation, training=opt.train):
        print(f"note: {note}")

    logger = build_logger(lightning_config.get("logger"), opt.logger, paths, project=opt.project, debug=opt.debug) \
        if trainer_kwargs.pop("logger", True) is not False else False
    callbacks = build_callbacks(lightning_config.get("callbacks"), paths, debug=opt.debug,
                                with_logger=logger is not False)
    if trainer_kwargs.get("enable_checkpointing", True):
        monitor = getattr(model, "monitor", None)
        if monitor and not has_validation:
            print(f"note: no validation data, so checkpoints are not ranked by model.monitor={monitor!r}")
        callbacks.append(build_model_checkpoint(lightning_config.get("modelcheckpoint"), paths,
                                                model_monitor=monitor, has_validation=has_validation))

    callbacks.append(RNGStateCheckpoint())  # a resume continues the random streams of the run that stopped
    lightning_config.trainer = OmegaConf.create(trainer_kwargs)
    callbacks.insert(0, SetupCallback(resume=str(paths.resume_ckpt or ""), now=paths.now, logdir=str(paths.logdir),
                                      ckptdir=str(paths.ckptdir), cfgdir=str(paths.cfgdir), config=config,
                                      lightning_config=lightning_config))
    from ldm.fsdp import build_strategy  # a strategy: {target, params} mapping (FSDP per UNet block)

    try:
        trainer = L.Trainer(**build_strategy(trainer_kwargs), logger=logger, callbacks=callbacks,
                            plugins=[AtomicCheckpointIO(trust_checkpoint=opt.unsafe_load)],
                            default_root_dir=str(paths.logdir))
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        raise CLIError(f"cannot build the Trainer from {trainer_kwargs}: {str(err).splitlines()[0]}") from err
    from ldm.distributed import apply_model_ddp_requests

    ddp_note = apply_model_ddp_requests(trainer.strategy, model)
    if ddp_note and trainer.is_global_zero:
        print(f"note: {ddp_note}")

    base_lr, lr = configure_learning_rate(model, config, trainer, opt.scale_lr)
    try:
        if opt.train:
            trainer.fit(model, datamodule, ckpt_path=str(paths.resume_ckpt) if paths.resume_ckpt else None)
        if not opt.no_test and not trainer.interrupted:
            if has_test:
                test_ckpt = None if opt.train or not paths.resume_ckpt else str(paths.resume_ckpt)
                trainer.test(model, datamodule, ckpt_path=test_ckpt)
            elif not opt.train:
                print("nothing to do: pass -t to train (no test split and test_step to test)")
    finally:
        if opt.debug and not opt.resume and trainer.global_rank == 0:
            moved = move_to_debug_runs(paths.logdir)
            if moved is not None:
                print(f"debug run moved to {moved}")
                paths.logdir = moved
    return RunResult(paths=paths, trainer=trainer, model=model, datamodule=datamodule,
                     base_learning_rate=base_lr, learning_rate=lr)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Entry point of ``main.py``; configuration errors exit with code 2 and one line on stderr."""
    try:
        return run(argv)
    except (ConfigError, CLIError) as err:
        _fail(err)
    except RuntimeError as err:
        from ldm.checkpoint import UnsafeCheckpointError  # imports torch: not needed for --help
        from ldm.data.latent_cache import LatentCacheError
        from ldm.modules.losses.lpips import LPIPSWeightsError

        if isinstance(err, (UnsafeCheckpointError, LatentCacheError, LPIPSWeightsError)):
            _fail(err)
        raise


def _fail(err: BaseException) -> None:
    from ldm.cli.errors import USAGE_ERROR, error_line

    print(error_line(err, "main.py"), file=sys.stderr)
    raise SystemExit(USAGE_ERROR) from None
