"""Lightning 2 manual-optimisation training of the first stage: disc_start gating, accumulation,
validation metrics, image logging, and a short run in which the reconstruction loss falls."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.models.autoencoder import AutoencoderKL, VQModel


def tiny_ddconfig(double_z: bool = True, res: int = 16) -> dict:
    return dict(double_z=double_z, z_channels=4, resolution=res, in_channels=3, out_ch=3, ch=16, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=8)


def loss_config(target: str, disc_start: int, **extra) -> dict:
    params = dict(disc_start=disc_start, disc_num_layers=2, disc_ndf=8, disc_weight=0.5,
                  perceptual_weight=0.0, perceptual_backbone="random", **extra)
    return {"target": f"ldm.modules.losses.{target}", "params": params}


class Blobs(Dataset):
    """Shapes-like images: a bright square on a smooth background, in [-1, 1]."""

    def __init__(self, n: int, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.images = []
        for _ in range(n):
            colour, bg = torch.rand(3, 1, 1, generator=g) * 2 - 1, torch.rand(3, 1, 1, generator=g) * 0.4 - 0.8
            x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            mask = torch.zeros(size, size)
            mask[y0:y0 + size // 2, x0:x0 + size // 2] = 1
            self.images.append(torch.where(mask.bool(), colour, bg + 0.2 * xx))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def trainer(**kw) -> L.Trainer:
    base = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(**{**base, **kw})


class StepRecorder(L.Callback):
    def __init__(self, model):
        self.disc_calls_at_step = []
        model.loss.discriminator.register_forward_hook(lambda *_: self.disc_calls_at_step.append(model.gan_step))
        self.decoder_checksums, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.decoder_checksums.append(pl_module.decoder.conv_out.weight.detach().sum().item())
        self.losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))


def test_discriminator_gated_until_disc_start_and_optimiser_counts():
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=3, kl_weight=1e-6),
                          embed_dim=4, base_learning_rate=1e-3)
    recorder = StepRecorder(model)
    disc_before = [p.detach().clone() for p in model.loss.discriminator.parameters()]
    trainer(max_epochs=1, callbacks=[recorder]).fit(model, DataLoader(Blobs(10), batch_size=2))
    assert model.gan_step == 5
    assert recorder.disc_calls_at_step and min(recorder.disc_calls_at_step) == 3  # first use at disc_start
    # steps 3 and 4: one generator call + (real, fake) discriminator calls each
    assert len(recorder.disc_calls_at_step) == 2 * 3
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, model.loss.discriminator.parameters()))
    # Lightning counts every optimiser step: 5 autoencoder + 2 discriminator
    assert model.trainer.global_step == 7
    assert model.learning_rate == 1e-3


def test_discriminator_untouched_before_disc_start():
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=100), embed_dim=4)
    recorder = StepRecorder(model)
    disc_before = [p.detach().clone() for p in model.loss.discriminator.parameters()]
    trainer(max_steps=3, callbacks=[recorder]).fit(model, DataLoader(Blobs(6), batch_size=2))
    assert recorder.disc_calls_at_step == []
    assert all(torch.equal(a, b) for a, b in zip(disc_before, model.loss.discriminator.parameters()))
    assert all(p.grad is None for p in model.loss.discriminator.parameters())


def test_gradient_accumulation_steps_every_n_batches():
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=0), embed_dim=4,
                          base_learning_rate=1e-3, accumulate_grad_batches=2)
    recorder = StepRecorder(model)
    start = model.decoder.conv_out.weight.detach().sum().item()
    trainer(max_epochs=1, callbacks=[recorder]).fit(model, DataLoader(Blobs(8), batch_size=2))
    sums = [start] + recorder.decoder_checksums
    changed = [sums[i + 1] != sums[i] for i in range(4)]
    assert changed == [False, True, False, True]  # weights move only on every 2nd batch
    assert model.gan_step == 2


def test_accumulated_gradient_equals_big_batch_gradient():
    """N micro-batches with loss/N give the gradient of the mean loss over the N·B batch."""
    torch.manual_seed(0)
    cfg = dict(ddconfig=tiny_ddconfig(False), lossconfig=loss_config("VQLPIPSWithDiscriminator", disc_start=10),
               n_embed=8, embed_dim=4)
    accumulated, reference = VQModel(**cfg, accumulate_grad_batches=2), VQModel(**cfg)
    reference.load_state_dict(accumulated.state_dict())
    grads = {}

    class Capture(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.setdefault(id(pl_module), pl_module.decoder.conv_out.weight.grad.clone())

    data = Blobs(4)
    trainer(max_steps=1, callbacks=[Capture()]).fit(accumulated, DataLoader(data, batch_size=2))
    trainer(max_steps=1, callbacks=[Capture()]).fit(reference, DataLoader(data, batch_size=4))
    assert torch.allclose(grads[id(accumulated)], grads[id(reference)], rtol=1e-4, atol=1e-6)


def test_short_run_on_shapes_reduces_reconstruction_loss_and_logs_validation_metrics():
    from ldm.data.shapes import ShapesTrain  # the embedded shapes data (data part of the project)

    torch.manual_seed(0)
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=1000, kl_weight=1e-6),
                          embed_dim=4, base_learning_rate=2e-3)
    data = ShapesTrain(size=16, length=64, seed=0)
    t = trainer(max_steps=80, limit_val_batches=1)
    with torch.no_grad():
        x = torch.stack([data[i]["image"] for i in range(16)])
        before = (model(x, sample_posterior=False)[0] - x).abs().mean().item()
    t.fit(model, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16))
    with torch.no_grad():
        after = (model(x, sample_posterior=False)[0] - x).abs().mean().item()
    assert after < 0.6 * before, (before, after)  # measured: 0.40 -> 0.16
    metrics = t.callback_metrics
    for key in ("val/rec_loss", "val/psnr", "val/ssim", "val/lpips",
                "train/rec_loss", "train/nll_loss", "train/kl_loss"):
        assert key in metrics, key
    assert metrics["val/psnr"].item() > 10.0
    images = model.log_images({"image": x[:4]})
    assert set(images) == {"inputs", "reconstructions", "samples"}
    assert all(v.shape == (4, 3, 16, 16) and v.min() >= -1 and v.max() <= 1 for v in images.values())


def test_vq_model_trains_with_discriminator_and_logs_codebook_metrics():
    model = VQModel(tiny_ddconfig(False), loss_config("VQLPIPSWithDiscriminator", disc_start=0), n_embed=16,
                    embed_dim=4, base_learning_rate=1e-3,
                    quantizer_config={"use_ema": True, "dead_code_threshold": 0.01})
    data = Blobs(8)
    t = trainer(max_steps=4, limit_val_batches=1)
    t.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    assert model.gan_step == 2
    for key in ("train/perplexity", "train/codebook_usage", "val/codebook_usage_epoch", "val/psnr", "train/disc_loss"):
        assert key in t.callback_metrics, key
    assert 0 < t.callback_metrics["val/codebook_usage_epoch"].item() <= 1
    assert set(model.log_images({"image": data[0]["image"][None]})) == {"inputs", "reconstructions"}


def test_gan_step_survives_a_checkpoint_round_trip(tmp_path):
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=100), embed_dim=4)
    t = trainer(max_steps=2)
    t.fit(model, DataLoader(Blobs(4), batch_size=2))
    t.save_checkpoint(tmp_path / "last.ckpt")
    fresh = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=100), embed_dim=4)
    fresh.on_load_checkpoint(torch.load(tmp_path / "last.ckpt", weights_only=False))
    assert fresh.gan_step == 2
    from ldm.checkpoint import load_weights

    report = load_weights(fresh, tmp_path / "last.ckpt", ignore_keys=["loss."], verbose=False)
    assert not report.missing or all(k.startswith("loss.") for k in report.missing)
    assert torch.equal(fresh.encoder.conv_in.weight, model.encoder.conv_in.weight)


def test_inference_only_loss_refuses_to_train():
    model = AutoencoderKL(tiny_ddconfig(), {"target": "ldm.modules.losses.DummyLoss"}, embed_dim=4)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.configure_optimizers()


def test_optimisers_are_fused_adam_with_the_gan_betas():
    model = AutoencoderKL(tiny_ddconfig(), loss_config("LPIPSWithDiscriminator", disc_start=0), embed_dim=4)
    model.learning_rate = 1e-4
    ae_opt, disc_opt = model.configure_optimizers()
    for opt in (ae_opt, disc_opt):
        assert type(opt) is torch.optim.Adam and opt.param_groups[0]["fused"] is True
        assert tuple(opt.param_groups[0]["betas"]) == (0.5, 0.9)
    assert {id(p) for p in disc_opt.param_groups[0]["params"]} == {id(p) for p in model.loss.discriminator.parameters()}
