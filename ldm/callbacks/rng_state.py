"""Random-number state in checkpoints, so that a stop + resume continues the uninterrupted run.

Lightning saves weights, optimiser and loop state, but not the generators: after ``-r`` the diffusion
noise, the timesteps and the next epoch's shuffling would be drawn from the freshly seeded state and the
resumed run would drift away from the run that never stopped. This callback stores the state of
Python's ``random``, NumPy's global generator, torch's CPU generator and (when present) every CUDA
generator of this process in each checkpoint, and puts it back when Lightning restores the callbacks'
state — after the model is built, before the training data iterator is created. Single-process runs
only: under DDP only rank 0's state is saved, so the ranks keep their seeded generators.

Exact continuation also needs the data order: Lightning restarts the epoch of a data loader without
``state_dict`` on resume, with a new shuffle, so a shuffled multi-batch epoch is not reproduced (even
from a checkpoint written at an epoch's end, measured on the tiny test LDM); data whose order does not
depend on the stop (one batch per epoch, no shuffling) continues exactly.

Checkpoints without this entry (older runs, other tools) resume as before.
"""
from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The generators' state as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Add to the trainer's callbacks; the state travels under ``callbacks`` in the checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callback state after building the model and before it creates the training
        # data iterator, whose shuffling draws from torch's generator: restoring here puts that draw (and
        # every later one) where the uninterrupted run made it. Only rank 0 writes checkpoints: with
        # several processes its state would be handed to every rank, so there the generators stay seeded.
        state = state_dict.get("rng")
        if state is not None and not _distributed():
            restore(state)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1
