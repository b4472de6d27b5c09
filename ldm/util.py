"""Building objects from configs, and small helpers shared across the package.

Every object in a YAML config is a node ``{target: dotted.path.Class, params: {...}}``.
:func:`instantiate_from_config` builds it. Target strings written for the original
CompVis latent-diffusion / taming code resolve to this package's classes through
:data:`LEGACY_TARGETS`, so existing configs keep working unchanged.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from typing import Any

# Original target string -> our dotted path. Only entries whose module path differs need
# to be listed; identical paths (e.g. ``ldm.models.autoencoder.AutoencoderKL``) resolve as-is.
LEGACY_TARGETS: dict[str, str] = {
    # stage 2
    "ldm.models.diffusion.ddpm.DDPM": "ldm.models.ddpm.DDPM",
    "ldm.models.diffusion.ddpm.LatentDiffusion": "ldm.models.latent_diffusion.LatentDiffusion",
    "ldm.models.diffusion.ddpm.DiffusionWrapper": "ldm.models.ddpm.DiffusionWrapper",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "ldm.models.sd2.LatentInpaintDiffusion",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "ldm.models.sd2.LatentUpscaleDiffusion",
    "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation":
        "ldm.modules.upscaling.ImageConcatWithNoiseAugmentation",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "ldm.modules.unet.UNetModel",
    "ldm.modules.ema.LitEma": "ldm.modules.ema.LitEma",
    # conditioners
    "ldm.modules.encoders.modules.ClassEmbedder": "ldm.modules.conditioners.ClassEmbedder",
    "ldm.modules.encoders.modules.TransformerEmbedder": "ldm.modules.conditioners.TransformerEmbedder",
    "ldm.modules.encoders.modules.BERTEmbedder": "ldm.modules.conditioners.BERTEmbedder",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "ldm.modules.conditioners.FrozenCLIPEmbedder",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "ldm.modules.conditioners.FrozenOpenCLIPEmbedder",
    "ldm.modules.encoders.modules.SpatialRescaler": "ldm.modules.conditioners.SpatialRescaler",
    # stage 1 losses
    "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator": "ldm.modules.losses.LPIPSWithDiscriminator",
    "ldm.modules.losses.contperceptual.DummyLoss": "ldm.modules.losses.DummyLoss",
    "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator": "ldm.modules.losses.VQLPIPSWithDiscriminator",
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator": "ldm.modules.losses.VQLPIPSWithDiscriminator",
    "taming.modules.losses.lpips.LPIPS": "ldm.modules.losses.lpips.LPIPSLoss",
    "taming.modules.discriminator.model.NLayerDiscriminator": "ldm.modules.losses.discriminator.NLayerDiscriminator",
    # the original main.py
    "main.DataModuleFromConfig": "ldm.data.datamodule.DataModuleFromConfig",
    "main.ImageLogger": "ldm.callbacks.image_logger.ImageLogger",
    "main.SetupCallback": "ldm.callbacks.setup.SetupCallback",
    "main.CUDACallback": "ldm.callbacks.cuda.CUDACallback",
    "main.LearningRateMonitor": "lightning.pytorch.callbacks.LearningRateMonitor",
    "pytorch_lightning.loggers.TestTubeLogger": "lightning.pytorch.loggers.CSVLogger",
    # datasets
    "ldm.data.faceshq.CelebAHQTrain": "ldm.data.faces.CelebAHQTrain",
    "ldm.data.faceshq.CelebAHQValidation": "ldm.data.faces.CelebAHQValidation",
    "ldm.data.faceshq.FFHQTrain": "ldm.data.faces.FFHQTrain",
    "ldm.data.faceshq.FFHQValidation": "ldm.data.faces.FFHQValidation",
    "taming.data.faceshq.CelebAHQTrain": "ldm.data.faces.CelebAHQTrain",
    "taming.data.faceshq.CelebAHQValidation": "ldm.data.faces.CelebAHQValidation",
    "taming.data.faceshq.FFHQTrain": "ldm.data.faces.FFHQTrain",
    "taming.data.faceshq.FFHQValidation": "ldm.data.faces.FFHQValidation",
}


class ConfigError(ValueError):
    """A config node could not be turned into an object. The message names the node."""


def num_class_folders(root: Any) -> int:
    """Config resolver ``${num_class_folders:<root>}``: how many class sub-folders ``root`` has
    (the ``n_classes`` of a class-folder dataset, so a template needs only its data root)."""
    import os

    from ldm.data.folder import class_folder_names

    if root is None or not os.path.isdir(str(root)):
        raise ConfigError(f"num_class_folders: {root!r} is not a folder; set data.params.train.params.root=<a folder "
                          "with one sub-folder of images per class>")
    names = class_folder_names(str(root))
    if not names:
        raise ConfigError(f"num_class_folders: {root} has no sub-folders with images (one per class expected)")
    return len(names)


def _register_resolvers() -> None:
    try:
        import omegaconf
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        return
    # omegaconf 2.4 renamed register_new_resolver (2.1-2.3) to register_resolver (2.3's is the legacy API)
    modern = tuple(int(part) for part in omegaconf.__version__.split(".")[:2]) >= (2, 4)
    register = OmegaConf.register_resolver if modern else OmegaConf.register_new_resolver
    if not OmegaConf.has_resolver("num_class_folders"):
        register("num_class_folders", num_class_folders)


_register_resolvers()


def modern_target(target: str) -> str:
    """The dotted path a (possibly original / Lightning 1.x) target string stands for today."""
    path = LEGACY_TARGETS.get(target, target)
    if path.startswith("pytorch_lightning."):  # Lightning 1.x configs name the old package
        path = "lightning.pytorch." + path[len("pytorch_lightning."):]
    return path


def resolve_target(target: str) -> Any:
    """Import the object named by ``target`` (a dotted path), honouring legacy aliases."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"target must be a dotted path such as 'pkg.module.Class', got {target!r}")
    path = modern_target(target)
    from ldm.config_trust import check_target_path

    check_target_path(target, path)  # restricted configs: refused before anything is imported
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"cannot resolve target {target!r}: module {module_name!r} not found ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"cannot resolve target {target!r}: {module_name!r} has no attribute {attr!r}") from err


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so constructors receive ordinary Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        return obj
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


