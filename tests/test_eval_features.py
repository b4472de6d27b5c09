"""Feature extractors: random-cnn (offline), inception (weights handling, torch-fidelity wiring), torchscript."""
import pytest
import torch
import torchvision

from ldm.eval.features import (
    INCEPTION_WEIGHTS_FILE,
    InceptionWeightsMissing,
    RandomCNNFeatures,
    build_feature_extractor,
    extract_features,
    images_to_uint8,
)
from ldm.eval.generative import frechet_distance, kernel_distance


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def smooth_images(n, seed, size=32):
    """Blurry random colour fields in [-1, 1] (natural-image-like low-frequency content)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 1.6 - 0.8
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_random_cnn_is_deterministic_and_leaves_global_rng_alone():
    images = smooth_images(4, seed=0)
    state = torch.random.get_rng_state()
    first, second = RandomCNNFeatures(seed=0), RandomCNNFeatures(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    a, b = first(images), second(images)
    assert torch.equal(a.features, b.features) and torch.equal(a.logits, b.logits)
    assert a.features.shape == (4, first.num_features) and a.logits.shape == (4, 16)
    other = RandomCNNFeatures(seed=1)(images)
    assert not torch.allclose(other.features, a.features)
    assert not first.comparable_to_published and "not comparable" in first.describe()["note"]


def test_random_cnn_fid_and_kid_grow_with_brightness_shift():
    extractor = build_feature_extractor("random-cnn")
    real = extract_features(extractor, smooth_images(96, seed=1).split(32))
    again = extract_features(extractor, smooth_images(96, seed=1).split(32))
    assert frechet_distance(real.features, again.features) == pytest.approx(0.0, abs=1e-6)
    other = smooth_images(96, seed=2)
    fids, kids = [], []
    for shift in (0.0, 0.1, 0.3, 0.6):
        fake = extract_features(extractor, (other + shift).clamp(-1, 1).split(32))
        fids.append(frechet_distance(real.features, fake.features))
        kids.append(kernel_distance(real.features, fake.features, subsets=10, subset_size=96)[0])
    assert fids == sorted(fids) and fids[-1] > 5 * fids[0] > 0
    assert kids == sorted(kids) and kids[-1] > 0


def test_extract_features_respects_max_samples_and_rejects_empty_input():
    extractor = RandomCNNFeatures()
    out = extract_features(extractor, smooth_images(10, seed=3).split(4), max_samples=6)
    assert out.features.shape[0] == 6 and out.logits.shape[0] == 6
    with pytest.raises(ValueError, match="no images"):
        extract_features(extractor, [])


def test_images_to_uint8_round_trips_png_values():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)
    assert torch.equal(images_to_uint8(values.float() / 127.5 - 1.0), values)


def test_inception_without_weights_names_the_file_and_how_to_provide_it(empty_hub):
    with pytest.raises(InceptionWeightsMissing) as info:
        build_feature_extractor("inception")
    message = str(info.value)
    assert INCEPTION_WEIGHTS_FILE in message and "pt_inception-2015-12-05-6726825d.pth" in message
    assert "--feature-extractor inception:/path/to/" in message and str(empty_hub) in message
    assert "random-cnn" in message
    with pytest.raises(InceptionWeightsMissing, match="nowhere.pth"):
        build_feature_extractor("inception:/nowhere.pth")


def test_inception_loads_local_weights_through_torch_fidelity(tmp_path, empty_hub):
    # Same state-dict layout as the FID Inception (torchvision Inception3, 1008 classes), random weights.
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    extractor = build_feature_extractor(f"inception:{path}")
    assert extractor.comparable_to_published and extractor.weights_path == str(path)
    out = extractor(smooth_images(2, seed=4))
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    assert torch.isfinite(out.features).all()
    # a file in the hub cache is found without a path
    empty_hub.mkdir(parents=True)
    (empty_hub / INCEPTION_WEIGHTS_FILE).symlink_to(path)
    assert build_feature_extractor("inception").weights_path == str(empty_hub / INCEPTION_WEIGHTS_FILE)


def test_inception_rejects_a_file_that_is_not_the_fid_network(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ValueError, match="not the FID InceptionV3"):
        build_feature_extractor(f"inception:{path}")


class _TinyScriptable(torch.nn.Module):
    def forward(self, images: torch.Tensor):
        assert images.dtype == torch.uint8
        x = images.float() / 255.0
        feats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        return feats, feats[:, :3] * 10.0


def test_torchscript_extractor_gets_uint8_and_returns_features_and_logits(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(_TinyScriptable()).save(str(path))
    extractor = build_feature_extractor(f"torchscript:{path}")
    images = smooth_images(3, seed=5)
    out = extractor(images)
    assert out.features.shape == (3, 6) and out.logits.shape == (3, 3)
    expected = images_to_uint8(images).float().div(255).mean(dim=(2, 3))
    assert torch.allclose(out.features[:, :3], expected, atol=1e-6)


def test_bad_specs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("vgg")
    with pytest.raises(ValueError, match="seed must be an integer"):
        build_feature_extractor("random-cnn:abc")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_feature_extractor(f"torchscript:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="needs a path"):
        build_feature_extractor("torchscript")
