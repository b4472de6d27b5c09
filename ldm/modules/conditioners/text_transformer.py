"""Text conditioner trained from scratch: token + position embedding, pre-norm transformer encoder.

LDM's text-to-image models (Sec. 4.3) use this ("BERTEmbedder"): a BERT tokenizer and an
x-transformers ``TransformerWrapper``/``Encoder``. The module tree reproduces the original keys:
``transformer.token_emb``, ``transformer.pos_emb.emb``, ``transformer.attn_layers.layers.{2i}`` =
``[LayerNorm, Attention(to_q, to_k, to_v, to_out)]``, ``...layers.{2i+1}`` =
``[LayerNorm, FeedForward(net.0.0, net.2)]``, ``transformer.norm`` and ``transformer.to_logits``
(unused for embeddings; frozen, kept so original checkpoints load strictly).

Tokenizers: ``open_clip`` — open_clip's bundled BPE (49408 tokens, works offline; needs
``vocab_size >= 49408``); ``bert`` — ``bert-base-uncased`` through ``transformers`` (30522 tokens,
needs the hub or a local copy; loaded on first use); ``auto`` — ``bert`` when ``vocab_size == 30522``
(the original default, so original checkpoints see the token ids they were trained on), else
``open_clip``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.conditioners.base import Conditioner, as_text_list, batch_size_of
from ldm.modules.conditioners.registry import register_conditioner

BERT_VOCAB_SIZE = 30522


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(dropout),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _PositionEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, length: int) -> torch.Tensor:
        return self.emb(torch.arange(length, device=self.emb.weight.device))[None]


class _AttentionLayers(nn.Module):
    """``layers[2i] = [norm, attention, residual]``, ``layers[2i+1] = [norm, feed-forward, residual]``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _SelfAttention(dim, heads, dim_head, dropout),
                                              nn.Identity()]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _FeedForward(dim, dropout=dropout), nn.Identity()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block, _ in self.layers:
            x = x + block(norm(x))
        return x