#: ``cond_stage_config`` / a stack entry's ``target``: the condition is the first-stage latent of its input
FIRST_STAGE = "__is_first_stage__"
#: ``cond_stage_config``: no conditioner
UNCONDITIONAL = "__is_unconditional__"


def instantiate_from_config(config: Mapping | None, *, node: str = "config", **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a config node.

    ``node`` names the node in error messages (e.g. ``model.params.unet_config``).
    The special strings ``__is_first_stage__`` and ``__is_unconditional__`` return ``None``
    (they are markers the diffusion model interprets itself).
    """
    if config in (FIRST_STAGE, UNCONDITIONAL):
        return None
    config = _plain(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{node}: expected a mapping with a 'target' key, got {type(config).__name__}")
    if "target" not in config:
        raise ConfigError(f"{node}: missing required key 'target' (keys present: {sorted(config)})")
    target = config["target"]
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{node}: 'params' of {target!r} must be a mapping, got {type(params).__name__}")
    try:
        cls = resolve_target(target)
    except ConfigError as err:
        raise type(err)(f"{node}: {err}") from err
    from ldm.config_trust import check_built_object

    check_built_object(target, modern_target(target), cls, params)
    try:
        return cls(**params, **extra)
    except TypeError as err:
        raise ConfigError(f"{node}: could not build {target!r}: {err}") from err


def get_obj_from_str(string: str) -> Any:
    """Original helper name, kept for users' scripts."""
    return resolve_target(string)


def count_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def exists(x: Any) -> bool:
    return x is not None


def default(value: Any, fallback: Any) -> Any:
    if value is not None:
        return value
    return fallback() if callable(fallback) else fallback


@contextlib.contextmanager
def seeded_cpu_rng(seed: int):
    """Run the block with torch's global CPU generator seeded to ``seed``, then restore its state
    (reproducible metric subsets / random inits without disturbing the caller's random stream)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
