"""A stack of conditioners combined into one condition dict (in the spirit of sgm's GeneralConditioner).

Each entry names its conditioner (``target``/``params`` or a registered ``name``), the batch key it
reads (``input_key``), the slot it fills (``output_key``: ``crossattn``, ``concat`` or ``vector``;
default: the conditioner's own) and its own ``ucg_rate`` (classifier-free-guidance dropout). The
outputs of one slot are joined (:func:`ldm.models.conditioning.join_slot`): ``concat`` on the
channel axis (resized to the first concat entry's size), ``crossattn`` on the feature axis (as sgm),
``vector`` on the feature axis. Example (hybrid: text by cross-attention + masked image by concat)::

    cond_stage_config:
      target: ldm.modules.conditioners.stack.ConditionerStack
      params:
        conditioners:
          - {input_key: caption, ucg_rate: 0.1, target: ldm.modules.conditioners.TransformerEmbedder, params: {...}}
          - {input_key: masked_image, target: __is_first_stage__}
          - {input_key: inpaint_mask, target: ldm.modules.conditioners.SpatialRescaler,
             params: {in_channels: 1, n_stages: 2, method: nearest}}

``target: __is_first_stage__`` encodes its input with the model's frozen first stage (the scaled
posterior mean); :class:`~ldm.models.latent_diffusion.LatentDiffusion` attaches it.

Null condition per entry (what unconditional sampling and CFG's "u" branch use), ``null``:

* ``null: learned`` - the conditioner's own :meth:`null_condition` (null class, empty caption,
  zeros for spatial conditioners); the default when ``ucg_rate > 0`` (the model saw it in training);
* ``null: keep`` - the condition itself (never dropped in training, so guidance leaves it alone:
  a low-res image or the masked image of an inpainting model stays in both CFG branches);
  the default when ``ucg_rate == 0``;
* ``null: zeros`` - zeros of the condition's shape.

A negative prompt (:meth:`null_condition` ``overrides``) replaces the null of the entries reading
that input by the encoded override.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ldm.modules.conditioners.base import OUTPUT_KEYS
from ldm.util import FIRST_STAGE, ConfigError, instantiate_from_config

NULL_MODES = ("learned", "keep", "zeros")


class FirstStageSlot(nn.Module):
    """Placeholder for ``target: __is_first_stage__``: encodes with a function attached by the model
    (kept out of ``state_dict``: the first stage's weights live under ``first_stage_model.*``)."""

    output_key = "concat"

    def __init__(self):
        super().__init__()
        self._encode_fn = None

    def attach(self, encode_fn) -> None:
        object.__setattr__(self, "_encode_fn", encode_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._encode_fn is None:
            raise RuntimeError("a '__is_first_stage__' conditioner needs a LatentDiffusion model "
                               "to attach its first stage")
        return self._encode_fn(x.float())


def _has_contract(module) -> bool:
    return callable(getattr(module, "null_condition", None)) and callable(getattr(module, "encode", None))


class ConditionerStack(nn.Module):
    """``ConditionerStack(conditioners=[{input_key, target|name, params, output_key, ucg_rate, null}, ...])``."""

    null_needs_input = True  # null conditions of spatial entries take their shape from the input

    def __init__(self, conditioners: Sequence[Mapping]):
        super().__init__()
        if not conditioners:
            raise ConfigError("ConditionerStack needs at least one entry under 'conditioners'")
        self.embedders = nn.ModuleList()
        self.input_keys: list[str] = []
        self.output_keys: list[str] = []
        self.ucg_rates: list[float] = []
        self.null_modes: list[str] = []
        for i, entry in enumerate(conditioners):
            entry = dict(entry)
            where = f"conditioners[{i}]"
            if "input_key" not in entry:
                raise ConfigError(f"ConditionerStack {where} needs an 'input_key' (the batch key it reads)")
            module = self._build(entry, where)
            slot = entry.get("output_key") or getattr(module, "output_key", None)
            if slot not in OUTPUT_KEYS:
                raise ConfigError(f"ConditionerStack {where}: output_key must be one of {OUTPUT_KEYS}, got {slot!r}")
            if getattr(module, "output_key", slot) != slot:
                module.output_key = slot
            rate = float(entry.get("ucg_rate", getattr(module, "ucg_rate", 0.0)) or 0.0)
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"ConditionerStack {where}: ucg_rate must be in [0, 1], got {rate}")
            null = entry.get("null") or ("learned" if rate > 0 else "keep")
            if null not in NULL_MODES:
                raise ConfigError(f"ConditionerStack {where}: null must be one of {NULL_MODES}, got {null!r}")
            if null == "learned" and not _has_contract(module):
                null = "zeros"
            self.embedders.append(module)
            self.input_keys.append(str(entry["input_key"]))
            self.output_keys.append(slot)
            self.ucg_rates.append(rate)
            self.null_modes.append(null)

    @staticmethod
    def _build(entry: dict, where: str) -> nn.Module:
        target = entry.get("target")
        if target == FIRST_STAGE:
            return FirstStageSlot()
        if "name" in entry:
            from ldm.modules.conditioners.registry import build_conditioner

            return build_conditioner(entry["name"], **dict(entry.get("params") or {}))
        if target is None:
            raise ConfigError(f"ConditionerStack {where} needs a 'target' (or a registered 'name')")
        module = instantiate_from_config({"target": target, "params": entry.get("params") or {}},
                                         node=f"cond_stage_config.params.{where}")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"ConditionerStack {where}: {target} did not build a torch module")
        return module

    # ------------------------------------------------------------------ model hooks
    def attach_first_stage(self, encode_fn) -> None:
        for module in self.embedders:
            if isinstance(module, FirstStageSlot):
                module.attach(encode_fn)

    @property
    def ucg_rate(self) -> float:
        return max(self.ucg_rates)

    def batch_size(self, raw: Mapping) -> int:
        key = self.input_keys[0]
        value = raw[key]
        module = self.embedders[0]
        if callable(getattr(module, "batch_size", None)):
            return int(module.batch_size(value))
        return value.shape[0] if torch.is_tensor(value) else len(value)

    def sample_drop_masks(self, batch_size: int, device=None) -> list[torch.Tensor]:
        """One Bernoulli(``ucg_rate``) row mask per entry, drawn independently (per-slot dropout)."""
        return [torch.rand(batch_size, device=device) < rate for rate in self.ucg_rates]

    # ------------------------------------------------------------------ encoding
    def _inputs(self, raw: Mapping) -> list:
        if not isinstance(raw, Mapping):
            raise TypeError(f"ConditionerStack takes a dict of inputs keyed by {self.input_keys}, "
                            f"got {type(raw).__name__}")
        missing = [k for k in dict.fromkeys(self.input_keys) if k not in raw]
        if missing:
            raise KeyError(f"ConditionerStack: inputs {missing} missing (have {sorted(raw)}); check each input_key")
        return [raw[k] for k in self.input_keys]

    @staticmethod
    def _encode_one(module, value, drop_mask=None) -> torch.Tensor:
        if _has_contract(module):
            return module.encode(value, drop_mask=drop_mask)
        out = module(value)
        if drop_mask is not None and bool(drop_mask.any()):
            keep = (~drop_mask.to(out.device)).reshape(-1, *([1] * (out.ndim - 1)))
            out = out * keep.to(out.dtype)
        return out

    def _combine(self, outputs: Sequence[torch.Tensor]) -> dict:
        from ldm.modules.conditioners.join import join_slot

        slots: dict[str, list] = {}
        for slot, out in zip(self.output_keys, outputs):
            slots.setdefault(slot, []).append(out)
        return {slot: join_slot(parts, slot) for slot, parts in slots.items()}

    def encode(self, raw: Mapping, drop_mask=None) -> dict:
        """The condition dict; ``drop_mask``: None (nothing dropped), one [B] mask for every entry
        with ``ucg_rate > 0``, or a list with one mask (or None) per entry."""
        values = self._inputs(raw)
        if drop_mask is None or torch.is_tensor(drop_mask):
            masks = [drop_mask if rate > 0 else None for rate in self.ucg_rates]
        else:
            masks = list(drop_mask)
            if len(masks) != len(self.embedders):
                raise ValueError(f"ConditionerStack got {len(masks)} drop masks for {len(self.embedders)} entries")
        return self._combine([self._encode_one(m, v, d) for m, v, d in zip(self.embedders, values, masks)])

    def forward(self, raw: Mapping, drop_mask=None) -> dict:
        return self.encode(raw, drop_mask)

    def null_condition(self, raw: Mapping, overrides: Mapping | None = None) -> dict:
        """The null condition dict for the inputs ``raw`` (see the module docstring for each entry's
        ``null`` mode); ``overrides`` {input_key: value}: those entries encode ``value`` instead
        (a negative prompt)."""
        if not isinstance(raw, Mapping):
            raise TypeError("ConditionerStack.null_condition needs the inputs (a dict), not a batch size: "
                            "spatial entries take their shape from them")
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.input_keys))
        if unknown:
            raise KeyError(f"override keys {unknown} are not inputs of this stack ({self.input_keys})")
        values = self._inputs(raw)
        outputs = []
        for module, key, value, mode in zip(self.embedders, self.input_keys, values, self.null_modes):
            if key in overrides:
                outputs.append(self._encode_one(module, overrides[key]))
            elif mode == "learned":
                outputs.append(module.null_condition(value))
            elif mode == "keep":
                outputs.append(self._encode_one(module, value))
            else:
                outputs.append(torch.zeros_like(self._encode_one(module, value)))
        return self._combine(outputs)
