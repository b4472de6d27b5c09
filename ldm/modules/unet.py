"""The denoising UNet ε_θ(z_t, t, y) of LDM (Sec. 3.2–3.3, Appx. B), with the ADM layout.

Parameters keep the original names (``ldm.modules.diffusionmodules.openaimodel.UNetModel``) and the
module tree reproduces the original state-dict keys (``time_embed``, ``label_emb``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``), so original checkpoints load strictly.

Conditioning (LDM Sec. 3.3): ``context`` [B, M, context_dim] goes to every SpatialTransformer's
cross-attention; ``y`` goes through ``label_emb`` and is added to the timestep embedding
(class labels [B] when ``num_classes`` is an int, vectors [B, adm_in_channels] when it is
``"sequential"``); concat conditioning is done by the caller on the channel axis.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldm.modules.attention import AttentionBlock, SpatialTransformer
from ldm.modules.unet_blocks import Downsample, ResBlock, TimestepEmbedSequential, Upsample
from ldm.modules.unet_layers import conv_nd, normalization, timestep_embedding, zero_module


class UNetModel(nn.Module):
    """UNet with timestep embedding, optional self-attention / cross-attention and class embedding.

    :param attention_resolutions: downsampling factors (1, 2, 4, ...) at which attention is used.
    :param num_heads: attention heads (``-1``: derive from ``num_head_channels``).
    :param num_head_channels: fixed width per head; overrides ``num_heads`` when not ``-1``.
    :param num_heads_upsample: heads of the decoder's self-attention blocks (``-1``: ``num_heads``).
    :param use_spatial_transformer: use SpatialTransformer (cross-attention) instead of AttentionBlock;
        its head width is ``ch // num_heads``.
    :param legacy: the original's head rule (see :meth:`_heads_for`).
    :param use_checkpoint: gradient checkpointing of res/attention/transformer blocks (off by default).
    :param use_fp16: accepted for compatibility and ignored — use the trainer's mixed precision.
    :param use_linear_in_transformer: SD 2.x: linear ``proj_in``/``proj_out`` in the SpatialTransformers.
    :param disable_self_attentions: per level, True makes the transformer's ``attn1`` cross-attend too.
    :param disable_middle_self_attn: the same for the middle block.
    :param n_embed: if set, the model predicts VQ codebook ids with an extra head (``id_predictor``).
    """

    def __init__(self, image_size, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[int] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes=None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = -1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, use_spatial_transformer: bool = False,
                 transformer_depth: int = 1, context_dim: int | None = None, n_embed: int | None = None,
                 legacy: bool = True, adm_in_channels: int | None = None,
                 use_linear_in_transformer: bool = False, disable_self_attentions: Sequence[bool] | None = None,
                 disable_middle_self_attn: bool = False):
        super().__init__()
        context_dim = self._check_context_dim(context_dim, use_spatial_transformer)
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set either num_heads or num_head_channels (both are -1)")
        if not isinstance(num_res_blocks, int) or num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be a positive int, got {num_res_blocks!r}")
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = {int(r) for r in attention_resolutions}
        if disable_self_attentions is not None and len(disable_self_attentions) != len(channel_mult):
            raise ValueError(f"disable_self_attentions needs one entry per level ({len(channel_mult)}), "
                             f"got {list(disable_self_attentions)}")
        if disable_self_attentions:
            no_self_attn = [bool(d) for d in disable_self_attentions]
        else:
            no_self_attn = [False] * len(channel_mult)
        for mult in channel_mult:
            if (mult * model_channels) % 32:
                raise ValueError(f"model_channels*channel_mult = {mult * model_channels} must be divisible by 32 "
                                 "(GroupNorm(32))")

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.channel_mult = channel_mult
        self.dims = dims
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.use_checkpoint = use_checkpoint
        self.predict_codebook_ids = n_embed is not None
        self._attn = dict(num_heads=num_heads, num_head_channels=num_head_channels,
                          num_heads_upsample=num_heads if num_heads_upsample == -1 else num_heads_upsample,
                          legacy=legacy, spatial=use_spatial_transformer, depth=transformer_depth,
                          new_order=use_new_attention_order, checkpoint=use_checkpoint, dropout=dropout,
                          linear=use_linear_in_transformer)

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = self._make_label_embedding(num_classes, emb_dim, adm_in_channels)

        def res_block(ch_in, ch_out, **updown):
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out, dims=dims, use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm, **updown)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(self._attention(ch, decoder=False, no_self_attn=no_self_attn[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = (res_block(ch, ch, down=True) if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), self._attention(ch, decoder=False, no_self_attn=disable_middle_self_attn),
            res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(self._attention(ch, decoder=True, no_self_attn=no_self_attn[level]))
                if level and i == num_res_blocks:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)))
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch), conv_nd(dims, model_channels, n_embed, 1))

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_context_dim(context_dim, use_spatial_transformer: bool):
        if use_spatial_transformer and context_dim is None:
            raise ValueError("use_spatial_transformer=True needs context_dim (the width of the conditioning)")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError("context_dim is set but use_spatial_transformer is False; cross-attention needs it")
        if isinstance(context_dim, (list, tuple)):
            if len(set(context_dim)) != 1:
                raise ValueError(f"per-level context_dim lists are not supported, got {context_dim}")
            context_dim = context_dim[0]
        return context_dim

    @staticmethod
    def _make_label_embedding(num_classes, emb_dim: int, adm_in_channels: int | None) -> nn.Module:
        if num_classes == "sequential":
            if adm_in_channels is None:
                raise ValueError("num_classes='sequential' needs adm_in_channels (the width of the vector y)")
            return nn.Sequential(nn.Sequential(
                nn.Linear(adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or 'sequential', got {num_classes!r}")
        return nn.Embedding(num_classes, emb_dim)

    def _heads_for(self, ch: int, decoder: bool) -> tuple[int, int]:
        """(num_heads, head width) at width ``ch``, following the original rule.

        ``num_head_channels`` (if not -1) fixes the head width and gives ``ch // num_head_channels``
        heads; otherwise the width is ``ch // num_heads``. With ``legacy`` a SpatialTransformer uses
        ``ch // num_heads`` and a self-attention block gets ``num_head_channels`` as given.
        Decoder self-attention blocks use ``num_heads_upsample``.
        """
        a = self._attn
        num_heads, head_channels = a["num_heads"], a["num_head_channels"]
        if head_channels == -1:
            dim_head = ch // num_heads
        else:
            num_heads, dim_head = ch // head_channels, head_channels
        if a["legacy"]:
            dim_head = ch // num_heads if a["spatial"] else head_channels
        if decoder and not a["spatial"]:
            num_heads = a["num_heads_upsample"]
        return num_heads, dim_head

    def _attention(self, ch: int, decoder: bool, no_self_attn: bool = False) -> nn.Module:
        a = self._attn
        num_heads, dim_head = self._heads_for(ch, decoder)
        if a["spatial"]:
            return SpatialTransformer(ch, num_heads, dim_head, depth=a["depth"], context_dim=self.context_dim,
                                      use_checkpoint=a["checkpoint"], use_linear=a["linear"],
                                      disable_self_attn=no_self_attn)
        return AttentionBlock(ch, num_heads=num_heads, num_head_channels=dim_head,
                              use_checkpoint=a["checkpoint"], use_new_attention_order=a["new_order"])

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, x, timesteps, context, y) -> torch.Tensor:
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape [B, {self.in_channels}, ...] with {self.dims} spatial dims, "
                             f"got {tuple(x.shape)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if any(s % factor for s in x.shape[-2:]):
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {factor} "
                             f"({len(self.channel_mult)} resolution levels)")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("y (class labels / adm vector) must be given exactly when the UNet has num_classes "
                             f"(num_classes={self.num_classes!r}, y given: {y is not None})")
        if self.context_dim is not None and context is None:
            raise ValueError(f"this UNet cross-attends to a context of width {self.context_dim}; pass context")
        if self.context_dim is None and context is not None:
            raise ValueError("context was passed but this UNet has no cross-attention (use_spatial_transformer=False)")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {tuple(timesteps.shape)}")
        return timesteps

    def forward(self, x: torch.Tensor, timesteps=None, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """ε_θ(x, t, context, y): ``x`` [B, in_channels, H, W] → [B, out_channels, H, W]."""
        timesteps = self._check_inputs(x, timesteps, context, y)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y has batch {y.shape[0]}, x has batch {x.shape[0]}")
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.id_predictor(h) if self.predict_codebook_ids else self.out(h)