class _TransformerWrapper(nn.Module):
    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, heads: int, dim_head: int,
                 emb_dropout: float, dropout: float):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = _PositionEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = _AttentionLayers(dim, depth, heads, dim_head, dropout)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens).requires_grad_(False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_emb(tokens) + self.pos_emb(tokens.shape[1])
        return self.norm(self.attn_layers(self.emb_dropout(x)))


@register_conditioner("text_transformer")
class TransformerEmbedder(Conditioner):
    """Transformer encoder over token ids [B, L] (L <= max_seq_len) -> [B, L, n_embed]."""

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int, max_seq_len: int = 77, device=None,
                 ucg_rate: float = 0.0, heads: int = 8, dim_head: int = 64, embedding_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__(output_key="crossattn", ucg_rate=ucg_rate)
        if min(n_embed, n_layer, vocab_size, max_seq_len) < 1:
            raise ValueError("n_embed, n_layer, vocab_size and max_seq_len must all be >= 1")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.transformer = _TransformerWrapper(vocab_size, max_seq_len, n_embed, n_layer, heads, dim_head,
                                               embedding_dropout, dropout)

    def _device(self) -> torch.device:
        return self.transformer.token_emb.weight.device

    def _check_tokens(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, device=self._device())
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected integer token ids of shape [B, L], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.max_seq_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got max {int(tokens.max())}")
        return tokens.long()

    def tokenize(self, raw) -> torch.Tensor:
        return self._check_tokens(raw)

    def batch_size(self, raw) -> int:
        return batch_size_of(raw)

    def _encode(self, raw) -> torch.Tensor:
        return self.transformer(self.tokenize(raw))

    def null_tokens(self, batch: int, length: int) -> torch.Tensor:
        """Token ids of the null condition: padding (0) everywhere."""
        return torch.zeros(batch, length, dtype=torch.long, device=self._device())

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        batch = batch_size_of(raw_or_batch_size)
        length = self.max_seq_len if isinstance(raw_or_batch_size, int) else self.tokenize(raw_or_batch_size).shape[1]
        return self.transformer(self.null_tokens(1, length)).expand(batch, -1, -1)


class _OpenClipTokenizer:
    def __init__(self, max_length: int):
        import open_clip

        self._tok = open_clip.tokenizer.SimpleTokenizer()
        self.vocab_size = len(self._tok.encoder)
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self._tok(texts, context_length=self.max_length)


class _BertTokenizer:
    def __init__(self, max_length: int, name: str = "bert-base-uncased"):
        from transformers import BertTokenizerFast

        try:
            self._tok = BertTokenizerFast.from_pretrained(name)
        except Exception as err:  # offline / missing files
            raise RuntimeError(f"could not load the BERT tokenizer {name!r} ({err}). It needs the Hugging Face hub "
                               "or a local copy; to train offline use tokenizer='open_clip' with vocab_size >= 49408"
                               ) from err
        self.vocab_size = self._tok.vocab_size
        if self.vocab_size < 1000:
            raise RuntimeError(f"tokenizer {name!r} loaded with only {self.vocab_size} tokens (incomplete offline "
                               "files?)")
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self._tok(texts, truncation=True, max_length=self.max_length, padding="max_length",
                         return_tensors="pt")["input_ids"]


@register_conditioner("bert", "text")
class BERTEmbedder(TransformerEmbedder):
    """Captions -> tokenizer -> :class:`TransformerEmbedder` (original name; trained from scratch).

    With ``use_tokenizer=False`` it takes token ids like :class:`TransformerEmbedder`.
    The null condition is the encoding of the empty caption ``""``.
    """

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int = BERT_VOCAB_SIZE, max_seq_len: int = 77,
                 device=None, use_tokenizer: bool = True, embedding_dropout: float = 0.0, ucg_rate: float = 0.0,
                 tokenizer: str = "auto", **kwargs):
        super().__init__(n_embed, n_layer, vocab_size, max_seq_len, device=device, ucg_rate=ucg_rate,
                         embedding_dropout=embedding_dropout, **kwargs)
        self.use_tknz_fn = use_tokenizer
        if tokenizer == "auto":
            tokenizer = "bert" if vocab_size == BERT_VOCAB_SIZE else "open_clip"
        if tokenizer not in ("bert", "open_clip"):
            raise ValueError(f"tokenizer must be 'auto', 'bert' or 'open_clip', got {tokenizer!r}")
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        if use_tokenizer and tokenizer == "open_clip":
            self._tokenizer = self._load_tokenizer()  # offline: check the vocabulary right away

    @property
    def input_kind(self) -> str:
        """Captions with the tokenizer, token ids (``other``) without."""
        return "text" if self.use_tknz_fn else "other"

    def _load_tokenizer(self):
        tokenizer_class = _OpenClipTokenizer if self.tokenizer_name == "open_clip" else _BertTokenizer
        tok = tokenizer_class(self.max_seq_len)
        if tok.vocab_size > self.vocab_size:
            raise ValueError(f"the {self.tokenizer_name} tokenizer has {tok.vocab_size} tokens but vocab_size is "
                             f"{self.vocab_size}; set vocab_size >= {tok.vocab_size}")
        return tok

    @property
    def tknz_fn(self):
        """The tokenizer (loaded on first use for 'bert', which needs the hub)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def tokenize(self, raw) -> torch.Tensor:
        if not self.use_tknz_fn:
            return self._check_tokens(raw)
        return self._check_tokens(self.tknz_fn(as_text_list(raw)))

    def batch_size(self, raw) -> int:
        return len(as_text_list(raw)) if self.use_tknz_fn else batch_size_of(raw)

    def null_condition(self, raw_or_batch_size) -> torch.Tensor:
        if not self.use_tknz_fn:
            return super().null_condition(raw_or_batch_size)
        batch = batch_size_of(raw_or_batch_size)
        return self.transformer(self.tokenize([""])).expand(batch, -1, -1)
