"""The EMA weight swap shared by the diffusion models and the VQ autoencoder.

A model with ``use_ema`` keeps a :class:`~ldm.modules.ema.LitEma` of some of its weights as
``model_ema`` (the UNet wrapper ``self.model`` for DDPM / LatentDiffusion, the whole module for
``VQModel``); :meth:`EmaScope.ema_scope` copies the averaged weights in and puts the trained ones
back on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


class EmaScope:
    """Mixin for a module with ``use_ema`` and ``model_ema``; :meth:`ema_module` says which weights
    the average covers."""

    def ema_module(self) -> nn.Module:
        """The module whose parameters ``model_ema`` averages."""
        return self.model

    @contextmanager
    def ema_scope(self, context: str | None = None):
        """Temporarily swap the EMA weights in (a no-op without EMA); ``context`` names the swap in a print."""
        if not self.use_ema:
            yield None
            return
        module = self.ema_module()
        self.model_ema.store(module.parameters())
        self.model_ema.copy_to(module)
        if context is not None:
            print(f"{context}: switched to EMA weights")
        try:
            yield None
        finally:
            self.model_ema.restore(module.parameters())
            if context is not None:
                print(f"{context}: restored training weights")

    @contextmanager
    def maybe_ema_scope(self, use_ema: bool):
        """:meth:`ema_scope` when ``use_ema`` is asked for and the model has EMA weights, else nothing."""
        if use_ema and self.use_ema:
            with self.ema_scope():
                yield
        else:
            yield
