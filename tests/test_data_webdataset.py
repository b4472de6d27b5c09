"""Webdataset shards written by the test round-trip, split exactly once over workers and ranks."""
import io
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data.datamodule import collate
from ldm.data.robust import CorruptImageError
from ldm.data.shapes import ShapesDataset
from ldm.data.webdataset import WebImageDataset, write_webdataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("wds")
    ds = ShapesDataset(size=16, length=24, seed=5)
    paths = write_webdataset((ds[i] for i in range(len(ds))), str(out / "shard-%06d.tar"), maxcount=6)
    return out, paths, ds


def test_write_then_read_round_trips(shards):
    out, paths, ds = shards
    assert len(paths) == 4
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert {"000000000.png", "000000000.txt", "000000000.cls", "000000000.json", "000000000.mask.npy"} <= set(names)
    samples = list(WebImageDataset(str(out)))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(24)]
    for i, sample in enumerate(samples):
        original = ds[i]
        assert sample["image"].shape == (3, 16, 16)
        assert (sample["image"] - original["image"]).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit png
        assert sample["caption"] == original["caption"] and sample["class_label"] == original["class_label"]
        assert torch.equal(sample["mask"], original["mask"])
        assert sample["json"]["shape"] == original["shape"]


def test_two_workers_see_every_sample_exactly_once(shards):
    out, _, _ = shards
    loader = DataLoader(WebImageDataset(str(out / "shard-{000000..000003}.tar")), batch_size=5, num_workers=2,
                        collate_fn=collate)
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(24)]
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, 16, 16) and isinstance(batch["caption"], list)


def test_ranks_split_shards_disjointly(shards, monkeypatch):
    out, _, _ = shards
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = DataLoader(WebImageDataset(str(out)), batch_size=4, num_workers=2, collate_fn=collate)
        seen.append([k for batch in loader for k in batch["__key__"]])
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"{i:09d}" for i in range(24)]


def test_shuffle_and_epoch_length(shards):
    out, _, _ = shards
    stream = WebImageDataset(str(out), shuffle_buffer=8, shardshuffle=True, seed=1)
    shuffled, second_pass = [s["__key__"] for s in stream], [s["__key__"] for s in stream]
    assert sorted(shuffled) == [f"{i:09d}" for i in range(24)] and shuffled != sorted(shuffled)
    assert second_pass != shuffled and sorted(second_pass) == sorted(shuffled)  # new order each epoch
    again = WebImageDataset(str(out), shuffle_buffer=8, shardshuffle=True, seed=1)
    assert [s["__key__"] for s in again] == shuffled  # reproducible from the seed
    endless = WebImageDataset(str(out), resampled=True, epoch_length=30)
    assert len(endless) == 30 and len(list(endless)) == 30


def test_corrupt_member_is_skipped_or_fatal(tmp_path):
    ds = ShapesDataset(size=8, length=3)
    samples = [ds[i] for i in range(3)]
    paths = write_webdataset(samples, str(tmp_path / "s-%03d.tar"))
    broken = tmp_path / "broken.tar"
    with tarfile.open(paths[0]) as src, tarfile.open(broken, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "000000001.png":
                data = b"not an image"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    lenient = WebImageDataset(str(broken))
    with pytest.warns(RuntimeWarning, match="000000001"):
        keys = [s["__key__"] for s in lenient]
    assert keys == ["000000000", "000000002"] and lenient.num_skipped == 1
    with pytest.raises(CorruptImageError):
        list(WebImageDataset(str(broken), strict=True))
    with pytest.raises(FileNotFoundError):
        WebImageDataset(str(tmp_path / "no_such_dir" / "*.tar"))


def test_root_is_an_alias_of_urls(tmp_path):
    samples = [{"image": torch.zeros(3, 8, 8), "caption": f"c{i}"} for i in range(4)]
    write_webdataset(samples, str(tmp_path / "s-%03d.tar"), maxcount=2)
    by_root = [s["caption"] for s in WebImageDataset(root=str(tmp_path))]
    by_urls = [s["caption"] for s in WebImageDataset(str(tmp_path))]
    assert by_root == by_urls and sorted(by_root) == ["c0", "c1", "c2", "c3"]
    with pytest.raises(ValueError, match="exactly one of `urls` and `root`"):
        WebImageDataset(str(tmp_path), root=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one of `urls` and `root`"):
        WebImageDataset()
