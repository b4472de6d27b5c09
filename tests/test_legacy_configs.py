"""The original latent-diffusion and Stable Diffusion v1 stage-2 configs (copied to
tests/fixtures/ldm_configs/, first-stage ckpt_path removed) build with our classes, and state dicts
laid out like the original checkpoints (key dumps in tests/fixtures/ldm_*_keys.tsv) load strictly.

Big models are built on the meta device (no memory, no init cost). The one text encoder that needs
a download, Stable Diffusion's FrozenCLIPEmbedder (openai/clip-vit-large-patch14), is pointed at a
tiny random CLIP text model saved locally (``version`` override); everything else is as shipped.
"""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from key_dumps import read_keys
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.util import instantiate_from_config

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = FIXTURES / "ldm_configs"

# conditioning_key the original code derives (conditioning_key, else concat_mode, None if unconditional)
EXPECTED = {
    "celebahq-ldm-vq-4": (None, "NoneType"), "cin-ldm-vq-f8": ("crossattn", "ClassEmbedder"),
    "cin256-v2": ("crossattn", "ClassEmbedder"), "ffhq-ldm-vq-4": (None, "NoneType"),
    "lsun_bedrooms-ldm-vq-4": (None, "NoneType"), "lsun_churches-ldm-kl-8": (None, "NoneType"),
    "models_ldm_bsr_sr": ("concat", "Identity"), "models_ldm_celeba256": (None, "NoneType"),
    "models_ldm_cin256": ("crossattn", "ClassEmbedder"), "models_ldm_ffhq256": (None, "NoneType"),
    "models_ldm_inpainting_big": ("concat", "VQModelInterface"),
    "models_ldm_layout2img-openimages256": ("crossattn", "BERTEmbedder"),
    "models_ldm_lsun_beds256": (None, "NoneType"), "models_ldm_lsun_churches256": (None, "NoneType"),
    "models_ldm_semantic_synthesis256": ("concat", "SpatialRescaler"),
    "models_ldm_semantic_synthesis512": ("concat", "SpatialRescaler"),
    "models_ldm_text2img256": ("crossattn", "BERTEmbedder"), "rdm-768x768": ("crossattn", "Identity"),
    "sd-v1-inference": ("crossattn", "FrozenCLIPEmbedder"), "txt2img-1p4B-eval": ("crossattn", "BERTEmbedder"),
}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP text model + a CLIPTokenizer built offline from open_clip's BPE vocabulary."""
    import open_clip
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    bpe = open_clip.tokenizer.SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(path)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77)
    CLIPTextModel(config).save_pretrained(path)
    return str(path)


def build(name, tiny_clip_dir=None):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    params = OmegaConf.to_container(cfg.model.params)
    if name == "sd-v1-inference":
        # transformers' from_pretrained refuses the meta device: build the (tiny) text encoder from the
        # config node on the CPU, hand the built module to the model, build the rest on meta
        node = params["cond_stage_config"]
        node["params"] = {"version": tiny_clip_dir}
        params["cond_stage_config"] = instantiate_from_config(node)
    with torch.device("meta"):
        model = instantiate_from_config({"target": cfg.model.target, "params": params})
    return cfg, model


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_original_config_instantiates(name, tiny_clip_dir):
    cfg, model = build(name, tiny_clip_dir if name == "sd-v1-inference" else None)
    p = cfg.model.params
    assert isinstance(model, LatentDiffusion)
    assert (model.conditioning_key, type(model.cond_stage_model).__name__) == EXPECTED[name]
    assert model.num_timesteps == p.timesteps and model.alphas_cumprod.shape == (p.timesteps,)
    assert model.betas[0].item() == pytest.approx(p.linear_start, rel=1e-4)
    assert model.betas[-1].item() == pytest.approx(p.linear_end, rel=1e-4)
    unet = model.model.diffusion_model
    assert unet.in_channels >= p.channels and unet.out_channels == p.channels
    assert model.first_stage_key == p.first_stage_key and model.parameterization == "eps"
    if p.get("scale_by_std", False):
        assert "scale_factor" in model.state_dict()
    else:
        assert model.scale_factor == pytest.approx(p.get("scale_factor", 1.0))
        assert "scale_factor" not in model.state_dict()
    assert not any(q.requires_grad for q in model.first_stage_model.parameters())


def _state_dict_from_dump(model, dump):
    """A state dict with the dump's keys and shapes: schedule buffers real, weights on the meta device."""
    own = model.state_dict()
    return {k: own[k].clone() if not own[k].is_meta else torch.empty(shape, device="meta")
            for k, shape in dump.items()}


def test_celebahq_checkpoint_layout_loads_strictly():
    _, model = build("celebahq-ldm-vq-4")
    dump = read_keys("ldm_celebahq-ldm-vq-4_keys.tsv")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == dump
    sd = _state_dict_from_dump(model, dump)
    # old releases carry stale DDIM buffers; newer transformers versions drop position_ids
    for name in ("ddim_sigmas", "ddim_alphas", "ddim_alphas_prev", "ddim_sqrt_one_minus_alphas"):
        sd[name] = torch.zeros(200)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # a released checkpoint with EMA weights already copied into model.*: only decay / num_updates
    ema_scalars_only = {k: v for k, v in sd.items()
                        if not k.startswith("model_ema.") or k in ("model_ema.decay", "model_ema.num_updates")}
    assert len(ema_scalars_only) < len(sd) - 300
    result = model.load_state_dict(ema_scalars_only, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_sd_v1_unet_and_autoencoder_keys_match(tiny_clip_dir):
    _, model = build("sd-v1-inference", tiny_clip_dir)
    dump = read_keys("ldm_sd-v1-inference_keys.tsv")  # the text encoder is left out of the dump
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("cond_stage_model.")}
    assert own == dump
    assert model.scale_factor == pytest.approx(0.18215) and not model.use_ema


OUR_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("ldm/*.yaml")) + \
    sorted((Path(__file__).parents[1] / "configs").glob("demo/ldm_*.yaml"))


@pytest.mark.parametrize("path", OUR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_our_stage2_configs_instantiate(path):
    from ldm.util import resolve_target

    cfg = OmegaConf.load(path)
    params = cfg.model.params
    if "first_stage_config" in params:
        params.first_stage_config.params.pop("ckpt_path", None)
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    assert model.num_timesteps == params.get("timesteps", 1000)
    assert float(cfg.model.base_learning_rate) > 0
    for split in ("train", "validation"):
        assert callable(resolve_target(cfg.data.params[split].target))
    if "scheduler_config" in params and params.scheduler_config is not None:
        assert callable(instantiate_from_config(params.scheduler_config))
