"""Frozen OpenCLIP text encoder through ``open_clip`` (Stable Diffusion v2's conditioner).

``FrozenOpenCLIPEmbedder(arch='ViT-H-14', version='laion2b_s32b_b79k')`` calls
``open_clip.create_model_and_transforms(arch, pretrained=version)``; ``version`` may be a pretrained
tag or a local checkpoint file. Offline without a local file it raises a clear error. The vision
tower is dropped (``del model.visual``), so the keys are ``model.token_embedding``,
``model.positional_embedding``, ``model.transformer.resblocks.*``, ``model.ln_final``,
``model.text_projection``, ``model.logit_scale`` as in SD v2 checkpoints.

``layer='penultimate'`` (SD v2) stops one residual block early and then applies ``ln_final``;
``layer='last'`` runs all blocks. ``model_config`` builds an ``open_clip.CLIP`` from a dict
(``embed_dim``, ``vision_cfg``, ``text_cfg``) without weights — for tests and custom towers.
"""
from __future__ import annotations

import torch

from ldm.modules.conditioners.base import Conditioner, as_text_list, batch_size_of
from ldm.modules.conditioners.clip import MIN_VOCAB
from ldm.modules.conditioners.registry import register_conditioner


@register_conditioner("open_clip", "frozen_open_clip")
class FrozenOpenCLIPEmbedder(Conditioner):
    LAYERS = ("last", "penultimate")
    input_kind = "text"

    def __init__(self, arch: str = "ViT-H-14", version: str | None = "laion2b_s32b_b79k", device=None,
                 max_length: int = 77, freeze: bool = True, layer: str = "last", ucg_rate: float = 0.0,
                 model_config: dict | None = None):
        super().__init__(output_key="crossattn", ucg_rate=ucg_rate)
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        self.layer = layer
        self.layer_idx = 0 if layer == "last" else 1
        self.max_length = max_length
        model = self._build(arch, version, model_config)
        del model.visual
        self.model = model
        self._tokenizer = self._make_tokenizer(arch if model_config is None else None)
        self.frozen = freeze
        if freeze:
            self.freeze()

    @staticmethod
    def _build(arch: str, version: str | None, model_config: dict | None):
        import open_clip

        if model_config is not None:
            return open_clip.CLIP(**model_config)
        try:
            model, _, _ = open_clip.create_model_and_transforms(arch, device="cpu", pretrained=version)
        except Exception as err:  # network / missing file / unknown tag
            raise RuntimeError(f"could not build OpenCLIP {arch!r} with pretrained={version!r}: {err}. Without "
                               "network access pass version=<path to a local open_clip checkpoint>") from err
        return model

    def _make_tokenizer(self, arch: str | None):
        import open_clip

        tokenizer = open_clip.get_tokenizer(arch) if arch else open_clip.tokenizer.SimpleTokenizer()
        vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
        if vocab < MIN_VOCAB:
            raise RuntimeError(f"the OpenCLIP tokenizer for {arch!r} has only {vocab} tokens")
        if vocab > self.model.vocab_size:
            raise ValueError(f"tokenizer has {vocab} tokens but the text model embeds only {self.model.vocab_size}")
        if self.max_length > self.model.context_length:
            raise ValueError(f"max_length {self.max_length} exceeds the model's context length "
                             f"{self.model.context_length}")
        self.vocab_size = vocab
        return tokenizer

    def freeze(self) -> None:
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        tokens = self._tokenizer(texts, context_length=self.max_length)
        return tokens.to(self.model.token_embedding.weight.device)

    def batch_size(self, raw) -> int:
        return len(as_text_list(raw))

    def encode_with_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        length = tokens.shape[1]
        x = m.token_embedding(tokens) + m.positional_embedding[:length]
        attn_mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        batch_first = getattr(m.transformer, "batch_first", False)
        if not batch_first:
            x = x.permute(1, 0, 2)
        blocks = m.transformer.resblocks
        for block in list(blocks)[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=attn_mask)
        if not batch_first:
            x = x.permute(1, 0, 2)
        return m.ln_final(x)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encode_with_transformer(tokens)

    def _encode(self, raw) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(as_text_list(raw)))

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        batch = batch_size_of(raw_or_batch_size)
        return self.encode_tokens(self.tokenize([""])).expand(batch, -1, -1)
