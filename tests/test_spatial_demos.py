"""The spatially conditioned demo configs end to end: each trains 2 steps through the training CLI on
16×16 shapes (tiny networks), logs images (with guidance, where the null condition comes from the
spatial input), and samples through its CLI mode (``superres``, ``mask2img``, ``inpaint`` with an
inpainting model); plus the sampling CLI's number checks and ``--negative-prompt``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.cli.load_model import SampleError
from ldm.cli.sample import main, run

REPO = Path(__file__).resolve().parents[1]
STEPS = ["--steps", "2", "--no-progress"]

SHRINK = {
    "model": {"params": {
        "timesteps": 100, "scale_by_std_batches": 1, "image_size": 4, "scheduler_config": None,
        "unet_config": {"params": {"image_size": 4, "model_channels": 32, "channel_mult": [1, 2],
                                   "num_res_blocks": 1, "attention_resolutions": [], "num_head_channels": 32}},
        "first_stage_config": {"params": {"ddconfig": {"resolution": 16, "ch": 32, "ch_mult": [1, 1, 1]}}},
    }},
    "data": {"params": {"batch_size": 4, "train": {"params": {"size": 16, "length": 8, "lowres_size": 4}},
                        "validation": None}},
    "lightning": {"trainer": {"max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False,
                              "limit_val_batches": 0, "log_every_n_steps": 1},
                  "callbacks": {"image_logger": {"params": {
                      "batch_frequency": 1, "max_images": 2,
                      "log_images_kwargs": {"ddim_steps": 2, "N": 2, "guidance_scale": 2.0}}}}},
}
DEMOS = {"superres": "ldm_superres_kl_f4.yaml", "mask2img": "ldm_mask2img_kl_f4.yaml",
         "inpaint": "ldm_inpaint_kl_f4.yaml", "inpaint_text": "ldm_inpaint_text_kl_f4.yaml"}


HYBRID = {"model": {"params": {"unet_config": {"params": {"attention_resolutions": [1]}}}}}


def _train(root: Path, config: str, name: str) -> Path:
    from omegaconf import OmegaConf

    from ldm.cli.train import run as train

    override = root / f"{name}.yaml"
    shrink = OmegaConf.merge(SHRINK, HYBRID) if "text" in name else SHRINK
    override.write_text(yaml.safe_dump(OmegaConf.to_container(OmegaConf.create(shrink))))
    result = train(["-b", str(REPO / "configs" / "demo" / config), str(override), "-t", "--no-test",
                    "-l", str(root / "logs"), "-n", name, "--logger", "none", "-s", "1"])
    assert (result.logdir / "checkpoints" / "last.ckpt").is_file()
    return result.logdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("spatial_runs")
    return {mode: _train(root, config, mode) for mode, config in DEMOS.items()}


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def shapes_picture(size: int) -> np.ndarray:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[:] = (40, 60, 120)
    array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (220, 30, 30)
    return array


def sample(mode: str, run_dir: Path, outdir: Path, *args: str):
    return run([mode, "--run", str(run_dir), "--outdir", str(outdir), *STEPS, *args])


@pytest.mark.parametrize("mode", sorted(DEMOS))
def test_demo_trains_and_logs_images(runs, mode):
    logged = sorted((runs[mode] / "images" / "train").glob("*.png"))
    names = {p.name.split("_gs-")[0] for p in logged}
    assert {"samples", "inputs"} <= names, names
    assert any(n.startswith("conditioning") for n in names), names
    if mode in ("mask2img", "inpaint_text"):  # trained with condition dropout: guided samples too
        assert any(n.startswith("samples_cfg_scale_2.00") for n in names), names


def test_superres_cli(runs, tmp_path):
    low = _png(tmp_path / "low.png", shapes_picture(4))
    result = sample("superres", runs["superres"], tmp_path / "sr", "--input", str(low), "--n_samples", "2")
    assert len(result.files) == 2
    assert Image.open(result.files[0]).size == (16, 16)  # 4x: input px per latent cell 1, f = 4
    assert result.settings["concat_inputs"] == ["LR_image"] and result.settings["input"] == str(low)
    again = sample("superres", runs["superres"], tmp_path / "sr2", "--input", str(low), "--n_samples", "2")
    assert np.array_equal(np.asarray(Image.open(again.files[1])), np.asarray(Image.open(result.files[1])))
    other = _png(tmp_path / "other.png", np.full((4, 4, 3), 250, dtype=np.uint8))
    changed = sample("superres", runs["superres"], tmp_path / "sr3", "--input", str(other), "--n_samples", "2")
    assert not np.array_equal(np.asarray(Image.open(changed.files[0])), np.asarray(Image.open(result.files[0])))
    larger = sample("superres", runs["superres"], tmp_path / "sr4", "--input",
                    str(_png(tmp_path / "big.png", shapes_picture(8))), "--n_samples", "1")
    assert Image.open(larger.files[0]).size == (32, 32)  # convolutional: 8x8 -> 32x32


def test_mask2img_cli_with_guidance(runs, tmp_path):
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    path = _png(tmp_path / "mask.png", mask)
    plain = sample("mask2img", runs["mask2img"], tmp_path / "m1", "--input", str(path), "--n_samples", "1")
    guided = sample("mask2img", runs["mask2img"], tmp_path / "m2", "--input", str(path), "--n_samples", "1",
                    "--scale", "3")
    assert Image.open(plain.files[0]).size == (16, 16)
    assert plain.settings["concat_inputs"] == ["mask"] and guided.settings["scale"] == 3.0
    assert not np.array_equal(np.asarray(Image.open(plain.files[0])), np.asarray(Image.open(guided.files[0])))


def test_inpaint_cli_uses_the_models_concat_inputs(runs, tmp_path):
    image = _png(tmp_path / "x.png", shapes_picture(16))
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[:, :8] = 255
    mask = _png(tmp_path / "m.png", hole)
    result = sample("inpaint", runs["inpaint"], tmp_path / "ip", "--image", str(image), "--mask", str(mask),
                    "--n_samples", "2")
    assert result.settings["concat_inputs"] == ["inpaint_mask", "masked_image"]
    original = shapes_picture(16).astype(np.int16)
    out = np.asarray(Image.open(result.files[0]).convert("RGB"), dtype=np.int16)
    assert np.array_equal(out[:, 8:], original[:, 8:])  # known pixels pasted back
    def known_half_error(*flags):
        raw = sample("inpaint", runs["inpaint"], tmp_path / "_".join(("raw",) + flags), "--image", str(image),
                     "--mask", str(mask), "--n_samples", "2", "--no-paste", *flags)
        decoded = np.asarray(Image.open(raw.files[0]).convert("RGB"), dtype=np.int16)
        return np.abs(decoded[:, 8:] - original[:, 8:]).mean()

    held, free = known_half_error(), known_half_error("--no-blend")
    assert 0 < held < free  # decoded, not pasted; holding the known latents keeps that half close to the input


def test_spatial_mode_errors(runs, tmp_path):
    low = _png(tmp_path / "low.png", shapes_picture(4))
    with pytest.raises(SampleError, match="one mask / semantic-map concat input"):
        sample("mask2img", runs["superres"], tmp_path / "e1", "--input", str(low))
    with pytest.raises(SampleError, match="one 3-channel"):
        sample("superres", runs["mask2img"], tmp_path / "e2", "--input", str(low))
    with pytest.raises(SampleError, match="--input"):
        sample("superres", runs["superres"], tmp_path / "e3", "--input", str(tmp_path / "missing.png"))
    with pytest.raises(SampleError, match="needs a text-conditional model"):
        sample("superres", runs["superres"], tmp_path / "e4", "--input", str(low), "--negative-prompt", "x",
               "--scale", "2")


@pytest.mark.parametrize("flag,value", [("--scale", "nan"), ("--scale", "inf"), ("--scale", "-1"),
                                        ("--eta", "nan"), ("--eta", "-inf"), ("--rescale", "nan")])
def test_non_finite_numbers_refused(runs, tmp_path, capsys, flag, value):
    low = _png(tmp_path / "low.png", shapes_picture(4))
    code = main(["superres", "--run", str(runs["superres"]), "--input", str(low), "--outdir", str(tmp_path / "o"),
                 *STEPS, f"{flag}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sample: error: ") and flag in err[0]
    assert not (tmp_path / "o").exists()


def test_strength_nan_refused(tmp_path, capsys):
    image = _png(tmp_path / "x.png", shapes_picture(16))
    code = main(["img2img", "--ckpt", "unused.ckpt", "--config", "unused.yaml", "--init-img", str(image),
                 "--strength", "nan"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sample: error: --strength must be a finite number")


def test_log_images_and_sample_of_a_concat_model_at_scale_one(runs):
    """The old crash: SpatialRescaler's null needed the input; sample() at scale 1 and 2 now work."""
    from ldm.cli.load_model import load_model

    model = load_model(run=str(runs["mask2img"]), device="cpu").model
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    one = model.sample(mask, steps=2, x_T=x_T)
    guided = model.sample(mask, steps=2, x_T=x_T, guidance_scale=2.0)
    null = model.null_conditioning(2, raw=mask)
    assert one.shape == (2, 3, 16, 16) and torch.equal(null, torch.zeros(2, 1, 4, 4))
    assert not torch.allclose(one, guided)
    cond = model.get_learned_conditioning(mask)
    explicit = model.sample(None, conditioning=cond, null_conditioning=null, steps=2, x_T=x_T, guidance_scale=2.0)
    assert torch.allclose(explicit, guided, atol=1e-6)
    with pytest.raises(ValueError, match="null_conditioning"):
        model.sample(None, conditioning=cond, steps=2, guidance_scale=2.0)


def test_hybrid_inpaint_cli_with_prompt_and_negative_prompt(runs, tmp_path):
    image = _png(tmp_path / "x.png", shapes_picture(16))
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[4:12, 4:12] = 255
    mask = _png(tmp_path / "m.png", hole)
    args = ["--image", str(image), "--mask", str(mask), "--n_samples", "1", "--no-paste", "--scale", "3"]
    with pytest.raises(SampleError, match="--prompt"):
        sample("inpaint", runs["inpaint_text"], tmp_path / "e", *args)
    plain = sample("inpaint", runs["inpaint_text"], tmp_path / "a", *args, "--prompt", "a red square")
    negative = sample("inpaint", runs["inpaint_text"], tmp_path / "b", *args, "--prompt", "a red square",
                      "--negative-prompt", "a blue circle")
    assert plain.settings["conditions"] == ["a red square"]
    assert plain.settings["concat_inputs"] == ["inpaint_mask", "masked_image"]
    assert "caption -> crossattn" in plain.settings["model"]["conditioning"]
    assert negative.settings["negative_prompt"] == "a blue circle"
    assert Image.open(plain.files[0]).size == (16, 16)
