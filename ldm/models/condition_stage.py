"""The conditioning stage of a latent diffusion model: tau_theta(y) of LDM Eq. 3, classifier-free
guidance dropout while training and the null condition for guided sampling.

``cond_stage_config`` is a conditioner config (or a built module), ``"__is_unconditional__"`` or
``"__is_first_stage__"`` (the condition is the first-stage latent of ``batch[cond_stage_key]``).
Conditioners following the contract of ``docs/architecture.md`` (``encode(raw, drop_mask)``,
``null_condition``, ``ucg_rate``) get classifier-free-guidance dropout during training and a null
condition for guided sampling; other modules (e.g. ``torch.nn.Identity``) are called as in the
original (``encode`` if present, else ``forward``).

The model states what a caller needs to drive it (:meth:`ConditionStage.condition_kind`,
:meth:`ConditionStage.text_input_key`, :meth:`ConditionStage.concat_inputs`): the sampling command
asks these instead of looking at the conditioner's class.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ldm.models.conditioning import BARE_TENSOR_ENTRY, concat_inputs
from ldm.models.first_stage import freeze
from ldm.samplers import condition_batch_size
from ldm.util import FIRST_STAGE, UNCONDITIONAL, ConfigError, instantiate_from_config

#: batch keys that name captions (a conditioner that does not state its input kind is a text one on these)
TEXT_KEYS = ("caption", "txt", "text", "prompt", "prompts")
#: the kinds of conditioning :meth:`ConditionStage.condition_kind` reports
CONDITION_KINDS = ("none", "class", "text", "other")


class ConditionStage:
    """Conditioning methods of :class:`~ldm.models.latent_diffusion.LatentDiffusion` (a mixin)."""

    def instantiate_cond_stage(self, config) -> None:
        self.cond_is_first_stage = config == FIRST_STAGE
        if config == UNCONDITIONAL:
            self.cond_stage_model = None
            return
        if self.cond_is_first_stage:
            print(f"{type(self).__name__}: using the first stage as the cond stage")
            self.cond_stage_model = self.first_stage_model
            return
        model = config if isinstance(config, nn.Module) else instantiate_from_config(config, node="cond_stage_config")
        self.cond_stage_model = model if self.cond_stage_trainable else freeze(model)
        if self.is_stack:
            model.attach_first_stage(lambda x: self.encode_to_latent(x, sample=False))
        output_key = getattr(model, "output_key", None)
        expected = BARE_TENSOR_ENTRY.get(self.conditioning_key)
        if output_key is not None and expected is not None and output_key != expected:
            raise ConfigError(f"cond_stage_config: {type(model).__name__} produces a {output_key!r} condition but "
                              f"conditioning_key={self.conditioning_key!r} feeds {expected!r}")

    @property
    def is_stack(self) -> bool:
        """The conditioner is a :class:`~ldm.modules.conditioners.stack.ConditionerStack` (raw
        conditions are dicts keyed by its input keys)."""
        from ldm.modules.conditioners.stack import ConditionerStack

        return isinstance(getattr(self, "cond_stage_model", None), ConditionerStack)

    @property
    def can_guide(self) -> bool:
        """The conditioner provides a null condition (classifier-free guidance is possible)."""
        return self._supports_contract()

    def _supports_contract(self) -> bool:
        model = self.cond_stage_model
        return model is not None and callable(getattr(model, "null_condition", None))

    @property
    def ucg_rate(self) -> float:
        return float(getattr(self.cond_stage_model, "ucg_rate", 0.0) or 0.0) if self._supports_contract() else 0.0

    def get_learned_conditioning(self, c, drop_mask: torch.Tensor | None = None):
        """tau_theta(y) (LDM Eq. 3): the conditioner's output for raw conditioning ``c``; rows where
        ``drop_mask`` is True get the null condition (classifier-free-guidance training); without a
        mask nothing is dropped."""
        model = self.cond_stage_model
        if model is None:
            return None
        if self.cond_is_first_stage:
            return self.encode_to_latent(c, sample=False)
        if self.cond_stage_forward is not None:
            return getattr(model, self.cond_stage_forward)(c)
        if self._supports_contract():  # dropout only where drop_mask says so (never the module's own)
            return model.encode(c, drop_mask=drop_mask if drop_mask is not None else self._no_drop(c))
        if callable(getattr(model, "encode", None)):
            out = model.encode(c)
            return out.mode() if callable(getattr(out, "mode", None)) else out
        return model(c)

    def null_conditioning(self, batch_size: int, raw=None, negative=None):
        """The null condition (CFG's unconditional branch) for ``batch_size`` samples, or None if the
        conditioner has none. Spatial conditioners (``SpatialRescaler``, a ``ConditionerStack``) take
        its shape from the raw inputs ``raw`` (zeros of the encoded shape; see each conditioner).
        ``negative``: a negative prompt / condition that replaces the null - raw input for a single
        conditioner, ``{input_key: value}`` for a stack (the other entries keep their own null)."""
        if not self._supports_contract():
            if negative is not None:
                raise ValueError("a negative condition needs a conditioner with a null condition")
            return None
        model = self.cond_stage_model
        if self.is_stack:
            if raw is None:
                raise ValueError("the null condition of a conditioner stack needs the raw inputs (a dict)")
            if negative is not None and not isinstance(negative, Mapping):
                keys = [k for k, s in zip(model.input_keys, model.output_keys) if s == "crossattn"]
                if len(keys) != 1:
                    raise ValueError("a negative prompt needs exactly one cross-attention input, this stack "
                                     f"has {keys}")
                negative = {keys[0]: negative}
            null = model.null_condition(raw, overrides=negative)
        elif negative is not None:
            null = model.encode(negative, drop_mask=self._no_drop(negative))
        elif getattr(model, "null_needs_input", False):
            if raw is None:
                raise ValueError(f"the null condition of {type(model).__name__} needs the raw input (its shape)")
            null = model.null_condition(raw)
        else:
            null = model.null_condition(batch_size)
        return null

    def _raw_batch_size(self, raw) -> int:
        if self.is_stack:
            return self.cond_stage_model.batch_size(raw)
        return raw.shape[0] if isinstance(raw, torch.Tensor) else len(raw)

    def raw_condition(self, batch: Mapping, n: int | None = None):
        """``batch[cond_stage_key]`` moved to the model's device (first ``n`` rows); for a conditioner
        stack, the dict of its input keys."""
        if self.is_stack:
            return {key: self._raw_value(batch, key, n, spatial=True)
                    for key in dict.fromkeys(self.cond_stage_model.input_keys)}
        spatial = self.cond_is_first_stage or self.conditioning_key == "concat"
        return self._raw_value(batch, self.cond_stage_key, n, spatial)

    def _raw_value(self, batch: Mapping, key: str, n: int | None, spatial: bool):
        if key not in batch:
            raise KeyError(f"batch has no key {key!r} for the condition (keys: {sorted(batch)}); "
                           "check cond_stage_key / the conditioners' input_key")
        raw = batch[key]
        if n is not None:
            raw = raw[:n]
        if isinstance(raw, torch.Tensor):
            raw = raw.to(self.device)
            if raw.is_floating_point() and raw.ndim == 4 and spatial:
                raw = raw.float()
        return raw

    def condition_from_batch(self, batch: Mapping, n: int | None = None, drop: bool | None = None):
        """Learned conditioning for a batch, with ucg dropout while training (``drop=None``)."""
        if self.cond_stage_model is None:
            return None
        raw = self.raw_condition(batch, n)
        drop = self.training if drop is None else drop
        drop_mask = self._no_drop(raw)
        if drop and self.ucg_rate > 0:
            batch_size = self._raw_batch_size(raw)
            if self.is_stack:  # one independent mask per entry, each at its own ucg_rate
                drop_mask = self.cond_stage_model.sample_drop_masks(batch_size, self.device)
            else:
                drop_mask = torch.rand(batch_size, device=self.device) < self.ucg_rate
        if self.cond_stage_trainable:
            cond = self.get_learned_conditioning(raw, drop_mask)
        else:
            with torch.no_grad():
                cond = self.get_learned_conditioning(raw, drop_mask)
        return self.append_mask(cond, batch, n)

    def append_mask(self, cond, batch: Mapping, n: int | None = None):
        """With ``concat_mask_key`` (inpainting): concatenate ``batch[concat_mask_key]`` (1 = region to
        fill), resized to the latent size, to the concat condition (the original inpainting model's
        masked-image latent + mask input, 3 + 1 channels)."""
        if self.concat_mask_key is None:
            return cond
        mask = self.image_from_batch(batch, self.concat_mask_key)[:n].to(self.device)
        target = cond["concat"] if isinstance(cond, Mapping) else cond
        joined = concat_inputs([target, mask.to(target.dtype)])
        if isinstance(cond, Mapping):
            return {**cond, "concat": joined}
        return joined

    def sampling_conditions(self, batch_size: int | None = None, inputs=None, conditioning=None, negative=None,
                            null_conditioning=None):
        """``(batch size, learned condition, null condition)`` for :meth:`sample`: from ``inputs`` (raw
        conditions, a batch dict or a stack's input dict), from a learned ``conditioning``, or for an
        unconditional model from ``batch_size`` alone. ``negative`` replaces the null condition (see
        :meth:`null_conditioning`); ``null_conditioning`` is a learned one."""
        if conditioning is not None:
            if inputs is not None:
                raise ValueError("pass either the raw `inputs` or the learned `conditioning`, not both")
            batch_size = condition_batch_size(conditioning)
            if null_conditioning is None and (negative is not None or self.is_stack
                                              or getattr(self.cond_stage_model, "null_needs_input", False)):
                raise ValueError("with a learned `conditioning`, pass `null_conditioning` too (this null "
                                 "needs the raw inputs), or pass the raw conditions instead")
            null = null_conditioning if null_conditioning is not None else self.null_conditioning(batch_size)
            return batch_size, conditioning, null
        if inputs is None:
            if self.cond_stage_model is not None:
                raise ValueError(f"this model is conditional on {self.cond_stage_key!r}: pass the raw conditions "
                                 "(labels, captions, images) instead of a batch size")
            return 16 if batch_size is None else int(batch_size), None, None
        if self.cond_stage_model is None:
            raise ValueError("an unconditional model takes a batch size, not a condition")
        batch = inputs if isinstance(inputs, Mapping) else None
        if batch is not None:  # a batch (or a stack's inputs): its condition (and inpainting mask)
            cond = self.condition_from_batch(batch, drop=False)
            raw = self.raw_condition(batch)
        else:
            raw = inputs.to(self.device) if isinstance(inputs, torch.Tensor) else inputs
            cond = self.get_learned_conditioning(raw, self._no_drop(raw))
        batch_size = self._raw_batch_size(raw)
        if null_conditioning is not None:
            return batch_size, cond, null_conditioning
        null = self.null_conditioning(batch_size, raw=raw, negative=negative)
        if null is not None and self.concat_mask_key is not None:
            null = self.append_mask(null, batch)  # the mask is an input, not dropped: same in both branches
        return batch_size, cond, null

    def conditions_for_sampling(self, raw, negative=None, null_conditioning=None):
        """``(batch size, condition, null condition)`` for raw conditions (labels, captions, a batch
        or a stack's input dict, conditioning images) as :meth:`sample` uses them; ``negative``
        replaces the null condition (see :meth:`null_conditioning`)."""
        return self.sampling_conditions(inputs=raw, negative=negative, null_conditioning=null_conditioning)

    def _no_drop(self, raw):
        """An all-False drop mask (no condition dropout at sampling, whatever the module's mode)."""
        if not self._supports_contract():
            return None
        size = self.cond_stage_model.batch_size(raw) if hasattr(self.cond_stage_model, "batch_size") else len(raw)
        return torch.zeros(size, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ facts
    def condition_kind(self) -> str:
        """What the condition is: ``none`` | ``class`` (labels) | ``text`` (captions) | ``other`` (images,
        maps, a stack). A conditioner states it as ``input_kind``; one that does not is a text one
        when ``cond_stage_key`` names captions (:data:`TEXT_KEYS`)."""
        model = self.cond_stage_model
        if model is None:
            return "none"
        if self.cond_is_first_stage:
            return "other"
        kind = getattr(model, "input_kind", None)
        if kind in CONDITION_KINDS:
            return kind
        if callable(getattr(model, "labels", None)) and hasattr(model, "n_classes"):
            return "class"  # a class embedder that does not state it
        return "text" if str(self.cond_stage_key).lower() in TEXT_KEYS else "other"

    def class_labels(self) -> list[int]:
        """The class indices a caller may ask for: every embedding row but the null class (``[]`` unless
        :meth:`condition_kind` is ``class``)."""
        if self.condition_kind() != "class":
            return []
        embedder = self.cond_stage_model
        null = getattr(embedder, "null_class_index", None)
        embedding = getattr(embedder, "embedding", None)
        rows = int(embedding.num_embeddings) if embedding is not None else int(embedder.n_classes)
        return [i for i in range(rows) if i != null]

    def text_input_key(self) -> str | None:
        """The batch key of a conditioner stack's caption entry (a hybrid model's cross-attention text), else None."""
        if not self.is_stack:
            return None
        stack = self.cond_stage_model
        for module, key in zip(stack.embedders, stack.input_keys):
            if getattr(module, "input_kind", None) == "text" or key.lower() in TEXT_KEYS:
                return key
        return None

    def spatial_inputs(self) -> list[tuple[str, int, float]]:
        """``(batch key, channels, input pixels per latent cell)`` of every input the ``concat``
        condition is built from (LDM Sec. 3.3): a single spatial conditioner's ``cond_stage_key``, a
        stack's ``concat`` entries, and ``concat_mask_key``; empty without spatial conditioning."""
        cond = self.cond_stage_model
        if cond is None:
            return []
        found = []
        if self.is_stack:
            found += [(key, *self._spatial_scale(module)) for module, key, slot in
                      zip(cond.embedders, cond.input_keys, cond.output_keys) if slot == "concat"]
        elif self.conditioning_key in ("concat", "hybrid") and (
                getattr(cond, "output_key", "concat") == "concat" or self.cond_is_first_stage):
            found.append((self.cond_stage_key, *self._spatial_scale(cond)))
        if self.concat_mask_key is not None:
            found.append((self.concat_mask_key, 1, float(self.first_stage_factor)))
        return found

    def _spatial_scale(self, module: nn.Module) -> tuple[int, float]:
        """(channels, input pixels per latent cell) of the input of one spatial conditioner."""
        from ldm.modules.conditioners import SpatialRescaler
        from ldm.modules.conditioners.stack import FirstStageSlot

        if isinstance(module, SpatialRescaler):
            return module.in_channels, 1.0 / (module.multiplier ** module.n_stages)
        if isinstance(module, FirstStageSlot) or module is self.first_stage_model:
            return self.image_channels, float(self.first_stage_factor)
        return 3, 1.0  # an identity: the input has the latent's size (bsr_sr's LR_image)
