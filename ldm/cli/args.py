"""Command-line flags of ``main.py``.

The flags of the original latent-diffusion ``main.py`` keep their names and meaning, except
``--scale_lr``, which is now off by default. Lightning trainer flags are declared explicitly
(Lightning 2 dropped ``Trainer.add_argparse_args``); each defaults to ``None`` so that only the
flags a user actually types override the config's ``lightning.trainer`` section.

Anything left over of the form ``a.b.c=value`` is an OmegaConf dotlist override.

This module imports nothing heavy, so ``python main.py --help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

_TRUE = {"yes", "true", "t", "y", "1", "on"}
_FALSE = {"no", "false", "f", "n", "0", "off"}


def str2bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


class OptionalBool(argparse.Action):
    """``-t`` / ``-t True`` / ``-t false`` as in the original, without swallowing overrides.

    The original declared these flags ``nargs="?"`` with a str2bool type, so ``-t a.b=1`` failed
    with "Boolean value expected". Here a value that is not a boolean word switches the flag on
    and is handed back as a leftover argument (a dotlist override).
    """

    def __init__(self, option_strings, dest, default=False, help=None):
        super().__init__(option_strings, dest, nargs="?", const=True, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None or isinstance(values, bool):
            setattr(namespace, self.dest, True if values is None else values)
            return
        text = str(values).strip().lower()
        if text in _TRUE or text in _FALSE:
            setattr(namespace, self.dest, text in _TRUE)
            return
        setattr(namespace, self.dest, True)
        leftovers = getattr(namespace, "_leftovers", None) or []
        leftovers.append(values)
        namespace._leftovers = leftovers


def int_or_float(value: str) -> int | float:
    """``"5"`` -> 5 (a count), ``"0.25"`` / ``"1.0"`` -> a fraction, as Lightning interprets them."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an int or a float, got {value!r}") from err


def bool_or_str(value: str) -> bool | str:
    """``deterministic``: true / false / warn."""
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    return value


def bool_or_int(value: str) -> bool | int:
    """``fast_dev_run``: true / false / a number of batches."""
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected true, false or an int, got {value!r}") from err


def devices_value(value: str) -> int | str | list[int]:
    """``auto``, ``-1``, a count (``2``) or a list of indices (``0,1`` / ``0,``)."""
    text = str(value).strip()
    if "," in text:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad device list {value!r}") from err
    try:
        return int(text)
    except ValueError:
        return text


def positive_int(value: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from err
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def precision_value(value: str) -> str | int:
    text = str(value).strip()
    return int(text) if text.isdigit() else text


# name -> (type, help). Every one maps 1:1 to a ``lightning.Trainer`` argument.
TRAINER_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "accelerator": (str, "cpu, gpu, mps, tpu or auto"),
    "devices": (devices_value, "number of devices, a list such as 0,1, or auto"),
    "num_nodes": (int, "number of nodes for distributed training"),
    "strategy": (str, "ddp, fsdp, deepspeed, auto, ..."),
    "precision": (precision_value, "32-true, 16-mixed, bf16-mixed, ... or auto: bf16-mixed where the hardware "
                                   "runs it natively, else 32 (16-mixed on pre-Ampere GPUs)"),
    "max_steps": (int, "stop after this many optimiser steps (-1: no limit)"),
    "min_steps": (int, "train at least this many steps"),
    "max_epochs": (int, "stop after this many epochs"),
    "min_epochs": (int, "train at least this many epochs"),
    "max_time": (str, "stop after this wall time, DD:HH:MM:SS"),
    "accumulate_grad_batches": (int, "accumulate gradients over this many batches"),
    "val_check_interval": (int_or_float, "validate every N train batches (int) or fraction of an epoch (float)"),
    "check_val_every_n_epoch": (int, "validate every N epochs"),
    "limit_train_batches": (int_or_float, "batches (int) or fraction (float) of the train set per epoch"),
    "limit_val_batches": (int_or_float, "batches (int) or fraction (float) of the validation set"),
    "limit_test_batches": (int_or_float, "batches (int) or fraction (float) of the test set"),
    "num_sanity_val_steps": (int, "validation batches run before training (-1: all)"),
    "log_every_n_steps": (int, "how often to log metrics"),
    "gradient_clip_val": (float, "clip gradients at this value"),
    "gradient_clip_algorithm": (str, "norm or value"),
    "deterministic": (bool_or_str, "true, false or warn"),
    "benchmark": (str2bool, "cudnn.benchmark"),
    "fast_dev_run": (bool_or_int, "run N batches of train/val/test to smoke-test the set-up"),
    "overfit_batches": (int_or_float, "overfit on this many batches (int) or fraction (float)"),
    "enable_progress_bar": (str2bool, "show the progress bar"),
    "enable_model_summary": (str2bool, "print the model summary"),
    "sync_batchnorm": (str2bool, "synchronise batch norm across processes"),
    "detect_anomaly": (str2bool, "torch.autograd anomaly detection"),
    "reload_dataloaders_every_n_epochs": (int, "rebuild the data loaders every N epochs"),
    "use_distributed_sampler": (str2bool, "let Lightning add a DistributedSampler"),
    "profiler": (str, "simple, advanced or pytorch"),
    "inference_mode": (str2bool, "use torch.inference_mode for evaluation"),
}

