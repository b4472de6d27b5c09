
import pytest
import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2
from ldm.optim import build_lr_scheduler, build_optimizer
from ldm.util import ConfigError


def test_lambda_linear_stable_diffusion_warm_up():
    # the SD v1 / lsun_churches setting: 10k linear warm-up from 1e-6 to 1, then constant 1
    s = LambdaLinearScheduler(warm_up_steps=[10000], cycle_lengths=[10000000000000], f_start=[1e-6],
                              f_max=[1.0], f_min=[1.0])
    assert s(0) == pytest.approx(1e-6)
    assert s(5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert s(9999) == pytest.approx(1e-6 + (1 - 1e-6) * 9999 / 10000)
    assert s(10000) == pytest.approx(1.0)
    assert s(10 ** 9) == pytest.approx(1.0)


def test_lambda_linear_decay_and_cycles():
    s = LambdaLinearScheduler(warm_up_steps=[10, 0], cycle_lengths=[100, 50], f_start=[0.0, 0.5],
                              f_max=[1.0, 0.5], f_min=[0.2, 0.1])
    # cycle 0: warm-up, then f_min + (f_max - f_min) * (L - n) / L with n counted from the cycle start
    assert s(5) == pytest.approx(0.5)
    assert s(40) == pytest.approx(0.2 + 0.8 * (100 - 40) / 100)
    assert s(100) == pytest.approx(0.2)  # a step equal to a cycle end still belongs to that cycle
    # cycle 1 starts at step 100 (exclusive): n = 25 within the cycle, no warm-up
    assert s(125) == pytest.approx(0.1 + (0.5 - 0.1) * (50 - 25) / 50)
    # past the last cycle its final value is kept (the original formula would turn negative)
    assert s(150) == pytest.approx(0.1) and s(10 ** 6) == pytest.approx(0.1)


def test_warm_up_cosine_values():
    s = LambdaWarmUpCosineScheduler(warm_up_steps=1000, lr_min=1e-4, lr_max=0.1, lr_start=1e-3, max_decay_steps=51000)
    assert s(0) == pytest.approx(1e-3)
    assert s(500) == pytest.approx(1e-3 + (0.1 - 1e-3) / 2)
    assert s(1000) == pytest.approx(0.1)
    assert s(26000) == pytest.approx(1e-4 + 0.5 * (0.1 - 1e-4))  # half-way through the cosine
    assert s(51000) == pytest.approx(1e-4)
    assert s(10 ** 7) == pytest.approx(1e-4)
    s2 = LambdaWarmUpCosineScheduler2(warm_up_steps=[0], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100])
    assert s2(50) == pytest.approx(0.5)
    assert s2(100) == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs", [
    dict(warm_up_steps=[10], f_min=[1.0, 1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100]),
    dict(warm_up_steps=[200], f_min=[1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100]),
    dict(warm_up_steps=10, f_min=[1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100]),
])
def test_bad_cycle_lists_raise(kwargs):
    with pytest.raises(ValueError):
        LambdaLinearScheduler(**kwargs)


def test_scheduler_from_config_drives_optimizer():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [param]}], lr=2.0)
    assert isinstance(opt, torch.optim.AdamW)
    cfg = {"target": "ldm.lr_scheduler.LambdaLinearScheduler",
           "params": {"warm_up_steps": [4], "cycle_lengths": [1000], "f_start": [0.0], "f_max": [1.0], "f_min": [1.0]}}
    sched = build_lr_scheduler(opt, cfg)
    assert sched["interval"] == "step"
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_optimizer_config_variants_and_errors():
    param = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(build_optimizer([param], 1e-3, "adam"), torch.optim.Adam)
    opt = build_optimizer([param], 1e-3,
                          {"target": "torch.optim.AdamW", "params": {"weight_decay": 0.0, "betas": [0.9, 0.99]}})
    assert opt.param_groups[0]["weight_decay"] == 0.0 and tuple(opt.param_groups[0]["betas"]) == (0.9, 0.99)
    with pytest.raises(ConfigError, match="learning rate"):
        build_optimizer([param], None)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer([param], 1e-3, "sgdx")
