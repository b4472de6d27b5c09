"""LoRA fine-tuning of the diffusion UNet through ``peft`` (Hu et al. 2021, "LoRA").

A target linear layer ``W`` becomes ``W x + (alpha / r) B A x`` with ``A`` [r, in] (random) and ``B``
[out, r] (zeros at the start, so training starts from the base model); only ``A`` and ``B`` train.

Config: ``model.params.lora: {rank, alpha, dropout, target_modules}`` (``target_modules``: name
suffixes of ``nn.Linear`` layers, default the attention projections ``to_q``, ``to_k``, ``to_v``,
``to_out.0`` of every transformer block). The base weights come from ``ckpt_path`` (loaded *before*
the adapters are injected, so any original-layout checkpoint works); the EMA, when used, tracks the
adapters only.

Adapter files (:func:`save_lora`, the :class:`LoraCheckpoint` callback) are safetensors in the layout
diffusers' ``pipe.load_lora_weights`` reads: ``unet.<diffusers module path>.lora_A.weight`` /
``lora_B.weight``, with ``alpha / r`` folded into ``lora_B`` (diffusers then needs no alpha) and our
settings in the ``ldm_lora`` metadata entry. :func:`merge_lora` folds adapters into the base weights
(``W <- W + (alpha / r) B A``) and restores the original module tree and keys.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
METADATA_KEY = "ldm_lora"


def _peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("LoRA fine-tuning (model.params.lora) needs the 'peft' package: pip install peft") from err
    return peft


@dataclass
class LoraSettings:
    rank: int = 4
    alpha: float | None = None  # default: rank (scale 1)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | LoraSettings) -> LoraSettings:
        if isinstance(config, LoraSettings):
            return config
        if not isinstance(config, Mapping):
            raise ValueError(f"model.params.lora must be a mapping {{rank, alpha, dropout, target_modules}}, "
                             f"got {type(config).__name__}")
        unknown = sorted(set(config) - {"rank", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ValueError(f"model.params.lora: unknown key(s) {unknown}; use rank, alpha, dropout, target_modules")
        settings = cls(**dict(config))
        settings.rank = int(settings.rank)
        if settings.rank < 1:
            raise ValueError(f"model.params.lora.rank must be >= 1, got {settings.rank}")
        settings.alpha = float(settings.rank if settings.alpha is None else settings.alpha)
        if not 0.0 <= float(settings.dropout) < 1.0:
            raise ValueError(f"model.params.lora.dropout must be in [0, 1), got {settings.dropout}")
        if isinstance(settings.target_modules, str):
            settings.target_modules = [settings.target_modules]
        settings.target_modules = [str(t) for t in settings.target_modules]
        return settings

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


def _unet(model) -> nn.Module:
    return model.model.diffusion_model


def lora_layers(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def apply_lora(model, config) -> LoraSettings:
    """Inject adapters into ``model``'s UNet, freeze everything else of it, and point the EMA (if
    any) at the adapters. Returns the settings (also kept as ``model.lora_settings``)."""
    peft = _peft()
    settings = LoraSettings.from_config(config)
    unet = _unet(model)
    lora_config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=float(settings.dropout),
                                  target_modules=list(settings.target_modules))
    try:
        peft.inject_adapter_in_model(lora_config, unet)
    except ValueError as err:
        raise ValueError(f"model.params.lora.target_modules {settings.target_modules} match no linear layer of "
                         f"the UNet ({err})") from err
    for name, param in model.model.named_parameters():
        param.requires_grad_("lora_" in name)
    model.lora_settings = settings
    if getattr(model, "use_ema", False):
        from ldm.modules.ema import LitEma

        old = model.model_ema
        model.model_ema = LitEma(model.model, decay=float(old.decay), use_num_updates=int(old.num_updates) >= 0)
    return settings


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter tensors, keyed as in our state dict (``model.diffusion_model....lora_A.default.weight``)."""
    return {f"model.diffusion_model.{k}": v for k, v in _unet(model).state_dict().items() if "lora_" in k}


def _diffusers_names(model) -> dict[str, str]:
    """Our adapter keys -> diffusers' ``unet.*.lora_A.weight`` keys."""
    from ldm.convert.diffusers_keys import unet_key_map

    unet = _unet(model)
    out = {}
    for ours, theirs in unet_key_map(unet).items():
        if "lora_" in ours:
            out[f"model.diffusion_model.{ours}"] = "unet." + theirs.replace(".default.", ".")
    return out


