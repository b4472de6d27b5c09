"""Optimiser implementation choice: fused kernels by default, the same update as PyTorch's loop."""
import copy

import pytest
import torch

from ldm.optim import build_optimizer


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(16, 8), (8,), (3, 3, 4, 4)]]


def _run(params, optimizer, steps=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_by_default_and_same_update_as_the_loop(name):
    fused_params, loop_params = _params(), _params()
    fused = build_optimizer(fused_params, 1e-2, name)
    loop = build_optimizer(loop_params, 1e-2, {"target": f"torch.optim.{'AdamW' if name == 'adamw' else 'Adam'}",
                                             "params": {"foreach": False}})
    assert fused.param_groups[0]["fused"] is True
    assert not loop.param_groups[0]["fused"] and loop.param_groups[0]["foreach"] is False
    after_fused, after_loop = _run(fused_params, fused), _run(loop_params, loop)
    for a, b, p0 in zip(after_fused, after_loop, _params()):
        assert not torch.equal(a, p0)  # the weights moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_config_choice_and_fp16_mixed_keep_the_default_implementation():
    explicit = build_optimizer(_params(), 1e-3, {"target": "torch.optim.AdamW", "params": {"fused": False}})
    assert not explicit.param_groups[0]["fused"]
    # Lightning refuses gradient clipping when the optimiser unscales fp16 gradients itself
    fp16 = build_optimizer(_params(), 1e-3, None, precision="16-mixed")
    assert not fp16.param_groups[0]["fused"]
    assert build_optimizer(_params(), 1e-3, None, precision="bf16-mixed").param_groups[0]["fused"] is True
    # optimisers without a fused kernel are built as configured
    sgd = build_optimizer(_params(), 1e-3, {"target": "torch.optim.RMSprop"})
    assert isinstance(sgd, torch.optim.RMSprop) and "fused" not in sgd.param_groups[0]


def test_integer_parameters_are_not_fused():
    # a fused kernel needs floating-point tensors; anything else keeps PyTorch's default path
    from ldm.optim import fused_kwargs
    ints = [torch.zeros(3, dtype=torch.int64)]
    assert fused_kwargs(torch.optim.AdamW, ints, {}) == {}
    assert fused_kwargs(torch.optim.AdamW, [{"params": _params()}], {}) == {"fused": True}


def test_state_of_a_loop_optimiser_resumes_in_the_fused_one():
    # checkpoints written before the fused default (or by the original code) hold a loop-AdamW state
    loop_params, fused_params = _params(), _params()
    loop = torch.optim.AdamW(loop_params, lr=1e-2, foreach=False)
    _run(loop_params, loop, steps=3)
    fused = build_optimizer(fused_params, 1e-2)
    with torch.no_grad():
        for dst, src in zip(fused_params, loop_params):
            dst.copy_(src)
    fused.load_state_dict(copy.deepcopy(loop.state_dict()))  # as read back from a checkpoint file
    after_fused, after_loop = _run(fused_params, fused, steps=2, seed=5), _run(loop_params, loop, steps=2, seed=5)
    for a, b in zip(after_fused, after_loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(fused.state[fused_params[0]]["step"]) == 5
