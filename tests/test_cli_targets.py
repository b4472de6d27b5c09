"""Every target string of the original latent-diffusion configs resolves to a class here."""
from __future__ import annotations

import inspect

import pytest

from ldm.util import ConfigError, resolve_target

ORIGINAL_TARGETS = [
    "ldm.data.faceshq.CelebAHQTrain",
    "ldm.data.faceshq.CelebAHQValidation",
    "ldm.data.faceshq.FFHQTrain",
    "ldm.data.faceshq.FFHQValidation",
    "ldm.data.imagenet.ImageNetSRTrain",
    "ldm.data.imagenet.ImageNetSRValidation",
    "ldm.data.imagenet.ImageNetTrain",
    "ldm.data.imagenet.ImageNetValidation",
    "ldm.data.lsun.LSUNBedroomsTrain",
    "ldm.data.lsun.LSUNBedroomsValidation",
    "ldm.data.lsun.LSUNChurchesTrain",
    "ldm.data.lsun.LSUNChurchesValidation",
    "ldm.lr_scheduler.LambdaLinearScheduler",
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
    "ldm.models.autoencoder.AutoencoderKL",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
    "ldm.models.diffusion.ddpm.LatentDiffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "ldm.modules.encoders.modules.BERTEmbedder",
    "ldm.modules.encoders.modules.ClassEmbedder",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "ldm.modules.encoders.modules.SpatialRescaler",
    "ldm.modules.losses.LPIPSWithDiscriminator",
    "ldm.modules.losses.contperceptual.DummyLoss",
    "main.DataModuleFromConfig",
    "main.ImageLogger",
    "taming.data.faceshq.CelebAHQTrain",
    "taming.data.faceshq.CelebAHQValidation",
    "taming.data.faceshq.FFHQTrain",
    "taming.data.faceshq.FFHQValidation",
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "torch.nn.Identity",
]


@pytest.mark.parametrize("target", ORIGINAL_TARGETS)
def test_original_target_resolves_to_a_class(target):
    resolved = resolve_target(target)
    assert inspect.isclass(resolved), f"{target} -> {resolved!r}"
    assert resolved.__name__ == target.rsplit(".", 1)[1]


def test_main_callbacks_resolve_to_ours():
    from ldm.callbacks import CUDACallback, ImageLogger, SetupCallback

    assert resolve_target("main.ImageLogger") is ImageLogger
    assert resolve_target("main.SetupCallback") is SetupCallback
    assert resolve_target("main.CUDACallback") is CUDACallback


def test_unknown_target_is_named():
    with pytest.raises(ConfigError, match="ldm.models.nothing_here.Model"):
        resolve_target("ldm.models.nothing_here.Model")
