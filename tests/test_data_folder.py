"""Image folders, file lists, captions, the named layouts, and corrupt-file handling."""
import json
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.datamodule import DataModuleFromConfig, collate
from ldm.data.faces import CelebAHQTrain, FFHQValidation
from ldm.data.folder import ImageCaptionDataset, ImageFolderDataset
from ldm.data.imagenet import ImageNetSRTrain, ImageNetSRValidation, ImageNetTrain, ImageNetValidation
from ldm.data.lsun import LSUNBedroomsValidation, LSUNChurchesTrain
from ldm.data.robust import CorruptImageError, CorruptImageWarning


def _write_image(path, size=(20, 14), colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _folder_with_corrupt_file(root, n_good=6):
    for i in range(n_good):
        _write_image(os.path.join(root, f"img_{i}.png"), colour=(10 * i, 100, 200))
    with open(os.path.join(root, "img_3b_broken.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\nthis is not a png")
    truncated = os.path.join(root, "img_3c_truncated.jpg")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(40)


def test_folder_resizes_crops_and_scales(tmp_path):
    _write_image(str(tmp_path / "a.png"), size=(40, 20), colour=(255, 0, 0))
    _write_image(str(tmp_path / "sub" / "b.jpg"), size=(10, 30), colour=(0, 0, 255))
    ds = ImageFolderDataset(root=str(tmp_path), size=16, random_crop=True, flip_p=0.5)
    assert len(ds) == 2 and ds.relpaths == ["a.png", os.path.join("sub", "b.jpg")]
    sample = ds[0]
    assert sample["image"].shape == (3, 16, 16)
    assert torch.allclose(sample["image"][:, 8, 8], torch.tensor([1.0, -1.0, -1.0]), atol=0.02)
    assert ds[1]["image"].shape == (3, 16, 16)


def test_corrupt_files_are_skipped_counted_and_reported(tmp_path):
    _folder_with_corrupt_file(str(tmp_path))
    ds = ImageFolderDataset(root=str(tmp_path), size=8)
    assert len(ds) == 8
    # warnings raised inside worker processes go to their stderr; the count comes back to us
    batches = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate))
    assert sum(b["image"].shape[0] for b in batches) == 8  # every index still yields a sample
    assert all(b["image"].shape[1:] == (3, 8, 8) for b in batches)
    assert ds.num_skipped >= 2  # counted across worker processes
    # in-process access warns and records the names too
    with pytest.warns(CorruptImageWarning, match="img_3c_truncated"):
        replacement = ds[ds.relpaths.index("img_3c_truncated.jpg")]
    assert replacement["relpath"] == "img_4.png"
    assert any("truncated" in name for name in ds.skipped_files)
    assert "unreadable" in ds.skip_report()


def test_strict_mode_raises_on_corrupt_file(tmp_path):
    _folder_with_corrupt_file(str(tmp_path))
    ds = ImageFolderDataset(root=str(tmp_path), size=8, strict=True)
    with pytest.raises(CorruptImageError, match="img_3b_broken"):
        ds[ds.relpaths.index("img_3b_broken.png")]


class _TinyModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Conv2d(3, 3, 1)
        self.seen = 0

    def training_step(self, batch, batch_idx):
        self.seen += batch["image"].shape[0]
        return (self.layer(batch["image"]) - batch["image"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_runs_past_a_corrupt_file_and_reports_it(tmp_path):
    root = tmp_path / "imgs"
    _folder_with_corrupt_file(str(root))
    data = DataModuleFromConfig(batch_size=4, num_workers=0, train={
        "target": "ldm.data.folder.ImageFolderDataset", "params": {"root": str(root), "size": 8}})
    model = _TinyModel()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="unreadable samples were skipped"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4 and model.seen == 16
    # per epoch: the broken png's index skips 2 files (its fallback is the truncated jpg), the jpg's 1
    assert data.skipped_counts() == {"train": 6}


def test_class_folders_and_file_lists(tmp_path):
    for cls in ("dog", "cat"):
        for i in range(2):
            _write_image(str(tmp_path / cls / f"{i}.png"))
    ds = ImageFolderDataset(root=str(tmp_path), size=8, class_folders=True)
    assert ds.classes == ["cat", "dog"]
    assert [ds[i]["class_label"] for i in range(4)] == [0, 0, 1, 1] and ds[3]["class_name"] == "dog"
    listing = tmp_path / "list.txt"
    listing.write_text("dog/1.png\ncat/0.png\n")
    listed = ImageFolderDataset(file_list=str(listing), data_root=str(tmp_path), size=8)
    assert [listed[i]["relpath"] for i in range(2)] == ["dog/1.png", "cat/0.png"]
    _write_image(str(tmp_path / "loose.png"))
    with pytest.raises(ValueError, match="class sub-folder"):
        ImageFolderDataset(root=str(tmp_path), class_folders=True)


def test_captions_from_sidecars_json_and_csv(tmp_path):
    for i in range(3):
        _write_image(str(tmp_path / f"p{i}.png"))
        (tmp_path / f"p{i}.txt").write_text(f"caption number {i}\n")
    ds = ImageCaptionDataset(root=str(tmp_path), size=8)
    assert [ds[i]["caption"] for i in range(3)] == ["caption number 0", "caption number 1", "caption number 2"]
    table = tmp_path / "caps.json"
    table.write_text(json.dumps([{"file": f"p{i}.png", "caption": f"json {i}"} for i in range(3)]))
    assert ImageCaptionDataset(root=str(tmp_path), captions=str(table))[2]["caption"] == "json 2"
    csv_table = tmp_path / "caps.csv"
    csv_table.write_text("image,text\n" + "".join(f"p{i},csv {i}\n" for i in range(3)))
    assert ImageCaptionDataset(root=str(tmp_path), captions=str(csv_table))[1]["caption"] == "csv 1"
    batch = collate([ds[0], ds[1]])
    assert batch["caption"] == ["caption number 0", "caption number 1"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"p0.png": "only one"}))
    with pytest.raises(ValueError, match="no caption"):
        ImageCaptionDataset(root=str(tmp_path), captions=str(partial))


