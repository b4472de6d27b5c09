"""LitEma: the update against a hand computation, warm-up, store/copy_to/restore, original key layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ldm.modules.ema import LitEma

FIXTURES = Path(__file__).parent / "fixtures"


def small_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)  # frozen parameters are not averaged
    return model


def test_buffer_layout_matches_original():
    ema = LitEma(small_model())
    assert list(ema.state_dict()) == ["decay", "num_updates", "0weight", "0bias", "1weight"]
    assert ema.num_updates.dtype == torch.int32 and ema.decay.dtype == torch.float32


def test_celebahq_ema_key_names_match_dump():
    from ldm.modules.unet import UNetModel
    with torch.device("meta"):
        wrapper = nn.Module()
        wrapper.diffusion_model = UNetModel(64, 3, 224, 3, 2, [8, 4, 2], channel_mult=[1, 2, 3, 4],
                                            num_head_channels=32)
        ema = LitEma(wrapper)
    ours = {k: tuple(v.shape) for k, v in ema.state_dict().items()}
    lines = (FIXTURES / "unet_celebahq-ldm-vq-4_ema_keys_sample.tsv").read_text().splitlines()
    sample = [line.split("\t") for line in lines]
    assert len(ours) == 370
    for key, shape in sample:
        assert ours[key] == tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), key


def test_update_matches_hand_computation_with_warmup():
    model = small_model()
    w0 = model[0].weight.detach().clone()
    ema = LitEma(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema(model)  # n = 1: decay = min(0.9, 2/11)
    d1 = 2 / 11
    expected = d1 * w0 + (1 - d1) * (w0 + 1.0)
    torch.testing.assert_close(ema.get_buffer("0weight"), expected)
    assert int(ema.num_updates) == 1
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema(model)  # n = 2: decay = 3/12
    d2 = 3 / 12
    expected = d2 * expected + (1 - d2) * (w0 + 2.0)
    torch.testing.assert_close(ema.get_buffer("0weight"), expected)


def test_warmup_reaches_configured_decay_and_can_be_disabled():
    ema = LitEma(small_model(), decay=0.99)
    ema.num_updates.fill_(10_000)
    assert ema.current_decay() == pytest.approx(0.99)
    ema.num_updates.fill_(0)
    assert ema.current_decay() == pytest.approx(2 / 11)
    no_warmup = LitEma(small_model(), decay=0.5, use_num_upates=False)  # original spelling accepted
    assert int(no_warmup.num_updates) == -1 and no_warmup.current_decay() == 0.5
    model = small_model()
    no_warmup = LitEma(model, decay=0.5, use_num_updates=False)
    before = no_warmup.get_buffer("1weight").clone()
    with torch.no_grad():
        model[1].weight.mul_(3)
    no_warmup(model)
    torch.testing.assert_close(no_warmup.get_buffer("1weight"), 0.5 * before + 0.5 * 3 * before)
    assert int(no_warmup.num_updates) == -1


def test_store_copy_to_restore_round_trip():
    model = small_model()
    ema = LitEma(model, decay=0.0)
    trained = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(5.0)
    current = [p.detach().clone() for p in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model)
    torch.testing.assert_close(model[0].weight, trained[0])            # averaged (here: initial) weights
    torch.testing.assert_close(model[1].bias, current[3])              # frozen parameter untouched
    ema.restore(model.parameters())
    for p, c in zip(model.parameters(), current):
        torch.testing.assert_close(p, c)
    with pytest.raises(RuntimeError, match="store"):
        ema.restore(model.parameters())


def test_loading_decay_only_state_does_not_fail():
    model = small_model()
    parent = nn.Module()
    parent.model_ema = LitEma(model)
    state = {"model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(42, dtype=torch.int32)}
    with pytest.warns(UserWarning, match="decay/num_updates"):
        report = parent.load_state_dict(state, strict=True)
    assert report.missing_keys == []
    assert parent.model_ema.shadow_loaded is False
    assert int(parent.model_ema.num_updates) == 42
    with torch.no_grad():
        model[0].weight.fill_(7.0)
    parent.model_ema.reset_to(model)
    assert torch.all(parent.model_ema.get_buffer("0weight") == 7.0) and parent.model_ema.shadow_loaded
    # a partial set of shadow weights is still an error
    partial = dict(state, **{"model_ema.0weight": torch.zeros(2, 3)})
    with pytest.raises(RuntimeError, match="0bias"):
        parent.load_state_dict(partial, strict=True)


def test_bad_decay_rejected():
    with pytest.raises(ValueError, match="decay"):
        LitEma(small_model(), decay=1.5)
