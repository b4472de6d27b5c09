"""DataModuleFromConfig builds loaders from config dicts; batches are dicts in the contract's layout."""
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import OmegaConf

from ldm.data.datamodule import DataModuleFromConfig, collate
from ldm.util import ConfigError, instantiate_from_config

SHAPES_TRAIN = {"target": "ldm.data.shapes.ShapesTrain", "params": {"size": 16, "length": 12}}
SHAPES_VAL = {"target": "ldm.data.shapes.ShapesValidation", "params": {"size": 16, "length": 5}}


def test_builds_loaders_from_a_config_dict_with_the_original_target():
    config = OmegaConf.create({"target": "main.DataModuleFromConfig", "params": {
        "batch_size": 4, "num_workers": 0, "wrap": False, "train": SHAPES_TRAIN, "validation": SHAPES_VAL}})
    data = instantiate_from_config(config, node="data")
    assert isinstance(data, DataModuleFromConfig)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["class_label"].dtype == torch.long and batch["class_label"].shape == (4,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4 and isinstance(batch["caption"][0], str)
    assert batch["mask"].shape == (4, 1, 16, 16)
    val_batches = list(data.val_dataloader())
    assert [b["image"].shape[0] for b in val_batches] == [4, 1]
    # validation is not shuffled: the same order twice
    assert val_batches[0]["caption"] == next(iter(data.val_dataloader()))["caption"]


def test_only_configured_splits_get_loaders():
    data = DataModuleFromConfig(batch_size=2, train=SHAPES_TRAIN, num_workers=0)
    assert is_overridden("train_dataloader", data) and not is_overridden("val_dataloader", data)
    assert not is_overridden("test_dataloader", data)
    with pytest.raises(KeyError, match="validation"):
        data.dataset("validation")


def test_default_workers_and_worker_seeding_give_distinct_streams():
    data = DataModuleFromConfig(batch_size=1, train=SHAPES_TRAIN)
    assert data.num_workers == min(2, os.cpu_count())
    random_ds = {"target": f"{__name__}.RandomNumbers", "params": {}}
    data = DataModuleFromConfig(batch_size=2, train=random_ds, num_workers=2, persistent_workers=False)
    values = torch.cat([b["value"] for b in data.train_dataloader()])
    assert values.unique().numel() == values.numel()  # workers do not repeat each other's numpy stream


class RandomNumbers(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        import numpy as np
        return {"value": float(np.random.rand())}


class Counting(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(6):
            yield {"image": torch.zeros(3, 4, 4), "index": i}


def test_iterable_datasets_are_neither_shuffled_nor_sampled_and_wrap_works():
    data = DataModuleFromConfig(batch_size=4, num_workers=0, train={"target": f"{__name__}.Counting"})
    loader = data.train_dataloader()
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5]]
    wrapped = DataModuleFromConfig(batch_size=3, num_workers=0, wrap=True, test=SHAPES_VAL)
    assert wrapped.test_dataloader().dataset.__class__.__name__ == "WrappedDataset"


def test_collate_keeps_strings_dicts_and_none_as_lists():
    batch = collate([{"image": torch.ones(3, 2, 2), "caption": "a", "meta": {"k": 1}, "x": None, "f": 0.5},
                     {"image": torch.zeros(3, 2, 2), "caption": "b", "meta": {"k": 2}, "x": None, "f": 1.5}])
    assert batch["image"].shape == (2, 3, 2, 2) and batch["caption"] == ["a", "b"]
    assert batch["meta"] == [{"k": 1}, {"k": 2}] and batch["x"] == [None, None]
    assert torch.allclose(batch["f"].float(), torch.tensor([0.5, 1.5]))


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="data.params.train"):
        DataModuleFromConfig(batch_size=2, train={"params": {}})
    with pytest.raises(ValueError, match="batch_size"):
        DataModuleFromConfig(batch_size=0, train=SHAPES_TRAIN)
    data = DataModuleFromConfig(batch_size=2, num_workers=0, train={"target": "ldm.data.shapes.NoSuchSet"})
    with pytest.raises(ConfigError, match=r"data.params.train.*NoSuchSet"):
        data.setup("fit")


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        return (batch["image"].mean() - self.w).pow(2)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_val", [True, False])
def test_trainer_runs_validation_only_when_configured(tmp_path, with_val):
    data = DataModuleFromConfig(batch_size=4, num_workers=0, train=SHAPES_TRAIN,
                                validation=SHAPES_VAL if with_val else None)
    model = _Probe()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    assert (model.val_batches > 0) == with_val
