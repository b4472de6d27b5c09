"""Conditioners: output shapes, null conditions, ucg dropout, registry / original target strings,
tokenizer vocabulary checks, original key layouts. All models are tiny and random (offline)."""
from __future__ import annotations

import pytest
import torch

from ldm.modules.conditioners import (
    BERTEmbedder,
    ClassEmbedder,
    FrozenCLIPEmbedder,
    FrozenOpenCLIPEmbedder,
    SpatialRescaler,
    TransformerEmbedder,
    get_conditioner,
)
from ldm.util import instantiate_from_config

OPEN_CLIP_VOCAB = 49408


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def clip_tokenizer():
    """A transformers CLIPTokenizer built offline from open_clip's bundled BPE vocabulary."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = open_clip.tokenizer.SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, clip_tokenizer):
    """A tiny random CLIP text model + tokenizer saved like a hub snapshot."""
    from transformers import CLIPTextConfig, CLIPTextModel

    path = tmp_path_factory.mktemp("tiny-clip")
    config = CLIPTextConfig(vocab_size=OPEN_CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(path)
    clip_tokenizer.save_pretrained(path)
    return str(path)


TINY_OPEN_CLIP = dict(embed_dim=16,
                      vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                      text_cfg=dict(context_length=77, vocab_size=OPEN_CLIP_VOCAB, width=32, heads=2, layers=2))


# ----------------------------------------------------------------------------- class labels
def test_class_embedder_cin256_v2_config_shapes_and_null_class():
    cfg = {"target": "ldm.modules.encoders.modules.ClassEmbedder",
           "params": {"n_classes": 1001, "embed_dim": 512, "key": "class_label"}}
    emb = instantiate_from_config(cfg)
    assert isinstance(emb, ClassEmbedder) and emb.output_key == "crossattn"
    assert dict(emb.state_dict()) .keys() == {"embedding.weight"}
    assert emb.embedding.weight.shape == (1001, 512)
    assert emb.null_class_index == 1000  # the config reserves index 1000 for "no class"
    batch = {"class_label": torch.tensor([3, 999]), "image": torch.zeros(2, 3, 8, 8)}
    z = emb.encode(batch)
    assert z.shape == (2, 1, 512)
    torch.testing.assert_close(z[:, 0], emb.embedding.weight[[3, 999]])
    torch.testing.assert_close(emb.null_condition(3), emb.embedding.weight[1000].expand(3, 1, 512))
    with pytest.raises(ValueError, match="class labels"):
        emb.encode(torch.tensor([1001]))
    with pytest.raises(KeyError, match="class_label"):
        emb.encode({"class": torch.tensor([1])})


def test_class_embedder_add_null_class_and_vector_output():
    emb = ClassEmbedder(embed_dim=8, n_classes=10, add_null_class=True, output_key="vector")
    assert emb.embedding.weight.shape == (11, 8) and emb.null_class_index == 10
    z = emb.encode([0, 9, 4])
    assert z.shape == (3, 8)
    dropped = emb.encode([0, 9, 4], drop_mask=torch.tensor([False, True, False]))
    torch.testing.assert_close(dropped[[0, 2]], z[[0, 2]])
    torch.testing.assert_close(dropped[1], emb.embedding.weight[10])
    explicit = ClassEmbedder(embed_dim=4, n_classes=5, null_class_index=0)
    torch.testing.assert_close(explicit.null_condition(1)[0, 0], explicit.embedding.weight[0])
    with pytest.raises(ValueError, match="null_class_index"):
        ClassEmbedder(embed_dim=4, n_classes=5, null_class_index=5)


def test_ucg_rate_sampling_fraction():
    emb = ClassEmbedder(embed_dim=4, n_classes=3, ucg_rate=0.3).train()
    labels = torch.zeros(4000, dtype=torch.long)
    assert not (emb.encode(labels)[:, 0] == emb.embedding.weight[2]).all(dim=1).any()  # no mask: no dropout
    mask = emb.sample_drop_mask(4000, generator=torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and abs(mask.float().mean().item() - 0.3) < 0.035
    z = emb.encode(labels, drop_mask=mask)[:, 0]
    is_null = (z == emb.embedding.weight[2]).all(dim=1)
    assert torch.equal(is_null, mask)  # replaced exactly where the mask is True
    assert not ClassEmbedder(embed_dim=4, n_classes=3).sample_drop_mask(100).any()  # ucg_rate 0
    with pytest.raises(ValueError, match="ucg_rate"):
        ClassEmbedder(embed_dim=4, ucg_rate=1.5)
    with pytest.raises(ValueError, match="drop_mask"):
        emb.encode(labels[:3], drop_mask=torch.tensor([True, False]))


# ----------------------------------------------------------------------------- text from scratch
def test_bert_embedder_with_bundled_bpe_tokenizer():
    cfg = {"target": "ldm.modules.encoders.modules.BERTEmbedder",
           "params": {"n_embed": 32, "n_layer": 1, "vocab_size": OPEN_CLIP_VOCAB, "max_seq_len": 16}}
    emb = instantiate_from_config(cfg).eval()
    assert emb.tokenizer_name == "open_clip" and emb.tknz_fn.vocab_size == OPEN_CLIP_VOCAB
    captions = ["a red square", "two blue circles", "a green triangle"]
    z = emb.encode(captions)
    assert z.shape == (3, 16, 32)
    null = emb.null_condition(3)
    torch.testing.assert_close(null[1], emb.encode([""])[0])
    assert (null[0] - z[0]).abs().max() > 1e-4
    dropped = emb.encode(captions, drop_mask=torch.tensor([True, False, True]))
    torch.testing.assert_close(dropped[1], z[1])
    torch.testing.assert_close(dropped[[0, 2]], null[[0, 2]])
    # the tokenizer's vocabulary must fit in the embedding table
    with pytest.raises(ValueError, match="vocab_size"):
        BERTEmbedder(n_embed=32, n_layer=1, vocab_size=1000, tokenizer="open_clip")


def test_bert_embedder_original_key_layout():
    emb = BERTEmbedder(n_embed=32, n_layer=2, vocab_size=OPEN_CLIP_VOCAB, max_seq_len=8)
    keys = set(emb.state_dict())
    for i in (0, 2):  # attention layers
        assert {f"transformer.attn_layers.layers.{i}.0.weight", f"transformer.attn_layers.layers.{i}.1.to_q.weight",
                f"transformer.attn_layers.layers.{i}.1.to_out.weight"} <= keys
    for i in (1, 3):  # feed-forward layers
        assert {f"transformer.attn_layers.layers.{i}.1.net.0.0.weight",
                f"transformer.attn_layers.layers.{i}.1.net.2.bias"} <= keys
    assert {"transformer.token_emb.weight", "transformer.pos_emb.emb.weight", "transformer.norm.weight",
            "transformer.to_logits.weight"} <= keys
    assert emb.state_dict()["transformer.attn_layers.layers.0.1.to_q.weight"].shape == (512, 32)  # 8 heads x 64
    assert not any("tknz_fn" in k for k in keys)


def test_txt2img_config_builds_without_network():
    # original txt2img-1p4B-eval cond_stage_config; BERT tokenizer is only fetched on first use
    cfg = {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {"n_embed": 1280, "n_layer": 32}}
    with torch.device("meta"):
        emb = instantiate_from_config(cfg)
    assert emb.tokenizer_name == "bert"
    assert emb.state_dict()["transformer.token_emb.weight"].shape == (30522, 1280)
    assert len([k for k in emb.state_dict() if k.endswith("1.to_q.weight")]) == 32


def test_transformer_embedder_on_token_ids():
    emb = TransformerEmbedder(n_embed=16, n_layer=1, vocab_size=100, max_seq_len=10).eval()
    tokens = torch.randint(1, 100, (2, 10))
    z = emb.encode(tokens)
    assert z.shape == (2, 10, 16)
    assert emb.null_condition(tokens).shape == (2, 10, 16)
    assert emb.null_condition(4).shape == (4, 10, 16)
    with pytest.raises(ValueError, match="token ids"):
        emb.encode(torch.full((1, 4), 100))
    with pytest.raises(ValueError, match="max_seq_len"):
        emb.encode(torch.ones(1, 11, dtype=torch.long))


# ----------------------------------------------------------------------------- frozen CLIP (transformers)
def test_frozen_clip_from_local_dir(clip_dir):
    cfg = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": {"version": clip_dir}}
    emb = instantiate_from_config(cfg)
    assert emb.vocab_size == OPEN_CLIP_VOCAB
    z = emb.encode(["a photo of a cat", "a dog"])
    assert z.shape == (2, 77, 32)
    assert not any(p.requires_grad for p in emb.parameters())
    emb.train()
    assert emb.training and not emb.transformer.training
    assert all(k.startswith("transformer.text_model.") for k in emb.state_dict())
    null = emb.null_condition(2)
    torch.testing.assert_close(null[0], emb.encode([""])[0])
    dropped = emb.encode(["a photo of a cat", "a dog"], drop_mask=torch.tensor([False, True]))
    torch.testing.assert_close(dropped[0], z[0])
    torch.testing.assert_close(dropped[1], null[1])
    penultimate = FrozenCLIPEmbedder(version=clip_dir, layer="penultimate")
    assert penultimate.encode(["a dog"]).shape == (1, 77, 32)
    assert (penultimate.encode(["a dog"]) - z[1:]).abs().max() > 1e-4


def test_frozen_clip_ignores_stored_position_ids(clip_dir):
    emb = FrozenCLIPEmbedder(version=clip_dir)
    state = dict(emb.state_dict())
    state["transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    report = emb.load_state_dict(state, strict=True)
    assert not report.unexpected_keys and not report.missing_keys


def test_frozen_clip_rejects_tiny_vocabulary(tmp_path, clip_dir):
    from transformers import CLIPTokenizer

    tiny = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}, merges=[])
    with pytest.raises(RuntimeError, match="only 3 tokens"):
        FrozenCLIPEmbedder(version=clip_dir, tokenizer=tiny)


# ----------------------------------------------------------------------------- frozen OpenCLIP
def test_frozen_open_clip_tiny_random_tower():
    cfg = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
           "params": {"model_config": TINY_OPEN_CLIP, "layer": "last"}}
    emb = instantiate_from_config(cfg)
    keys = set(emb.state_dict())
    assert "model.token_embedding.weight" in keys and "model.ln_final.weight" in keys
    assert not any(k.startswith("model.visual") for k in keys)
    assert emb.vocab_size == OPEN_CLIP_VOCAB
    z = emb.encode(["a cat", "a dog"])
    assert z.shape == (2, 77, 32)
    # 'last' equals open_clip's own text transformer + final norm
    m = emb.model
    tokens = emb.tokenize(["a cat"])
    ref = m.ln_final(m.transformer(m.token_embedding(tokens) + m.positional_embedding, attn_mask=m.attn_mask))
    torch.testing.assert_close(z[:1], ref)
    pen = FrozenOpenCLIPEmbedder(model_config=TINY_OPEN_CLIP, layer="penultimate")
    pen.load_state_dict(emb.state_dict())
    assert (pen.encode(["a cat"]) - z[:1]).abs().max() > 1e-4
    torch.testing.assert_close(emb.null_condition(2)[1], emb.encode([""])[0])
    with pytest.raises(ValueError, match="layer"):
        FrozenOpenCLIPEmbedder(model_config=TINY_OPEN_CLIP, layer="pooled")


# ----------------------------------------------------------------------------- spatial
def test_spatial_rescaler_semantic_synthesis_config():
    cfg = {"target": "ldm.modules.encoders.modules.SpatialRescaler",
           "params": {"n_stages": 2, "in_channels": 182, "out_channels": 3}}
    rescaler = instantiate_from_config(cfg)
    assert rescaler.output_key == "concat"
    assert {k: tuple(v.shape) for k, v in rescaler.state_dict().items()} == {"channel_mapper.weight": (3, 182, 1, 1)}
    x = torch.randn(2, 182, 32, 32)
    z = rescaler.encode(x)
    assert z.shape == (2, 3, 8, 8)
    dropped = rescaler.encode(x, drop_mask=torch.tensor([True, False]))
    assert torch.all(dropped[0] == 0)
    torch.testing.assert_close(dropped[1], z[1])
    plain = SpatialRescaler(n_stages=1, in_channels=3, method="nearest")
    img = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    torch.testing.assert_close(plain.encode(img)[0, 0], img[0, 0, ::2, ::2])
    with pytest.raises(ValueError, match="182"):
        rescaler.encode(torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="raw input"):
        rescaler.null_condition(2)


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name,cls", [("class_label", ClassEmbedder), ("text_transformer", TransformerEmbedder),
                                      ("bert", BERTEmbedder), ("clip", FrozenCLIPEmbedder),
                                      ("open_clip", FrozenOpenCLIPEmbedder), ("spatial_rescaler", SpatialRescaler),
                                      ("FrozenCLIPEmbedder", FrozenCLIPEmbedder)])
def test_registry_names(name, cls):
    assert get_conditioner(name) is cls


def test_registry_unknown_name_lists_known():
    with pytest.raises(KeyError, match="class_label"):
        get_conditioner("no_such_conditioner")
