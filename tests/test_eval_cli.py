"""``python -m ldm.cli.evaluate`` end to end on tiny folders / configs written by the tests."""
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.cli.evaluate import main, run
from ldm.data.image_batches import sample_image_to_chw


def write_folder(root, n, seed, brightness=0, nested=False, ext="png"):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.uniform(40, 200, size=(4, 4, 3))
        img = Image.fromarray(coarse.astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        arr = np.clip(np.asarray(img, dtype=np.int32) + brightness, 0, 255).astype(np.uint8)
        folder = root / f"part{i % 2}" if nested else root
        folder.mkdir(exist_ok=True)
        Image.fromarray(arr).save(folder / f"{i:03d}.{ext}")
    return root


def test_cli_on_two_folders_writes_json_and_prints_table(tmp_path, capsys):
    generated = write_folder(tmp_path / "gen", 24, seed=0, brightness=60, nested=True)
    reference = write_folder(tmp_path / "ref", 24, seed=1, ext="jpg")
    out = tmp_path / "reports" / "report.json"
    code = main(["--generated", str(generated), "--reference", str(reference), "--metrics", "fid,kid,is,pr",
                 "--feature-extractor", "random-cnn", "--batch-size", "10", "--kid-subsets", "10",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["fid"] > 0 and metrics["is_mean"] >= 1.0 and 0 <= metrics["precision"] <= 1
    assert report["num_generated"] == 24 and report["num_reference"] == 24
    assert report["feature_extractor"]["comparable_to_published"] is False
    printed = capsys.readouterr().out
    assert "fid" in printed and "NOT comparable" in printed and str(out) in printed


def test_cli_same_folder_gives_zero_fid_and_perfect_precision_recall(tmp_path):
    folder = write_folder(tmp_path / "imgs", 12, seed=2)
    brighter = write_folder(tmp_path / "brighter", 12, seed=2, brightness=50)
    same = run(["--generated", str(folder), "--reference", str(folder), "--metrics", "fid,pr",
                "--feature-extractor", "random-cnn"])["metrics"]
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    shifted = run(["--generated", str(brighter), "--reference", str(folder), "--metrics", "fid",
                   "--feature-extractor", "random-cnn", "--num-samples", "10"])
    assert shifted["metrics"]["fid"] > 1e-3 and shifted["num_generated"] == 10


def test_cli_inception_without_weights_exits_with_the_file_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = write_folder(tmp_path / "imgs", 4, seed=3)
    code = main(["--generated", str(folder), "--reference", str(folder), "--feature-extractor", "inception"])
    err = capsys.readouterr().err
    assert code == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "--feature-extractor inception:" in err


def test_cli_reference_from_a_dataset_config(tmp_path):
    generated = write_folder(tmp_path / "gen", 12, seed=4)
    config = {"data": {"target": "main.DataModuleFromConfig", "params": {
        "batch_size": 4,
        "train": {"target": "ldm.data.shapes.ShapesTrain", "params": {"size": 32, "length": 12}},
        "validation": {"target": "ldm.data.shapes.ShapesValidation", "params": {"size": 32, "length": 12}},
    }}}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    report = run(["--generated", str(generated), "--reference-config", str(path), "--split", "validation",
                  "--metrics", "fid,pr", "--feature-extractor", "random-cnn"])
    assert report["num_reference"] == 12 and report["inputs"]["split"] == "validation"
    assert report["metrics"]["fid"] > 0
    with pytest.raises(ValueError, match="no 'test' split"):
        run(["--generated", str(generated), "--reference-config", str(path), "--split", "test",
             "--feature-extractor", "random-cnn"])


def test_cli_autoencoder_reconstruction_metrics(tmp_path):
    from ldm.util import instantiate_from_config

    model_config = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 2,
        "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {"disc_start": 1}},
        "ddconfig": {"double_z": True, "z_channels": 2, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 8,
                     "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
                     "num_groups": 4}}}
    no_loss = {**model_config, "params": {**model_config["params"], "lossconfig": None}}
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": instantiate_from_config(no_loss).state_dict()}, ckpt)
    ae_path = tmp_path / "ae.yaml"
    ae_path.write_text(yaml.safe_dump({"model": model_config}))
    images = write_folder(tmp_path / "imgs", 6, seed=5)
    out = tmp_path / "ae_report.json"
    code = main(["--autoencoder-config", str(ae_path), "--autoencoder-ckpt", str(ckpt), "--reference", str(images),
                 "--metrics", "psnr,ssim,rfid", "--feature-extractor", "random-cnn", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "autoencoder" and report["num_images"] == 6
    metrics = report["metrics"]
    assert set(metrics) == {"psnr", "ssim", "rfid"}  # LPIPS itself: test_eval_reconstruction.py
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["psnr"] > 0


def test_cli_rejects_bad_requests(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs", 3, seed=6)
    assert main(["--generated", str(folder), "--metrics", "fid", "--feature-extractor", "random-cnn"]) == 2
    assert "reference is required" in capsys.readouterr().err
    assert main(["--generated", str(folder), "--reference", str(folder), "--metrics", "fid,fvd"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert main(["--generated", str(tmp_path / "nowhere"), "--reference", str(folder),
                 "--feature-extractor", "random-cnn"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["--generated", str(folder), "--reference", str(folder), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    # IS alone needs no reference
    assert math.isfinite(run(["--generated", str(folder), "--metrics", "is",
                              "--feature-extractor", "random-cnn"])["metrics"]["is_mean"])


def test_dataset_images_accept_hwc_and_chw_and_check_the_range():
    chw = torch.rand(3, 8, 8) * 2 - 1
    assert torch.equal(sample_image_to_chw(chw.permute(1, 2, 0).numpy()), chw)
    assert sample_image_to_chw(chw[:1]).shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        sample_image_to_chw(chw * 255)
