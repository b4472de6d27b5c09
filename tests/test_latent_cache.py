"""Latent cache: round trip against fresh encodings, conditioning, flips, manifest, refusal of a
different first stage, and a LatentDiffusion training step fed from the cache."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data.datamodule import collate
from ldm.data.latent_cache import (
    LatentCacheDataset,
    LatentCacheError,
    LatentCacheMismatchError,
    encode_dataset,
    read_manifest,
    sample_cached_latent,
    state_dict_sha256,
)
from ldm.data.shapes import ShapesDataset
from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage

SIZE = 16
TINY_DDCONFIG = dict(double_z=True, z_channels=2, resolution=SIZE, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)
TINY_KL = {"target": "ldm.models.autoencoder.AutoencoderKL",
           "params": {"embed_dim": 2, "lossconfig": {"target": "torch.nn.Identity"}, "ddconfig": TINY_DDCONFIG}}


def tiny_kl(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(ddconfig=TINY_DDCONFIG, lossconfig=None, embed_dim=2).eval()


@pytest.fixture(scope="module")
def kl_cache(tmp_path_factory):
    """A tiny KL first stage and a cache of 11 shapes (both orientations, shards of 7 entries)."""
    model = tiny_kl()
    dataset = ShapesDataset(size=SIZE, length=11, seed=3)
    out = tmp_path_factory.mktemp("kl_cache")
    manifest = encode_dataset(model, dataset, out, flip="both", batch_size=4, shard_size=7,
                              info={"source": {"dataset": {"target": "ldm.data.shapes.ShapesDataset",
                                                           "params": {"size": SIZE, "length": 11, "seed": 3}}}})
    return model, dataset, out, manifest


def test_cached_kl_moments_equal_fresh_encodings(kl_cache):
    model, dataset, out, _ = kl_cache
    cache = LatentCacheDataset(out, flip="all")
    assert len(cache) == 2 * len(dataset)
    seen = set()
    for item in cache:
        x = dataset[item["source_index"]]["image"][None]
        if item["flipped"]:
            x = x.flip(-1)
        with torch.no_grad():
            mean, std = model.latent_moments(x)
        torch.testing.assert_close(item["latent_mean"], mean[0])
        torch.testing.assert_close(item["latent_std"], std[0])
        assert bool((item["latent_std"] > 0).all())  # KL keeps a real posterior std, so z is still sampled
        seen.add((item["source_index"], item["flipped"]))
    assert seen == {(i, f) for i in range(len(dataset)) for f in (False, True)}


def test_conditioning_round_trips_and_spatial_inputs_are_mirrored(kl_cache):
    _, dataset, out, _ = kl_cache
    for item in LatentCacheDataset(out, flip="all"):
        source = dataset[item["source_index"]]
        assert item["class_label"] == source["class_label"] and isinstance(item["class_label"], int)
        assert item["caption"] == source["caption"]
        expected_mask = source["mask"].flip(-1) if item["flipped"] else source["mask"]
        assert torch.equal(item["mask"], expected_mask)
        assert "image" not in item


def test_flip_modes(kl_cache, tmp_path):
    model, dataset, out, _ = kl_cache
    randomised = LatentCacheDataset(out)  # default for a --flip both cache: one item per sample, random side
    assert randomised.flip == "random" and len(randomised) == len(dataset)
    sides = {randomised[0]["flipped"] for _ in range(40)}
    assert sides == {False, True}
    off = LatentCacheDataset(out, flip="off")
    assert len(off) == len(dataset) and not any(item["flipped"] for item in off)
    encode_dataset(model, dataset, tmp_path, flip="off", batch_size=8, limit=3)
    with pytest.raises(ValueError, match="--flip both"):
        LatentCacheDataset(tmp_path, flip="random")


def test_manifest_records_first_stage_and_preprocessing(kl_cache):
    model, dataset, out, manifest = kl_cache
    on_disk = read_manifest(out)
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["first_stage"]["state_dict_sha256"] == state_dict_sha256(model)
    assert on_disk["first_stage"]["class"].endswith("AutoencoderKL")
    assert on_disk["source"]["dataset"]["params"] == {"size": SIZE, "length": 11, "seed": 3}
    assert on_disk["source"]["image_size"] == [SIZE, SIZE]
    assert on_disk["latent"]["shape"] == [2, SIZE // 2, SIZE // 2] and on_disk["latent"]["stochastic"] is True
    assert on_disk["num_samples"] == 11 and on_disk["num_entries"] == 22 and on_disk["flip"] == "both"
    assert [s["count"] for s in on_disk["shards"]] == [7, 7, 7, 1]
    assert on_disk["keys"]["tensors"]["mask"] == {"dtype": "float32", "shape": [1, SIZE, SIZE]}
    assert "caption" in on_disk["keys"]["extras"]


def test_mismatched_first_stage_is_refused(kl_cache):
    model, _, out, manifest = kl_cache
    other = tiny_kl(seed=1)  # same architecture, different weights
    other_hash = state_dict_sha256(other)
    with pytest.raises(LatentCacheMismatchError) as err:
        LatentCacheDataset(out, expected_first_stage_hash=other_hash)
    message = str(err.value)
    assert other_hash in message and manifest["first_stage"]["state_dict_sha256"] in message
    assert "cache_latents" in message  # says how to rebuild
    cache = LatentCacheDataset(out, expected_first_stage_hash=state_dict_sha256(model))
    cache.verify_first_stage(model)
    with pytest.raises(LatentCacheMismatchError):
        cache.verify_first_stage(other)
    nudged = tiny_kl()
    with torch.no_grad():
        nudged.decoder.conv_out.bias[0] += 1e-3  # one weight anywhere in the first stage changes the hash
    with pytest.raises(LatentCacheMismatchError):
        cache.verify_first_stage(nudged)


def test_state_dict_hash_ignores_order_and_training_loss_but_not_dtype():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    reordered = {"b": torch.ones(2), "w": torch.arange(6.0).reshape(2, 3)}
    assert state_dict_sha256(a) == state_dict_sha256(reordered)
    assert state_dict_sha256(a) == state_dict_sha256({**a, "loss.discriminator.weight": torch.randn(3)})
    assert state_dict_sha256(a) != state_dict_sha256({**a, "w": a["w"].double()})
    assert state_dict_sha256(a) != state_dict_sha256({**a, "b": torch.tensor([1.0, 1.0 + 2**-20])})
    assert state_dict_sha256(a) != state_dict_sha256({"v": a["w"], "b": a["b"]})


def test_identity_first_stage_caches_pixels_exactly(tmp_path):
    dataset = ShapesDataset(size=SIZE, length=5, seed=1)
    manifest = encode_dataset(IdentityFirstStage(), dataset, tmp_path, batch_size=2)
    assert manifest["latent"] == {"shape": [3, SIZE, SIZE], "dtype": "float32", "stochastic": False}
    cache = LatentCacheDataset(tmp_path, expected_first_stage_hash=state_dict_sha256(IdentityFirstStage()))
    for i in range(len(dataset)):
        item = cache[i]
        assert torch.equal(item["latent_mean"], dataset[i]["image"])
        assert torch.equal(item["latent_std"], torch.zeros_like(item["latent_mean"]))


def test_bad_inputs_raise_clear_errors(tmp_path, kl_cache):
    model, dataset, out, _ = kl_cache
    with pytest.raises(LatentCacheError, match="manifest.json"):
        LatentCacheDataset(tmp_path / "nothing")
    with pytest.raises(FileExistsError, match="overwrite"):
        encode_dataset(model, dataset, out, limit=2)
    with pytest.raises(ValueError, match="flip"):
        encode_dataset(model, dataset, tmp_path / "x", flip="sometimes")
    with pytest.raises(KeyError, match="'pixels'"):
        encode_dataset(model, dataset, tmp_path / "y", image_key="pixels", limit=2)
    with pytest.raises(KeyError, match="no conditioning key"):
        LatentCacheDataset(out, keys=["segmentation"])


def test_latent_diffusion_trains_from_the_cache_without_the_encoder(kl_cache):
    from ldm.models.latent_diffusion import LatentDiffusion

    first, shapes, out, _ = kl_cache
    unet = {"target": "ldm.modules.unet.UNetModel",
            "params": dict(image_size=SIZE // 2, in_channels=2, out_channels=2, model_channels=32,
                           attention_resolutions=[], num_res_blocks=1, channel_mult=[1], num_heads=1)}
    model = LatentDiffusion(first_stage_config=TINY_KL, cond_stage_config="__is_unconditional__", unet_config=unet,
                            timesteps=50, image_size=SIZE // 2, channels=2, scale_factor=0.7, use_ema=False)
    model.first_stage_model.load_state_dict(first.state_dict())
    cache = LatentCacheDataset(out, flip="off", expected_first_stage_hash=state_dict_sha256(model.first_stage_model))
    batch = next(iter(DataLoader(cache, batch_size=4, collate_fn=collate)))
    image_batch = collate([shapes[i] for i in batch["source_index"].tolist()])

    # the same draw of eps gives the same scaled latent, and the same loss, from the cache as from the images
    torch.manual_seed(5)
    fresh = model.encode_to_latent(image_batch["image"])
    torch.manual_seed(5)
    cached = model.scale_factor * sample_cached_latent(batch)
    torch.testing.assert_close(cached, fresh)
    t, noise = torch.randint(0, 50, (4,)), torch.randn_like(cached)
    torch.manual_seed(6)
    loss_images = model.shared_step(image_batch, t=t, noise=noise)[0]
    torch.manual_seed(6)
    loss_cache = model.shared_step(batch, t=t, noise=noise)[0]
    torch.testing.assert_close(loss_cache, loss_images)

    calls = []
    model.first_stage_model.encoder.register_forward_hook(lambda *a: calls.append(1))
    optimizer = torch.optim.Adam(model.model.parameters(), lr=2e-3)
    fixed_z = model.scale_factor * batch["latent_mean"]
    with torch.no_grad():
        before = model(fixed_z, None, t=t, noise=noise)[0].item()
    for _ in range(15):
        loss, _ = model.shared_step(batch, t=t, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(fixed_z, None, t=t, noise=noise)[0].item()
    assert after < 0.8 * before
    assert not calls  # no encoder call in the training steps
    assert all(p.grad is None for p in model.first_stage_model.parameters())


def test_streaming_webdataset_source(tmp_path):
    from ldm.data.webdataset import WebImageDataset, write_webdataset

    shapes = ShapesDataset(size=SIZE, length=5, seed=4)
    samples = [{"image": s["image"], "caption": s["caption"], "class_label": s["class_label"]} for s in shapes]
    write_webdataset(samples, str(tmp_path / "wds" / "shard-%06d.tar"), maxcount=3)
    stream = WebImageDataset(str(tmp_path / "wds"))
    manifest = encode_dataset(IdentityFirstStage(), stream, tmp_path / "cache", batch_size=2, limit=4)
    assert manifest["num_samples"] == 4 and manifest["source"]["num_source_samples"] is None
    cache = LatentCacheDataset(tmp_path / "cache")
    for i, sample in zip(range(4), stream):
        item = cache[i]
        assert torch.equal(item["latent_mean"], sample["image"])
        assert (item["caption"], item["class_label"], item["source_key"]) == \
            (sample["caption"], sample["class_label"], sample["__key__"])
