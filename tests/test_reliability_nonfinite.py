"""Issue 14 items 1 and 2: NaN/Inf never reaches the weights.

* The GAN autoencoders (manual optimisation) skip the step of a non-finite batch for both optimisers,
  count it, and stop after ``max_nonfinite_steps`` in a row; weights, optimiser state and EMA untouched.
* ``scale_by_std`` ignores non-finite batches, never stores a non-finite factor, and a loaded
  non-finite factor is an error that says how to re-estimate it.
"""
import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.models.autoencoder import AutoencoderKL, VQModel
from ldm.models.nonfinite import NonFiniteLossError
from test_autoencoder_training import Blobs, loss_config, tiny_ddconfig, trainer


class PoisonedBlobs(Dataset):
    """Blobs with one NaN pixel in every ``every``-th image (``every=1``: all of them)."""

    def __init__(self, n: int, every: int):
        self.base, self.every = Blobs(n), every

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image = self.base[i]["image"].clone()
        if i % self.every == 0:
            image[0, 0, 0] = float("nan")
        return {"image": image}


def _all_finite(module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def _kl(**kw):
    return AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=0, kl_weight=1e-6),
                         embed_dim=4, base_learning_rate=1e-3, **kw)


def test_autoencoder_skips_nan_batches_and_keeps_finite_weights():
    model = _kl()
    # batch_size 1, NaN in images 0, 3, 6: 3 of 8 steps are skipped, the other 5 train both optimisers
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer(max_epochs=1).fit(model, DataLoader(PoisonedBlobs(8, every=3), batch_size=1))
    assert _all_finite(model)
    assert model.nonfinite_guard.total == 3
    assert model.gan_step == 5
    optimiser_steps = [int(s["step"]) for opt in model.trainer.optimizers for s in opt.state_dict()["state"].values()]
    assert optimiser_steps and set(optimiser_steps) == {5}  # Adam's step count saw only the clean batches
    for opt in model.trainer.optimizers:
        for state in opt.state_dict()["state"].values():
            assert torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()


def test_autoencoder_stops_after_max_nonfinite_steps_in_a_row_with_weights_untouched():
    model = VQModel(tiny_ddconfig(double_z=False), loss_config("VQLPIPSWithDiscriminator", disc_start=0),
                    n_embed=8, embed_dim=4, use_ema=True, max_nonfinite_steps=3,
                    quantizer_config={"use_ema": True})  # the codebook EMA runs in the forward pass
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match="3 consecutive"):
        trainer(max_steps=10).fit(model, DataLoader(PoisonedBlobs(8, every=1), batch_size=2))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights or EMA moved on NaN batches"
    assert model.gan_step == 0


def test_autoencoder_diverging_learning_rate_never_writes_nan():
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=100),
                          embed_dim=4, base_learning_rate=1e6, max_nonfinite_steps=2)
    try:
        with pytest.warns(RuntimeWarning):
            trainer(max_steps=12).fit(model, DataLoader(Blobs(24), batch_size=2))
    except NonFiniteLossError:
        pass
    assert _all_finite(model)


def test_guard_can_be_switched_off():
    assert _kl(skip_nonfinite=False).nonfinite_guard is None


# -- scale_by_std ------------------------------------------------------------------------------
def _tiny_ldm():
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config
    from test_e2e_resume import TINY_CONFIG

    return instantiate_from_config(OmegaConf.load(TINY_CONFIG).model)


def _images(n: int, nan: bool = False) -> dict:
    images = torch.rand(n, 3, 16, 16) * 2 - 1
    if nan:
        images[0, 0, 0, 0] = float("nan")
    return {"image": images}


def test_scale_by_std_ignores_non_finite_batches():
    model = _tiny_ldm()
    model.batch_latent_moments = lambda batch: (batch["z"], torch.zeros_like(batch["z"]))  # deterministic latents
    clean = [{"z": torch.randn(4, 3, 8, 8) * 3.0} for _ in range(2)]
    poisoned = {"z": clean[0]["z"].clone()}
    poisoned["z"][0, 0, 0, 0] = float("nan")
    reference = model.estimate_scale_factor(clean)
    value = model.estimate_scale_factor([clean[0], poisoned, clean[1]])
    assert math.isfinite(value) and value == pytest.approx(reference, rel=1e-12)
    assert float(model.scale_factor) == pytest.approx(reference, rel=1e-6)


def test_scale_by_std_refuses_to_store_a_non_finite_factor():
    model = _tiny_ldm()
    model.scale_factor.fill_(1.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        model.estimate_scale_factor([_images(4, nan=True)])
    assert float(model.scale_factor) == 1.0


def test_loaded_non_finite_scale_factor_is_an_error_naming_the_remedy():
    from ldm.util import ConfigError

    model = _tiny_ldm()
    state = model.state_dict()
    state["scale_factor"] = torch.tensor(float("nan"))
    with pytest.raises(ConfigError, match="scale_factor.*nan.*re-estimate"):
        _tiny_ldm().load_state_dict(state)
