"""What a model asks of Lightning's DDP strategy.

DDP registers a gradient hook on every trainable parameter and, by default
(``find_unused_parameters=False``), expects each of them to receive a gradient in every backward
pass; a parameter that does not makes the next step fail ("parameters that were not used in
producing the loss"). The GAN autoencoders (LDM Eq. (25)) never satisfy that: with manual
optimisation each batch runs two backward passes, the autoencoder loss (the discriminator is frozen
by ``toggle_optimizer``, and idle altogether before ``disc_start``) and the discriminator loss (on a
detached reconstruction, so the encoder and decoder get no gradient). Which parameters are used
also changes at ``disc_start``, so DDP's ``static_graph`` does not fit either.

So a LightningModule may declare, as a class attribute::

    ddp_find_unused_parameters = True

and :func:`apply_model_ddp_requests` (called by ``main.py`` once the Trainer is built, before
``fit`` wraps the model) turns the flag on in a DDP strategy the user did not configure explicitly:
plain ``--strategy ddp``, ``--gpus 0,1``, ``strategy: auto`` on several devices, ``torchrun`` and
SLURM all work unchanged. An explicit ``ddp_find_unused_parameters_false`` (or a ``DDPStrategy``
object with the flag set) is left alone. The cost is one traversal of the autograd graph per
backward pass to find the unused parameters: small next to the autoencoder's convolutions.
"""
from __future__ import annotations

from typing import Any

__all__ = ["adopt_launcher_world", "apply_model_ddp_requests", "average_buffers", "wants_find_unused_parameters"]


def wants_find_unused_parameters(model: Any) -> bool:
    return bool(getattr(model, "ddp_find_unused_parameters", False))


def apply_model_ddp_requests(strategy: Any, model: Any) -> str | None:
    """Enable ``find_unused_parameters`` on ``strategy`` when ``model`` asks for it; returns a note
    for the user when something changed, else ``None``."""
    from lightning.pytorch.strategies import DDPStrategy

    if not isinstance(strategy, DDPStrategy) or not wants_find_unused_parameters(model):
        return None
    # Lightning keeps the DistributedDataParallel kwargs here until setup() wraps the model; the
    # registered "ddp_find_unused_parameters_{true,false}" names fill the same mapping.
    ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(ddp_kwargs, dict):
        raise RuntimeError(f"{type(model).__name__} needs DDP(find_unused_parameters=True) but this Lightning "
                           "version hides the DDP arguments; use --strategy ddp_find_unused_parameters_true")
    if "find_unused_parameters" in ddp_kwargs:  # the user chose explicitly
        return None
    ddp_kwargs["find_unused_parameters"] = True
    return (f"{type(model).__name__} leaves some parameters without gradient in a backward pass "
            "(GAN: two optimisers): DDP runs with find_unused_parameters=True")


def average_buffers(module: Any, strategy: Any) -> int:
    """Replace every floating-point buffer of ``module`` by its mean over all ranks; returns how many.

    DDP keeps parameters identical through the gradient all-reduce, but buffers a training forward
    updates locally (the PatchGAN discriminator's BatchNorm running statistics) drift apart between
    its start-of-forward broadcasts. Averaging them after each step keeps the replicas identical, so
    validation and checkpoints see the same statistics on every rank (estimated from all ranks' data).
    """
    if getattr(strategy, "world_size", 1) <= 1:
        return 0
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    for buffer in buffers:
        buffer.copy_(strategy.reduce(buffer.detach().clone(), reduce_op="mean"))
    return len(buffers)


def adopt_launcher_world(trainer_kwargs: dict, env: Any = None) -> str | None:
    """Under ``torchrun`` take ``devices`` / ``num_nodes`` from the launcher; returns a note when changed.

    ``torchrun --nproc-per-node 2 main.py ...`` without ``--devices 2`` would otherwise leave this
    CLI's default ``devices: 1``: Lightning then trains one independent model per process, all writing
    into the same run directory. torchrun says how many processes it started per node
    (``LOCAL_WORLD_SIZE``) and in all (``WORLD_SIZE``); those are the devices and nodes of the run.
    (Under SLURM Lightning itself checks ``--ntasks-per-node`` against ``devices``.)
    """
    import os

    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or "LOCAL_WORLD_SIZE" not in env:
        return None
    local, world = int(env["LOCAL_WORLD_SIZE"]), int(env.get("WORLD_SIZE", env["LOCAL_WORLD_SIZE"]))
    nodes = max(world // max(local, 1), 1)
    devices = trainer_kwargs.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    if count == local and int(trainer_kwargs.get("num_nodes", 1) or 1) == nodes:
        return None
    before = f"devices={devices}, num_nodes={trainer_kwargs.get('num_nodes', 1)}"
    trainer_kwargs["devices"] = local
    trainer_kwargs["num_nodes"] = nodes
    return (f"torchrun started {local} process(es) per node on {nodes} node(s): devices={local}, "
            f"num_nodes={nodes} (was {before})")