def save_lora(model, path: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write the adapters (EMA weights when the model has an EMA and ``use_ema``) to ``path``."""
    from ldm.convert.safetensors_io import save_safetensors

    settings = getattr(model, "lora_settings", None)
    if settings is None:
        raise ValueError("this model has no LoRA adapters (set model.params.lora)")
    scope = model.ema_scope() if use_ema and getattr(model, "use_ema", False) else nullcontext()
    with scope:  # copies: the scope restores the training weights in place on exit
        ours = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
    names = _diffusers_names(model)
    tensors = {names[k]: v * settings.scale if ".lora_B." in k else v for k, v in ours.items()}
    return save_safetensors(tensors, path, metadata={"format": "pt", METADATA_KEY: json.dumps(asdict(settings))})


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LoraSettings]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by ldm's LoRA training")
    return tensors, LoraSettings.from_config(json.loads(meta[METADATA_KEY]))


def load_lora(model, path: str | os.PathLike) -> None:
    """Load an adapter file written by :func:`save_lora` into a model with the same LoRA settings."""
    tensors, settings = read_lora_file(path)
    own = getattr(model, "lora_settings", None)
    if own is None:
        raise ValueError("load_lora needs a model with adapters: apply_lora(model, settings) first")
    if (own.rank, own.target_modules) != (settings.rank, settings.target_modules):
        raise ValueError(f"{path}: rank {settings.rank} / target_modules {settings.target_modules} do not match "
                         f"the model's {own.rank} / {own.target_modules}")
    names = _diffusers_names(model)
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} adapter tensor(s), e.g. {missing[0]!r}")
    state = {ours[len("model."):]: tensors[theirs] / settings.scale if ".lora_B." in ours else tensors[theirs]
             for ours, theirs in names.items()}
    result = model.model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise KeyError(f"unexpected adapter keys {result.unexpected_keys[:3]}")
    if getattr(model, "use_ema", False):
        model.model_ema.reset_to(model.model)


def merge_lora(model) -> int:
    """Fold every adapter into its base layer (``W <- W + scale B A``), remove the adapters, make the
    UNet trainable again and restart the EMA from the merged weights. Returns the number merged."""
    unet = _unet(model)
    layers = lora_layers(unet)
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, layer.get_base_layer())
    for param in model.model.parameters():
        param.requires_grad_(True)
    model.lora_settings = None
    if getattr(model, "use_ema", False):
        from ldm.modules.ema import LitEma

        old = model.model_ema
        model.model_ema = LitEma(model.model, decay=float(old.decay), use_num_updates=int(old.num_updates) >= 0)
    return len(layers)


def merge_lora_file(config, ckpt, lora, out, trust_checkpoint: bool = False) -> int:
    """``convert merge-lora``: base config + weights + adapter file -> merged weights (``out``)."""
    from omegaconf import OmegaConf

    from ldm.convert.safetensors_io import save_safetensors
    from ldm.model_loading import build_trained_model

    _, settings = read_lora_file(lora)
    cfg = OmegaConf.load(config)
    params = cfg.model.get("params") or {}
    if "lora" in params:
        print("[convert] the config's model.params.lora is ignored: the adapter file holds its settings")
        del params["lora"]
    model = build_trained_model(cfg.model, ckpt, trust_checkpoint=trust_checkpoint)
    apply_lora(model, settings)
    load_lora(model, lora)
    n = merge_lora(model)
    save_safetensors(model.state_dict(), out)
    return n


try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object


class LoraCheckpoint(Callback):
    """Writes the adapters (:func:`save_lora`) next to every Lightning checkpoint and at the end of
    training: ``<checkpoint dir>/<filename>`` (default ``lora.safetensors``)."""

    def __init__(self, filename: str = "lora.safetensors", use_ema: bool = True, dirpath: str | None = None):
        self.filename = filename
        self.use_ema = use_ema
        self.dirpath = dirpath

    def _path(self, trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath) / self.filename
        callback = getattr(trainer, "checkpoint_callback", None)
        folder = getattr(callback, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return Path(folder) / self.filename

    def _write(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and getattr(pl_module, "lora_settings", None) is not None:
            save_lora(pl_module, self._path(trainer), use_ema=self.use_ema)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)
