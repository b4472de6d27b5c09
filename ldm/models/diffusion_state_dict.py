"""Making original and our own stage-2 checkpoints load into a DDPM / LatentDiffusion.

Handled here, before ``nn.Module.load_state_dict`` sees the dict (so Lightning resume, ``ckpt_path``
and :func:`ldm.checkpoint.load_weights` all behave the same):

- stale buffers from old releases (``ddim_sigmas``, ``ddim_alphas``, ``ddim_alphas_prev``,
  ``ddim_sqrt_one_minus_alphas``) and ``...position_ids`` buffers newer ``transformers`` versions
  no longer keep are dropped, unless the model really has such a key;
- EMA: released checkpoints often hold only ``model_ema.decay`` / ``model_ema.num_updates`` (the EMA
  weights were copied into ``model.*``). Every missing EMA shadow is then filled from the
  checkpoint's own ``model.*`` weight, so the EMA equals the loaded weights. A checkpoint with no
  EMA entries at all also keeps the model's current ``decay`` / ``num_updates``. A model without
  EMA drops the checkpoint's ``model_ema.*`` entries.

:class:`DiffusionCheckpoint` is the DDPM's side of it: ``init_from_ckpt`` and ``load_state_dict``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

STALE_BUFFERS = ("ddim_sigmas", "ddim_alphas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas")
EMA_PREFIX = "model_ema."
EMA_SCALARS = ("decay", "num_updates")


def is_stale_key(key: str) -> bool:
    return key in STALE_BUFFERS or key.endswith("position_ids")


def ema_shadow_names(model_param_names, name_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """``model.<param>`` -> ``model_ema.<param with dots removed>`` (the LitEma layout)."""
    out = {}
    for name in model_param_names:
        shadow = name_map[name] if name_map and name in name_map else name.replace(".", "")
        out[f"model.{name}"] = EMA_PREFIX + shadow
    return out


def prepare_state_dict(state_dict: Mapping, own_state: Mapping, shadow_of: Mapping[str, str],
                       has_ema: bool) -> tuple[dict, list[str]]:
    """Return ``(state_dict ready to load, notes)``. ``own_state`` is the model's state dict,
    ``shadow_of`` maps ``model.*`` keys to their EMA shadow keys."""
    notes: list[str] = []
    out = {k: v for k, v in state_dict.items() if k in own_state or not is_stale_key(k)}
    dropped = [k for k in state_dict if k not in out]
    if dropped:
        more = " ..." if len(dropped) > 4 else ""
        notes.append(f"dropped {len(dropped)} stale key(s): {', '.join(dropped[:4])}{more}")

    ema_keys = [k for k in out if k.startswith(EMA_PREFIX)]
    if not has_ema:
        if ema_keys:
            for k in ema_keys:
                del out[k]
            notes.append(f"model has no EMA (use_ema=False): ignored {len(ema_keys)} model_ema.* entries")
        return out, notes

    filled = 0
    for model_key, shadow_key in shadow_of.items():
        if shadow_key in own_state and shadow_key not in out and model_key in out:
            out[shadow_key] = out[model_key].detach().clone()
            filled += 1
    if filled:
        notes.append(f"EMA: {filled} shadow weight(s) missing in the checkpoint, initialised from model.*")
    if not ema_keys and filled:
        for scalar in EMA_SCALARS:
            key = EMA_PREFIX + scalar
            if key in own_state and key not in out:
                out[key] = own_state[key]
    return out, notes


class DiffusionCheckpoint:
    """Checkpoint loading of :class:`~ldm.models.ddpm.DDPM` (a mixin of the LightningModule)."""

    def init_from_ckpt(self, path, ignore_keys: Sequence[str] = (), only_model: bool = False,
                       trust_checkpoint: bool = False):
        """Initialise weights from ``path`` and print a missing / unexpected / ignored key report.
        ``only_model`` loads into the UNet wrapper only (keys with or without the ``model.`` prefix).
        ``path`` may also be an already read state dict."""
        from ldm.checkpoint import filter_keys, load_state_dict, load_weights

        state_dict = path if isinstance(path, Mapping) else load_state_dict(path, trust_checkpoint=trust_checkpoint)
        if only_model:
            state_dict, ignored = filter_keys(state_dict, ignore_keys)
            state_dict = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()
                          if not k.startswith(("model_ema.", "first_stage_model.", "cond_stage_model."))}
            report = load_weights(self.model, state_dict, verbose=False)
            report.ignored = ignored
        else:
            report = load_weights(self, state_dict, ignore_keys=ignore_keys, verbose=False)
        source = "a state dict" if isinstance(path, Mapping) else path
        print(f"[{type(self).__name__}] restored from {source}\n{report}")
        return report

    def _ema_shadow_map(self) -> dict:
        if not self.use_ema:
            return {}
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        return ema_shadow_names(names, getattr(self.model_ema, "m_name2s_name", None))

    def prepare_state_dict(self, state_dict: Mapping) -> dict:
        """Make an original or older checkpoint fit this model (see :mod:`ldm.models.diffusion_state_dict`)."""
        prepared, notes = prepare_state_dict(state_dict, self.state_dict(), self._ema_shadow_map(), self.use_ema)
        for note in notes:
            print(f"[{type(self).__name__}] {note}")
        return prepared

    def load_state_dict(self, state_dict: Mapping, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(self.prepare_state_dict(state_dict), strict=strict, assign=assign)
        self._sync_schedule_with_buffers()
        return result

    def _sync_schedule_with_buffers(self) -> None:
        """If loaded ``betas`` differ from the configured ones, rebuild the schedule from them."""
        loaded = self.betas.detach().double().cpu()
        betas = self.schedule.betas
        if loaded.shape != betas.shape or not torch.allclose(loaded, betas, rtol=1e-5, atol=1e-8):
            print(f"[{type(self).__name__}] checkpoint betas differ from the config; using the checkpoint's schedule")
            zero_terminal = self.zero_terminal_snr
            self.zero_terminal_snr = False  # the loaded betas are already final
            try:
                self.register_schedule(given_betas=loaded, timesteps=int(loaded.shape[0]))
            finally:
                self.zero_terminal_snr = zero_terminal
