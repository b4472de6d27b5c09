"""Noise augmentation of the low-resolution input of a cascaded / super-resolution diffusion model.

Stable Diffusion's x4 upscaler conditions on the low-resolution image noised to a random level
``s`` of its own image-space DDPM schedule, ``x_s = sqrt(a_s) x + sqrt(1 - a_s) eps`` (DDPM Eq. 4),
and on ``s`` itself (fed to the UNet as its class label ``y``), so at sampling time the amount of
noise on the input can be chosen ("noise conditioning augmentation" of cascaded diffusion models).
The schedule buffers keep the original names (``low_scale_model.betas`` ...), so x4 checkpoints load.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ldm.diffusion.gaussian import q_sample
from ldm.diffusion.schedule import FORWARD_BUFFERS, DiffusionSchedule


class ImageConcatWithNoiseAugmentation(nn.Module):
    """``forward(x, noise_level=None) -> (x noised to noise_level, noise_level)``; levels are drawn
    uniformly from ``{0, ..., max_noise_level - 1}`` when not given."""

    def __init__(self, noise_schedule_config: Mapping | None = None, max_noise_level: int = 1000,
                 to_rgb: bool = False):
        super().__init__()
        if to_rgb:
            raise ValueError("ImageConcatWithNoiseAugmentation: to_rgb=True is not supported")
        config = dict(noise_schedule_config or {})
        with torch.device("cpu"):
            schedule = DiffusionSchedule.from_config(**config)
        if not 1 <= max_noise_level <= schedule.num_timesteps:
            raise ValueError(f"max_noise_level must be in [1, {schedule.num_timesteps}], got {max_noise_level}")
        self.max_noise_level = int(max_noise_level)
        self.schedule = schedule
        for name in FORWARD_BUFFERS:  # what the original ``AbstractLowScaleModel`` registers (no posterior terms)
            self.register_buffer(name, getattr(schedule, name).float())

    def q_sample(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return q_sample(self.schedule, x, t, noise)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor | int | None = None):
        if noise_level is None:
            noise_level = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device)
        noise_level = torch.as_tensor(noise_level, device=x.device).long()
        if noise_level.ndim == 0:
            noise_level = noise_level.expand(x.shape[0])
        if bool((noise_level < 0).any()) or bool((noise_level >= self.schedule.num_timesteps).any()):
            raise ValueError(f"noise_level must lie in [0, {self.schedule.num_timesteps - 1}]")
        return self.q_sample(x, noise_level), noise_level
