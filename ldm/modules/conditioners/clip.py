"""Frozen CLIP text encoder through ``transformers`` (Stable Diffusion v1's conditioner).

``FrozenCLIPEmbedder(version)`` loads ``CLIPTokenizer`` and ``CLIPTextModel`` from a hub name
(``openai/clip-vit-large-patch14``) or a local directory. Offline without a local copy it raises a
clear error. The tokenizer's vocabulary is always checked: offline, ``transformers`` can silently
build a CLIP tokenizer with a 2-token vocabulary, which would turn every caption into padding.

Keys: ``transformer.text_model.*`` (as in SD v1 checkpoints); a stored
``transformer.text_model.embeddings.position_ids`` (older ``transformers``) is ignored on load.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.conditioners.base import Conditioner, as_text_list, batch_size_of
from ldm.modules.conditioners.registry import register_conditioner

MIN_VOCAB = 1000
LAYERS = ("last", "pooled", "penultimate", "hidden")


def check_vocab_size(tokenizer, source: str) -> int:
    size = int(getattr(tokenizer, "vocab_size", 0) or 0)
    if size < MIN_VOCAB:
        raise RuntimeError(f"the tokenizer loaded from {source!r} has only {size} tokens — its vocabulary files are "
                           "missing (offline transformers builds an almost empty tokenizer silently). Download the "
                           "model or pass a local directory with vocab.json/merges.txt or tokenizer.json")
    return size


class _TextModelKeys(nn.Module):
    """Holds a flattened CLIPTextModel as ``text_model`` so keys read ``transformer.text_model.*``."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model

    def forward(self, **kwargs):
        return self.text_model(**kwargs)


@register_conditioner("clip", "frozen_clip")
class FrozenCLIPEmbedder(Conditioner):
    """Captions -> CLIP text hidden states [B, max_length, width] (frozen).

    ``layer``: ``last`` (final layer norm applied, SD v1), ``penultimate`` (hidden state of the
    second-to-last layer, "CLIP skip"), ``hidden`` (``hidden_states[layer_idx]``) or ``pooled``
    ([B, 1, width]). The null condition is the encoding of ``""``.
    ``tokenizer`` / ``transformer`` may be passed as ready objects (tests, custom models).
    """

    input_kind = "text"

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device=None, max_length: int = 77,
                 layer: str = "last", layer_idx: int | None = None, freeze: bool = True, ucg_rate: float = 0.0,
                 tokenizer=None, transformer=None):
        super().__init__(output_key="crossattn", ucg_rate=ucg_rate)
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        if layer == "hidden" and layer_idx is None:
            raise ValueError("layer='hidden' needs layer_idx")
        self.version = version
        self.max_length = max_length
        self.layer = layer
        self.layer_idx = -2 if layer == "penultimate" else layer_idx
        self.tokenizer = tokenizer if tokenizer is not None else self._load_pretrained("CLIPTokenizer", version)
        self.vocab_size = check_vocab_size(self.tokenizer, version)  # before the (slow) model load
        text_model = transformer if transformer is not None else self._load_pretrained("CLIPTextModel", version)
        # transformers >= 5 flattened CLIPTextModel (no ``text_model`` child); restore the original key path
        self.transformer = text_model if hasattr(text_model, "text_model") else _TextModelKeys(text_model)
        model_vocab = text_model.config.vocab_size
        if self.vocab_size > model_vocab:
            raise ValueError(f"tokenizer has {self.vocab_size} tokens but the text model embeds only {model_vocab}")
        self.frozen = freeze
        if freeze:
            self.freeze()

    @staticmethod
    def _load_pretrained(class_name: str, version: str):
        import transformers

        try:
            return getattr(transformers, class_name).from_pretrained(version)
        except (OSError, ValueError) as err:
            raise RuntimeError(f"could not load {class_name} {version!r}: {err}. Without network access, pass a local "
                               "directory holding the model (config.json, weights) and tokenizer files") from err

    def freeze(self) -> None:
        self.transformer.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.transformer.eval()  # the pretrained encoder stays in eval mode (no dropout)
        return self

    def _device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"].to(self._device())

    def batch_size(self, raw) -> int:
        return len(as_text_list(raw))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.transformer(input_ids=tokens, output_hidden_states=self.layer in ("penultimate", "hidden"))
        if self.layer == "last":
            return out.last_hidden_state
        if self.layer == "pooled":
            return out.pooler_output[:, None, :]
        return out.hidden_states[self.layer_idx]

    def _encode(self, raw) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(as_text_list(raw)))

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        batch = batch_size_of(raw_or_batch_size)
        return self.encode_tokens(self.tokenize([""])).expand(batch, -1, -1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        own = self.state_dict(prefix=prefix, keep_vars=True)
        for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("position_ids") and k not in own]:
            del state_dict[key]  # buffer stored by older transformers versions; recomputed here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
