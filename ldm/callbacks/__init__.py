"""Lightning callbacks used by ``main.py``: image logging, config snapshot, emergency checkpoints,
GPU statistics, and the atomic / safe checkpoint IO plugin."""
from ldm.callbacks.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from ldm.callbacks.cuda import CUDACallback
from ldm.callbacks.emergency import EmergencyCheckpoint
from ldm.callbacks.image_logger import ImageLogger
from ldm.callbacks.setup import SetupCallback

__all__ = [
    "AtomicCheckpointIO",
    "atomic_torch_save",
    "CUDACallback",
    "EmergencyCheckpoint",
    "ImageLogger",
    "SetupCallback",
]
