"""Needs the LatentDiffusion change (latent_from_batch): a Lightning fit from a latent cache."""
import lightning as L
import pytest
from torch.utils.data import DataLoader

from ldm.data.datamodule import collate
from ldm.data.latent_cache import LatentCacheDataset, LatentCacheMismatchError, encode_dataset
from ldm.data.shapes import ShapesDataset
from ldm.models.latent_diffusion import LatentDiffusion

DD = dict(double_z=True, z_channels=2, resolution=16, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)
KL = {"target": "ldm.models.autoencoder.AutoencoderKL",
      "params": {"embed_dim": 2, "lossconfig": {"target": "torch.nn.Identity"}, "ddconfig": DD}}
UNET = {"target": "ldm.modules.unet.UNetModel",
        "params": dict(image_size=8, in_channels=2, out_channels=2, model_channels=32, attention_resolutions=[4],
                       num_res_blocks=1, channel_mult=[1], num_head_channels=32, use_spatial_transformer=True,
                       context_dim=32)}
COND = {"target": "ldm.modules.conditioners.class_label.ClassEmbedder",
        "params": {"embed_dim": 32, "n_classes": 12, "key": "class_label"}}


def model():
    m = LatentDiffusion(first_stage_config=KL, cond_stage_config=COND, cond_stage_key="class_label",
                           conditioning_key="crossattn", cond_stage_trainable=True, unet_config=UNET, timesteps=50,
                           image_size=8, channels=2, scale_by_std=True, use_ema=False)
    m.learning_rate = 1e-3
    return m


def test_fit_from_cache(tmp_path):
    m = model()
    encode_dataset(m.first_stage_model, ShapesDataset(size=16, length=16), tmp_path, flip="off", batch_size=8)
    loader = DataLoader(LatentCacheDataset(tmp_path), batch_size=8, collate_fn=collate, shuffle=True)
    calls = []
    m.first_stage_model.encoder.register_forward_hook(lambda *a: calls.append(1))
    L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(m, loader)
    assert not calls and float(m.scale_factor) != 1.0
    logs = m.log_images(next(iter(loader)), N=2, sample=False)
    assert logs["reconstruction"].shape == (2, 3, 16, 16)

    other = model()  # different random first stage
    with pytest.raises(LatentCacheMismatchError):
        L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(other, loader)
