"""The ``compile`` switch of DDPM, in one small test.

torch.compile's default backend (inductor) builds C++ kernels with gcc on CPU and needs 1.5-2 minutes
here even for the smallest UNet, so the test uses the ``aot_eager`` backend: the same Dynamo graph
capture (``fullgraph=True``: the UNet must compile to ONE graph, no graph breaks) and AOTAutograd
forward/backward graphs, without code generation. ``LDM_TEST_COMPILE_BACKEND=inductor`` runs it
with inductor.
"""
import os

import torch

from ldm.models.ddpm import DDPM


def tiny_ddpm(**kw):
    unet = {"target": "ldm.modules.unet.UNetModel",
            "params": dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[],
                           num_res_blocks=1, channel_mult=[1], num_heads=1)}
    return DDPM(unet, timesteps=50, image_size=8, channels=3, use_ema=False, **kw)


def test_compiled_training_matches_eager_keeps_keys_and_lowers_the_loss():
    eager = tiny_ddpm()
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in eager.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    backend = os.environ.get("LDM_TEST_COMPILE_BACKEND", "aot_eager")
    compiled = tiny_ddpm(compile={"backend": backend, "fullgraph": True, "dynamic": False})
    assert compiled.model.diffusion_model._compiled_call_impl is not None  # compiled in place ...
    assert list(compiled.state_dict()) == list(eager.state_dict())        # ... so the keys are unchanged
    compiled.load_state_dict(eager.state_dict())

    x = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 25, 49])
    noise = torch.randn_like(x)
    optimizers = [torch.optim.Adam(m.model.parameters(), lr=3e-3) for m in (eager, compiled)]
    losses = {0: [], 1: []}
    for step in range(12):
        for i, (m, opt) in enumerate(zip((eager, compiled), optimizers)):
            loss = m.diffusion_loss(x, None, t, noise)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[i].append(float(loss))
        if step == 0:
            for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert abs(losses[1][0] - losses[0][0]) < 1e-4 * max(1.0, losses[0][0])  # compiled == eager
    assert losses[1][-1] < 0.7 * losses[1][0], losses[1]                     # and it trains
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=2e-2, atol=1e-4)
