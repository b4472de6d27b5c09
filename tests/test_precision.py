"""Mixed precision and the UNet speed switches of DDPM / LatentDiffusion: bf16-mixed Lightning training
lowers the loss, channels-last and gradient checkpointing change nothing numerically, and the
non-finite loss guard skips poisoned steps without touching the weights and gives up after N in a row."""
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from ldm.data.shapes import ShapesTrain
from ldm.models.ddpm import DDPM
from ldm.models.nonfinite import NonFiniteGuard, NonFiniteLossError
from ldm.modules.unet_blocks import ResBlock
from ldm.util import instantiate_from_config

T = 50


def unet_config(**extra):
    params = dict(image_size=16, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2],
                  num_res_blocks=1, channel_mult=[1, 2], num_head_channels=32)
    params.update(extra)
    return {"target": "ldm.modules.unet.UNetModel", "params": params}


def tiny_ddpm(**kw):
    params = dict(timesteps=T, image_size=16, channels=3, linear_start=1e-3, linear_end=2e-2, ema_decay=0.9)
    params.update(kw)
    return DDPM(unet_config(), **params)


def randomize_(module, scale=0.1):
    """The UNet's zero-initialised output layers would hide differences; give every weight a value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def shapes_images(n, size=16):
    data = ShapesTrain(size=size, length=n)
    return torch.stack([data[i]["image"] for i in range(n)]), torch.tensor([data[i]["class_label"] for i in range(n)])


class FixedBatches(Dataset):
    """The same few samples over and over (a model can overfit them in a few dozen steps);
    ``poison`` = indices of batches whose images are NaN."""

    def __init__(self, n=8, length=64, batch_size=8, poison=()):
        self.images, self.labels = shapes_images(n)
        self.length, self.batch_size, self.poison = length, batch_size, set(poison)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        image = self.images[i % len(self.images)]
        if i // self.batch_size in self.poison:
            image = torch.full_like(image, float("nan"))
        return {"image": image, "class_label": self.labels[i % len(self.labels)]}


def trainer(steps, **kw):
    options = dict(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0)
    options.update(kw)
    return L.Trainer(**options)


def fixed_eval_loss(model, x, cond=None):
    """Loss on fixed timesteps and noise, fp32, eval mode (comparable before and after training)."""
    t = torch.linspace(0, model.num_timesteps - 1, x.shape[0]).long()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        loss = model.diffusion_loss(x, cond, t, noise)[1]["val/loss_simple"]
    model.train()
    return float(loss)


# ----------------------------------------------------------------------------- bf16-mixed
def test_bf16_mixed_lightning_training_lowers_the_loss_of_the_pixel_demo_config():
    cfg = OmegaConf.load("configs/demo/ldm_pixel_ddpm.yaml")
    p = cfg.model.params
    p.update(timesteps=100, image_size=16, scheduler_config=None)
    p.unet_config.params.update(image_size=16, model_channels=32, channel_mult=[1, 2], attention_resolutions=[2])
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    images, _ = shapes_images(8)
    before = fixed_eval_loss(model, images)
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs["loss"].dtype)

    trainer(40, precision="bf16-mixed", callbacks=[Watch()]).fit(model, DataLoader(FixedBatches(), batch_size=8))
    after = fixed_eval_loss(model, images)
    assert after < 0.7 * before, (before, after)
    assert seen and all(dtype == torch.float32 for dtype in seen)  # the loss stays fp32 under bf16 autocast
    assert model.nonfinite_guard.total == 0


def test_bf16_mixed_lightning_training_lowers_the_loss_of_the_class_conditional_latent_demo():
    cfg = OmegaConf.load("configs/demo/ldm_class_kl_f4.yaml")
    p = cfg.model.params
    p.update(timesteps=100, image_size=8, scheduler_config=None, scale_by_std=False, scale_factor=1.0)
    p.unet_config.params.update(image_size=8, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                attention_resolutions=[2], context_dim=32)
    p.first_stage_config.params.ddconfig.update(resolution=16, ch=32, ch_mult=[1, 2])  # 16x16 -> 8x8 latents
    p.cond_stage_config.params.embed_dim = 32
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    images, labels = shapes_images(8)
    z = model.encode_to_latent(images, sample=False)
    cond = lambda: model.get_learned_conditioning(labels, torch.zeros(8, dtype=torch.bool))
    before = fixed_eval_loss(model, z, cond())
    trainer(40, precision="bf16-mixed").fit(model, DataLoader(FixedBatches(), batch_size=8))
    after = fixed_eval_loss(model, z, cond())
    assert after < 0.8 * before, (before, after)


# ----------------------------------------------------------------------------- channels-last
def test_channels_last_switch_matches_contiguous_outputs_and_keys():
    plain = tiny_ddpm()
    randomize_(plain.model)
    fast = tiny_ddpm(channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert list(fast.state_dict()) == list(plain.state_dict())
    conv = fast.model.diffusion_model.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 40])
    with torch.no_grad():
        expected, got = plain.apply_model(x, t), fast.apply_model(x, t)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    noise = torch.randn_like(x)
    for m in (plain, fast):
        m.diffusion_loss(x, None, t, noise)[0].backward()
    for (name, a), b in zip(plain.model.named_parameters(), fast.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- gradient checkpointing
def _recompute_counter(model):
    calls = []
    block = next(m for m in model.model.diffusion_model.modules() if isinstance(m, ResBlock))
    block.in_layers.register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_gradient_checkpointing_switch_gives_identical_loss_and_gradients(autocast):
    reference = tiny_ddpm(gradient_checkpointing=False)
    randomize_(reference.model)
    checkpointed = tiny_ddpm(gradient_checkpointing=True)
    checkpointed.load_state_dict(reference.state_dict())
    flags = [m.use_checkpoint for m in checkpointed.model.modules() if hasattr(m, "use_checkpoint")]
    assert flags and all(flags)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 30])
    noise = torch.randn_like(x)
    losses, counts = [], []
    for m in (reference, checkpointed):
        calls = _recompute_counter(m)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = m.diffusion_loss(x, None, t, noise)[0]
        loss.backward()
        losses.append(loss.detach())
        counts.append(len(calls))
    assert counts == [1, 2]  # the checkpointed block ran again in backward
    assert losses[0].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    for (name, a), b in zip(reference.model.named_parameters(), checkpointed.model.parameters()):
        assert torch.isfinite(b.grad).all(), name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_switches_reject_bad_values():
    with pytest.raises(TypeError, match="compile"):
        tiny_ddpm(compile="yes")
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        tiny_ddpm(gradient_checkpointing="on")
    with pytest.raises(ValueError, match="max_nonfinite_steps"):
        tiny_ddpm(max_nonfinite_steps=0)


# ----------------------------------------------------------------------------- non-finite guard
class Snapshots(L.Callback):
    """Weights before and after every batch; the EMA shadow weights at the start of every batch (a
    callback's batch-end hook runs before the model's, where the EMA is updated)."""

    def __init__(self):
        self.before, self.after, self.ema_before = {}, {}, {}

    @staticmethod
    def _weights(module):
        return torch.cat([p.detach().flatten().clone() for p in module.model.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[batch_idx] = self._weights(pl_module)
        self.ema_before[batch_idx] = torch.cat([b.flatten().clone() for name, b in
                                                pl_module.model_ema.named_buffers()
                                                if name not in ("decay", "num_updates")])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = self._weights(pl_module)


def test_nonfinite_guard_skips_a_poisoned_step_without_touching_weights_or_ema():
    model = tiny_ddpm()
    model.learning_rate = 1e-3
    snaps = Snapshots()
    with pytest.warns(RuntimeWarning, match="optimizer step skipped"):
        trainer(5, callbacks=[snaps]).fit(model, DataLoader(FixedBatches(poison={2}), batch_size=8))
    assert model.nonfinite_guard.total == 1 and model.nonfinite_guard.consecutive == 0
    assert torch.equal(snaps.after[2], snaps.before[2])          # the poisoned step changed nothing
    assert torch.equal(snaps.ema_before[3], snaps.ema_before[2])  # nor did the EMA move
    assert not torch.equal(snaps.ema_before[2], snaps.ema_before[1])
    for i in (0, 1, 3):
        assert not torch.equal(snaps.after[i], snaps.before[i])  # clean steps did train
    assert torch.isfinite(snaps.after[3]).all()
    assert int(model.model_ema.num_updates) == 4


def test_nonfinite_guard_raises_after_n_consecutive_bad_steps():
    model = tiny_ddpm(max_nonfinite_steps=3)
    model.learning_rate = 1e-3
    data = DataLoader(FixedBatches(poison={1, 2, 3, 4, 5}), batch_size=8)
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match="3 consecutive"):
        trainer(10).fit(model, data)
    assert model.nonfinite_guard.total == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Strategy:
    def __init__(self, other_rank_bad):
        self.other_rank_bad, self.calls = other_rank_bad, []

    def reduce_boolean_decision(self, decision, all=True):
        self.calls.append((decision, all))
        return decision or self.other_rank_bad  # OR over "ranks"


class _Trainer:
    precision_plugin = object()
    global_step = 7
    is_global_zero = True

    def __init__(self, strategy):
        self.strategy = strategy


class _Module:
    def __init__(self, trainer):
        self._trainer = trainer

    def log(self, *args, **kwargs):
        pass


def test_nonfinite_decision_is_reduced_over_ranks():
    """A rank with a finite loss still skips when another rank's loss was NaN (the flag is OR-reduced),
    and a NaN loss becomes a zero loss that still backpropagates (every rank runs backward)."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    strategy = _Strategy(other_rank_bad=True)
    guard = NonFiniteGuard(max_consecutive=5)
    loss = guard.observe((weight * 2).sum())
    loss.backward()
    assert guard.before_optimizer_step(_Module(_Trainer(strategy)), optimizer) is True
    assert strategy.calls == [(False, False)] and weight.grad is None and guard.total == 1

    bad = guard.observe((weight * float("nan")).sum())
    assert float(bad) == 0.0 and bad.requires_grad
    bad.backward()
    strategy.other_rank_bad = False
    assert guard.before_optimizer_step(_Module(_Trainer(strategy)), optimizer) is True
    assert strategy.calls[-1] == (True, False) and guard.consecutive == 2

    guard.observe((weight * 2).sum()).backward()
    assert guard.before_optimizer_step(_Module(_Trainer(strategy)), optimizer) is False
    assert guard.consecutive == 0 and weight.grad is not None
