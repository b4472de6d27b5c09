"""LoRA through peft: a tiny fine-tune lowers the loss and changes only adapter tensors, the EMA and
Lightning checkpoints carry the adapters, the adapter file reloads, merging gives the same outputs,
and the file loads into a diffusers pipeline converted from the base model."""
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ldm.cli.convert import main as convert_main
from ldm.lora import LoraCheckpoint, adapter_state_dict, apply_lora, load_lora, merge_lora, read_lora_file
from ldm.util import instantiate_from_config
from sd2_fixtures import tiny_clip_text_dir, tiny_sd1_node

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


class Pairs(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        self.captions = ["a red square", "a blue circle", "a green cross", "a white dot"]

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"jpg": self.images[i % 4], "txt": self.captions[i % 4]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    node = tiny_sd1_node(tiny_clip_text_dir(root / "clip"))
    node["params"]["use_ema"] = True
    torch.manual_seed(0)
    base = instantiate_from_config(node)
    with torch.no_grad():  # non-trivial base weights (the zero-initialised outputs would hide everything)
        for p in base.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.model_ema.reset_to(base.model)
    base_ckpt = root / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(base_ckpt))
    base_config = root / "base.yaml"
    OmegaConf.save({"model": node}, base_config)
    lora_node = {**node, "params": {**node["params"], "ckpt_path": str(base_ckpt), "lora": LORA,
                                    "learning_rate": 1e-2, "ema_decay": 0.9,
                                    "scheduler_config": None}}  # the v1 config warms up over 10k steps
    return {"root": root, "base": base.eval(), "base_ckpt": base_ckpt, "base_config": base_config,
            "lora_node": lora_node}


def fixed_loss(model, batch):
    model.eval()
    with torch.no_grad():
        z = model.latents_from_batch(batch, sample=False)
        cond = model.condition_from_batch(batch, drop=False)
        g = torch.Generator().manual_seed(1)
        t = torch.randint(0, model.num_timesteps, (z.shape[0] * 8,), generator=g)
        noise = torch.randn((z.shape[0] * 8, *z.shape[1:]), generator=g)
        loss, _ = model(z.repeat(8, 1, 1, 1), cond.repeat(8, 1, 1), t=t, noise=noise)
    return float(loss)


@pytest.fixture(scope="module")
def trained(setup):
    model = instantiate_from_config(setup["lora_node"])
    data = Pairs()
    batch = {"jpg": data.images, "txt": data.captions}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_before = fixed_loss(model, batch)
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(setup["root"] / "run"),
                        callbacks=[LoraCheckpoint()])
    model.train()
    trainer.fit(model, DataLoader(data, batch_size=4))
    model.eval()
    return {"model": model, "trainer": trainer, "before": before, "loss_before": loss_before,
            "loss_after": fixed_loss(model, batch), "batch": batch}


def test_only_adapters_are_trainable(setup):
    model = instantiate_from_config(setup["lora_node"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("lora_" in k for k in model.model_ema.m_name2s_name)  # the EMA tracks the adapters
    # the base weights came from ckpt_path; with B = 0 the adapted UNet computes the base UNet
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.model.diffusion_model(x, t, context=ctx),
                                   setup["base"].model.diffusion_model(x, t, context=ctx))


def test_fine_tune_lowers_the_loss_and_changes_only_adapters(trained):
    print(f"LoRA fine-tune, fixed-batch loss: {trained['loss_before']:.4f} -> {trained['loss_after']:.4f}")
    assert trained["loss_after"] < 0.9 * trained["loss_before"], (trained["loss_before"], trained["loss_after"])
    after = trained["model"].state_dict()
    changed = [k for k, v in trained["before"].items() if not torch.equal(v, after[k])]
    assert changed
    assert all("lora_" in k or k == "model_ema.num_updates" for k in changed), changed[:5]
    assert int(after["model_ema.num_updates"]) == 40


def test_lightning_checkpoint_resumes_with_adapters(setup, trained):
    checkpoint_callback = trained["trainer"].checkpoint_callback
    ckpt = checkpoint_callback.best_model_path or checkpoint_callback.last_model_path
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    fresh = instantiate_from_config(setup["lora_node"])
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = trained["model"].state_dict()
    assert all(torch.equal(state[k], own[k]) for k in own)


def test_adapter_file_reloads_and_merges(setup, trained, tmp_path):
    model = trained["model"]
    path = setup["root"] / "run" / "checkpoints" / "lora.safetensors"
    tensors, settings = read_lora_file(path)
    assert settings.rank == 4 and settings.alpha == 8
    assert all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in tensors)
    # the callback saved the EMA adapters
    fresh = instantiate_from_config(setup["lora_node"]).eval()
    load_lora(fresh, path)
    with model.ema_scope():
        expected = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    got = adapter_state_dict(fresh)
    assert set(got) == set(expected)
    raw = adapter_state_dict(model)
    assert any(not torch.equal(raw[k], expected[k]) for k in raw)  # EMA and training adapters differ
    for k in got:
        torch.testing.assert_close(got[k], expected[k])
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        adapted = fresh.model.diffusion_model(x, t, context=ctx)
        base = setup["base"].model.diffusion_model(x, t, context=ctx)
        assert (adapted - base).abs().max() > 1e-4
        merge_lora(fresh)
        torch.testing.assert_close(fresh.model.diffusion_model(x, t, context=ctx), adapted, rtol=1e-5, atol=1e-5)
    assert set(fresh.state_dict()) == set(setup["base"].state_dict())  # original keys again
    # the merge command gives the same weights
    out = tmp_path / "merged.safetensors"
    assert convert_main(["merge-lora", "--config", str(setup["base_config"]), "--ckpt", str(setup["base_ckpt"]),
                         "--lora", str(path), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    merged = load_file(str(out))
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(merged[k], v, rtol=1e-6, atol=1e-6)


def test_adapter_loads_into_a_diffusers_pipeline(setup, trained, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "sd"
    assert convert_main(["to-diffusers", "--config", str(setup["base_config"]), "--ckpt", str(setup["base_ckpt"]),
                         "--out", str(folder)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.load_lora_weights(str(setup["root"] / "run" / "checkpoints" / "lora.safetensors"))
    model = trained["model"]
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.randn(2, 77, 32)
    with torch.no_grad(), model.ema_scope():
        ours = model.model.diffusion_model(x, t, context=ctx)
        theirs = pipe.unet(x, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_bad_lora_settings_are_clear_errors(setup):
    model = instantiate_from_config({**setup["lora_node"], "params": {**setup["lora_node"]["params"], "lora": None}})
    with pytest.raises(ValueError, match="unknown key"):
        apply_lora(model, {"rank": 2, "alpah": 4})
    with pytest.raises(ValueError, match="match no linear layer"):
        apply_lora(model, {"rank": 2, "target_modules": ["no_such_layer"]})
