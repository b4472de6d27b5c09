"""How big each part of the quick start is: step budgets, not time boxes.

Every training stage runs a fixed number of optimizer steps from fixed seeds (Lightning's
``seed_everything(seed)`` before the model is built, so weights, the shuffled data order and the
diffusion noise repeat; the shapes data are rendered from ``(seed 0, split, index)``), so the same
command gives the same model on any machine - only the time it takes varies. The defaults were sized
from idle-machine rates on a 2-core CPU (1 thread per process, docs/quality.md): autoencoder 7.6-9.6 steps/s
(2 DDP ranks), then class 14.4-16.4 and text 7.0-8.0 steps/s side by side from the latent cache, so
2400 / 9.5 + ~25 s of cache + max(6000 / 16.4, 3000 / 8.0) ≈ 650 s of training (≈ 780 s at the slowest rates),
plus ~30 s of start-up and sampling and ~85 s of setup: within 15 minutes. A time box (``--ae-minutes`` /
``--ldm-minutes``) stays available as an explicit cap.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Budget:
    ae_steps: int = 2400
    class_steps: int = 6000
    text_steps: int = 3000
    ae_minutes: float | None = None      # optional time box per stage (None: the step budget alone)
    ldm_minutes: float | None = None
    ae_batch_size: int = 16
    ldm_batch_size: int = 32
    ldm_train_images: int = 16000       # the latent cache the latent models train from (encoded once)
    val_images: int = 256               # autoencoder PSNR on this many validation images
    samples_per_class: int = 8          # class-conditional samples: 12 classes × this
    text_samples: int = 96
    unconditional_samples: int = 768    # TV's sampling noise with 12 classes: ~0.05 at 768, ~0.1 at 192
    ddim_steps: int = 25
    fast_steps: int = 10                # DPM-Solver++ (and a DDIM run at the same count)
    guidance_scale: float = 5.0
    extra_overrides: list[str] = field(default_factory=list)
    precision: str | None = None        # None: the configs' trainer precision

    def steps(self, kind: str) -> int:
        """The step budget of stage ``kind`` ("ae", "class" or "text")."""
        return {"ae": self.ae_steps, "class": self.class_steps, "text": self.text_steps}[kind]


#: ``--fast``: the CI smoke test (seconds): a few steps, tiny batches, few samples
FAST = {"ae_steps": 3, "class_steps": 3, "text_steps": 3, "ae_batch_size": 4, "ldm_batch_size": 4,
        "ldm_train_images": 32, "val_images": 8, "samples_per_class": 1, "text_samples": 4,
        "unconditional_samples": 12, "ddim_steps": 3, "fast_steps": 2}