LOGGER_CHOICES = ("csv", "tensorboard", "wandb", "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description=(
            "Train / test a model described by YAML configs (latent-diffusion main.py, on Lightning 2). "
            "Trailing KEY=VALUE arguments override config entries, e.g. model.params.timesteps=100."
        ),
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("-n", "--name", type=str, default="",
                     help="run name: the run directory is <logdir>/<timestamp>_<name>; empty: the first config's "
                          "file name")
    run.add_argument("-r", "--resume", type=str, default="",
                     help="resume from a log directory or a checkpoint inside one (configs and full trainer state)")
    run.add_argument("-b", "--base", nargs="*", action="extend", metavar="base_config.yaml", default=[],
                     help="config files, merged left to right; later files and KEY=VALUE overrides win "
                          "(-b a.yaml -b b.yaml is -b a.yaml b.yaml)")
    run.add_argument("--allow-unknown-keys", "--allow_unknown_keys", dest="allow_unknown_keys", action="store_true",
                     help="report unknown config keys as notes instead of errors (deliberate extras)")
    run.add_argument("-t", "--train", action=OptionalBool, default=False,
                     help="train the model (trainer.fit); without -t only the test split is run")
    run.add_argument("--no-test", "--no_test", dest="no_test", action=OptionalBool, default=False,
                     help="do not run the test split after training")
    run.add_argument("-p", "--project", type=str, default=None,
                     help="wandb project the run is logged to (with --logger wandb)")
    run.add_argument("-d", "--debug", action=OptionalBool, default=False,
                     help="debug run: no checkpoint on exceptions; the log dir is moved to <logdir>/debug_runs")
    run.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything (workers too)")
    run.add_argument("-f", "--postfix", type=str, default="",
                     help="text appended to the run directory name, after the name")
    run.add_argument("-l", "--logdir", type=str, default="logs", help="directory holding the runs")
    run.add_argument("--scale_lr", "--scale-lr", dest="scale_lr", action=OptionalBool, default=False,
                     help="multiply base_learning_rate by accumulate_grad_batches x devices x nodes x batch_size")
    run.add_argument("--gpus", type=str, default=None,
                     help="GPU indices such as 0,1 (DDP when more than one) or a count; shorthand for "
                          "--accelerator gpu --devices ...")
    run.add_argument("--init-from", "--init_from", dest="init_from", type=str, default=None,
                     help="initialise model weights from a checkpoint (.ckpt/.pt/.safetensors); no trainer state")
    run.add_argument("--unsafe-load", "--unsafe_load", dest="unsafe_load", action="store_true",
                     help="allow full unpickling of checkpoints (only for files you trust)")
    run.add_argument("--trust-config", "--trust_config", dest="trust_config", action="store_true",
                     help="with -r: build any target the run's configs name (default: ldm, torch, torchvision, "
                          "lightning and --allow-target modules only)")
    run.add_argument("--allow-target", "--allow_target", dest="allow_target", action="append", default=[],
                     metavar="MODULE", help="with -r: also allow config targets from this module (repeatable)")
    run.add_argument("--threads", type=positive_int, default=None,
                     help="CPU threads torch uses for its operations (torch.set_num_threads); default: torch's own "
                          "choice (OMP_NUM_THREADS, else one per core)")
    run.add_argument("--logger", type=str, choices=LOGGER_CHOICES, default=None,
                     help="logger (default: the config's lightning.logger, else csv)")

    trainer = parser.add_argument_group("trainer (override lightning.trainer in the config)")
    for name, (kind, text) in TRAINER_FLAGS.items():
        flags = [f"--{name}"]
        if "_" in name:
            flags.append("--" + name.replace("_", "-"))
        trainer.add_argument(*flags, dest=name, type=kind, default=None, help=text)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Return the parsed flags and the ``KEY=VALUE`` overrides; anything else is an error."""
    parser = build_parser()
    opt, unknown = parser.parse_known_args(argv)
    leftovers = list(getattr(opt, "_leftovers", None) or []) + list(unknown)
    # ``-b a.yaml x.y=1`` : nargs="*" swallows the override; hand it back.
    base_files = [item for item in opt.base if not _looks_like_override(item)]
    leftovers += [item for item in opt.base if _looks_like_override(item)]
    opt.base = base_files
    if hasattr(opt, "_leftovers"):
        delattr(opt, "_leftovers")
    # keep the command-line order: later overrides win
    order = list(sys.argv[1:] if argv is None else argv)
    leftovers.sort(key=lambda item: order.index(item) if item in order else len(order))
    bad = [item for item in leftovers if "=" not in item or item.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like a.b.c=value)")
    if opt.name and opt.resume:
        parser.error("-n/--name and -r/--resume cannot be specified both: a resumed run keeps its name")
    if opt.init_from and opt.resume:
        parser.error("--init-from and -r/--resume exclude each other: resuming restores all weights already")
    return opt, leftovers


def _looks_like_override(item: str) -> bool:
    return "=" in item and not item.lower().endswith((".yaml", ".yml"))


def trainer_overrides(opt: argparse.Namespace) -> dict[str, Any]:
    """The trainer flags the user typed."""
    return {name: getattr(opt, name) for name in TRAINER_FLAGS if getattr(opt, name, None) is not None}