def test_missing_data_gives_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="church_outdoor_train.txt.*data_root"):
        LSUNChurchesTrain(size=8)
    with pytest.raises(FileNotFoundError, match="celebahqtrain.txt"):
        CelebAHQTrain(size=8)
    with pytest.raises(FileNotFoundError, match=r"(?s)ILSVRC2012_validation.*n01440764.*IMAGENET_ROOT"):
        ImageNetValidation(config={"size": 8})
    with pytest.raises(FileNotFoundError, match="image folder"):
        ImageFolderDataset(root=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(root=str(tmp_path / "empty"))


def test_named_layouts_load(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path))
    _write_image(str(tmp_path / "lsun" / "bedrooms" / "x" / "b0.jpg"), size=(30, 20))
    (tmp_path / "lsun" / "bedrooms_val.txt").write_text("x/b0.jpg\n")
    assert LSUNBedroomsValidation(size=8)[0]["image"].shape == (3, 8, 8)
    np.save(tmp_path / "celebahq_0.npy", np.full((1, 12, 12, 3), 255, dtype=np.uint8))
    os.makedirs(tmp_path / "celebahq")
    os.replace(tmp_path / "celebahq_0.npy", tmp_path / "celebahq" / "0.npy")
    (tmp_path / "celebahqtrain.txt").write_text("0.npy\n")
    face = CelebAHQTrain(size=8)[0]["image"]
    assert face.shape == (3, 8, 8) and torch.allclose(face, torch.ones_like(face))
    _write_image(str(tmp_path / "ffhq" / "00000.png"), size=(16, 16))
    assert FFHQValidation(size=8, file_list=None)[0]["image"].shape == (3, 8, 8)


def test_imagenet_layout_labels_and_super_resolution(tmp_path, monkeypatch):
    for split in ("train", "val"):
        for wnid, colour in (("n01443537", (0, 255, 0)), ("n01440764", (255, 0, 0))):
            _write_image(str(tmp_path / split / wnid / f"{wnid}_1.JPEG"), size=(48, 40), colour=colour)
    (tmp_path / "synset_human.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path))
    train = ImageNetTrain(config={"size": 16})
    first = train[0]
    assert first["synset"] == "n01440764" and first["class_label"] == 0 and first["human_label"] == "tench"
    assert first["image"].shape == (3, 16, 16)
    assert ImageNetValidation(data_root=str(tmp_path / "val"), size=16)[1]["class_label"] == 1
    with pytest.raises(ValueError, match="unsupported config keys"):
        ImageNetTrain(config={"size": 16, "bogus": 1})
    sr = ImageNetSRTrain(size=16, degradation="pil_nearest", downscale_f=4, min_crop_f=0.5, max_crop_f=1.0,
                         random_crop=True)
    sample = sr[1]
    assert sample["image"].shape == (3, 16, 16) and sample["LR_image"].shape == (3, 4, 4)
    assert torch.allclose(sample["LR_image"], torch.tensor([-1.0, 1.0, -1.0])[:, None, None], atol=0.02)
    light = ImageNetSRValidation(size=16, degradation="bsrgan_light", downscale_f=2)[0]
    assert light["LR_image"].shape == (3, 8, 8) and light["LR_image"].abs().max() <= 1
    with pytest.raises(ValueError, match="unknown degradation"):
        ImageNetSRTrain(size=16, degradation="magic")
