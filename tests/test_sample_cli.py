"""The sampling commands (``python -m ldm.cli.sample``) on tiny checkpoints trained here by main.py.

One module-scoped fixture trains three tiny runs with the training CLI (2 optimiser steps each, on
16×16 shapes): a class-conditional and a text-conditional latent model (KL-f4 first stage, 4×4
latents) and an unconditional pixel-space DDPM with learned variances. Every command mode then
runs on them and the files it promises are checked: count, pixel size (also larger than trained),
determinism under a seed, EMA vs trained weights, img2img / inpainting behaviour, and the errors.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.cli.load_model import SampleError
from ldm.cli.sample import main, run

REPO = Path(__file__).resolve().parents[1]
STEPS = ["--steps", "3", "--no-progress"]

# Shrinks the demo configs: 16x16 images, tiny networks, 2 training steps, no validation/images.
SHRINK_LATENT = {
    "model": {"params": {
        "timesteps": 100, "scale_by_std_batches": 1, "image_size": 4, "scheduler_config": None,
        "unet_config": {"params": {"image_size": 4, "model_channels": 32, "channel_mult": [1, 2],
                                   "num_res_blocks": 1, "attention_resolutions": [1], "num_head_channels": 32,
                                   "context_dim": 32}},
        "first_stage_config": {"params": {"ddconfig": {"resolution": 16, "ch": 32, "ch_mult": [1, 2, 2]}}},
    }},
}
COND_STAGE = {
    "class": {"embed_dim": 32},
    "text": {"n_embed": 32, "n_layer": 1, "heads": 2, "dim_head": 16},
}
SHRINK_PIXEL = {
    "model": {"params": {
        "timesteps": 100, "image_size": 16, "scheduler_config": None,
        "unet_config": {"params": {"image_size": 16, "model_channels": 32, "channel_mult": [1, 2],
                                   "num_res_blocks": 1, "attention_resolutions": []}},
    }},
}
SHRINK_DATA = {
    "data": {"params": {"batch_size": 4, "train": {"params": {"size": 16, "length": 8}}, "validation": None}},
    "lightning": {"trainer": {"max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False,
                              "limit_val_batches": 0, "log_every_n_steps": 1},
                  "callbacks": {"image_logger": {"params": {"disabled": True}}}},
}


def _train(root: Path, base: str, name: str, *overrides: dict) -> Path:
    from ldm.cli.train import run as train

    paths = []
    for i, override in enumerate((*overrides, SHRINK_DATA)):
        path = root / f"{name}_override{i}.yaml"
        path.write_text(yaml.safe_dump(override))
        paths.append(str(path))
    result = train(["-b", str(REPO / base), *paths, "-t", "--no-test", "-l", str(root / "logs"), "-n", name,
                    "--logger", "none", "-s", "1"])
    assert (result.logdir / "checkpoints" / "last.ckpt").is_file()
    return result.logdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sample_runs")
    return {
        "class": _train(root, "configs/demo/ldm_class_kl_f4.yaml", "cls", SHRINK_LATENT,
                        {"model": {"params": {"cond_stage_config": {"params": COND_STAGE["class"]}}}}),
        "text": _train(root, "configs/demo/ldm_text_kl_f4.yaml", "txt", SHRINK_LATENT,
                       {"model": {"params": {"cond_stage_config": {"params": COND_STAGE["text"]}}}}),
        "pixel": _train(root, "configs/demo/ldm_pixel_ddpm.yaml", "pix", SHRINK_PIXEL),
    }


def sample(mode: str, run_dir: Path, outdir: Path, *args: str):
    return run([mode, "--run", str(run_dir), "--outdir", str(outdir), *STEPS, *args])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def shapes_image(path: Path, size: int = 16) -> np.ndarray:
    """A test picture: a red square on a blue-grey background, saved as PNG."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[:] = (40, 60, 120)
    array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (220, 30, 30)
    Image.fromarray(array).save(path)
    return array.astype(np.int16)


# ---------------------------------------------------------------------------- class-conditional
def test_class_writes_pngs_grid_and_settings(runs, tmp_path):
    result = sample("class", runs["class"], tmp_path, "--classes", "0,3", "--n_samples", "2", "--batch_size", "3")
    files = sorted((tmp_path / "samples").glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert all(Image.open(f).size == (16, 16) for f in files)  # trained size: 4x4 latents x f4
    # one grid row per class: 2 columns x 2 rows of 16 px with 2 px padding
    assert Image.open(tmp_path / "grid.png").size == (2 + 2 * 18, 2 + 2 * 18)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["mode"] == "class" and settings["ema"] is True and settings["scale"] == 3.0
    assert [entry["condition"] for entry in settings["files"]] == [0, 0, 3, 3]
    assert settings["latent_shape"] == [3, 4, 4] and result.settings == settings
    # two samples of one class start from different noise
    assert not np.array_equal(pixels(files[0]), pixels(files[1]))


def test_all_classes_and_numbering_continues(runs, tmp_path):
    sample("class", runs["class"], tmp_path, "--n_samples", "1", "--steps", "2", "--batch_size", "12")
    assert len(list((tmp_path / "samples").glob("*.png"))) == 12  # 12 shape classes; 12 is the null class
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["conditions"] == list(range(12))
    sample("class", runs["class"], tmp_path, "--classes", "5", "--n_samples", "2", "--steps", "2")
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert names[-2:] == ["00012.png", "00013.png"] and len(names) == 14


def test_seed_determinism_and_batch_size_independence(runs, tmp_path):
    common = ("--classes", "1,2", "--n_samples", "2", "--seed", "7")
    a = sample("class", runs["class"], tmp_path / "a", *common, "--batch_size", "4")
    b = sample("class", runs["class"], tmp_path / "b", *common, "--batch_size", "4")
    c = sample("class", runs["class"], tmp_path / "c", *common, "--batch_size", "3")
    d = sample("class", runs["class"], tmp_path / "d", "--classes", "1,2", "--n_samples", "2", "--seed", "8")
    for fa, fb, fc, fd in zip(a.files, b.files, c.files, d.files):
        assert np.array_equal(pixels(fa), pixels(fb))           # same seed, same images
        assert np.abs(pixels(fa) - pixels(fc)).max() <= 1       # DDIM eta=0: batching does not matter
        assert np.abs(pixels(fa) - pixels(fd)).max() > 10       # another seed, other images


def test_ema_weights_by_default_and_no_ema_differs(runs, tmp_path):
    from ldm.checkpoint import load_state_dict

    state = load_state_dict(runs["class"] / "checkpoints" / "last.ckpt")
    key = "model.diffusion_model.out.2.weight"
    shadow = "model_ema." + key[len("model."):].replace(".", "")
    assert not torch.allclose(state[key], state[shadow])  # 2 steps of EMA warm-up: the average lags
    ema = sample("class", runs["class"], tmp_path / "ema", "--classes", "4", "--n_samples", "2")
    raw = sample("class", runs["class"], tmp_path / "raw", "--classes", "4", "--n_samples", "2", "--no-ema")
    assert ema.settings["ema"] is True and raw.settings["ema"] is False
    assert any(np.abs(pixels(x) - pixels(y)).max() > 0 for x, y in zip(ema.files, raw.files))


def test_convolutional_sampling_at_a_larger_size(runs, tmp_path):
    result = sample("class", runs["class"], tmp_path, "--classes", "2", "--n_samples", "2", "--H", "32", "--W", "48")
    assert [Image.open(f).size for f in result.files] == [(48, 32), (48, 32)]  # PIL size is (W, H)
    assert result.settings["latent_shape"] == [3, 8, 12]
    assert pixels(result.files[0]).std() > 0


@pytest.mark.parametrize("sampler", ["plms", "dpm++", "ddpm"])
def test_other_samplers(runs, tmp_path, sampler):
    result = sample("class", runs["class"], tmp_path, "--classes", "0", "--n_samples", "1", "--sampler", sampler)
    assert len(result.files) == 1 and result.settings["sampler"] == sampler


@pytest.mark.parametrize("sampler,sigmas", [("dpmpp_2m", "karras"), ("euler_a", None), ("heun", "exponential")])
def test_sigma_space_samplers(runs, tmp_path, sampler, sigmas):
    flags = ["--sampler", sampler, *([] if sigmas is None else ["--sigmas", sigmas])]
    result = sample("class", runs["class"], tmp_path, "--classes", "0", "--n_samples", "1", *flags)
    assert len(result.files) == 1 and result.settings["sampler"] == sampler
    assert result.settings["sigmas"] == (sigmas or "karras") and result.settings["steps_run"] == 3
    assert result.settings["eta"] == (1.0 if sampler == "euler_a" else 0.0)  # ancestral samplers default to 1


def test_img2img_and_inpaint_with_a_sigma_sampler(runs, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    original = shapes_image(init)
    flags = ("--sampler", "dpmpp_2m", "--sigmas", "karras", "--steps", "10", "--n_samples", "1")
    near = sample("img2img", runs["pixel"], tmp_path / "near", "--init-img", str(init), "--strength", "0.1", *flags)
    far = sample("img2img", runs["pixel"], tmp_path / "far", "--init-img", str(init), "--strength", "1.0", *flags)
    near_error = np.abs(pixels(near.files[0]) - original).mean()
    assert near_error < 8 and np.abs(pixels(far.files[0]) - original).mean() > 4 * near_error
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[:, :8] = 255
    Image.fromarray(hole).save(mask)
    raw = sample("inpaint", runs["pixel"], tmp_path / "raw", "--init-img", str(init), "--mask", str(mask),
                 "--no-paste", *flags)
    out = pixels(raw.files[0])  # sigma samplers end at sigma = 0: the known half is the input itself
    assert np.abs(out[:, 8:] - original[:, 8:]).mean() < 1 and np.abs(out[:, :8] - original[:, :8]).mean() > 20


# ---------------------------------------------------------------------------- text-to-image
def test_txt2img_prompts_and_prompt_file(runs, tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a green triangle at the top left\n\na blue square\n")
    result = sample("txt2img", runs["text"], tmp_path / "out", "--prompt", "a red circle",
                    "--from-file", str(prompt_file), "--n_samples", "2", "--batch_size", "4", "--scale", "4")
    assert len(result.files) == 6
    settings = json.loads(result.settings_path.read_text())
    assert settings["conditions"] == ["a red circle", "a green triangle at the top left", "a blue square"]
    assert [e["condition"] for e in settings["files"]][::2] == settings["conditions"]
    assert settings["scale"] == 4.0
    assert Image.open(result.grid).size == (2 + 2 * 18, 2 + 3 * 18)  # 3 rows (prompts) x 2 samples


def test_negative_prompt_is_cfg_with_that_caption_as_the_null(runs, tmp_path):
    from ldm.cli.load_model import load_model
    from ldm.cli.sampling_io import to_uint8

    args = ["--prompt", "a red circle", "--n_samples", "2", "--scale", "3"]
    result = sample("txt2img", runs["text"], tmp_path / "neg", *args, "--negative-prompt", "a blue square")
    assert result.settings["negative_prompt"] == "a blue square"
    model = load_model(run=str(runs["text"]), device="cpu").model
    x_T = torch.randn((2, model.channels, 4, 4), generator=torch.Generator().manual_seed(42))
    common = {"steps": 3, "x_T": x_T, "guidance_scale": 3.0}
    prompts = ["a red circle"] * 2
    negative = model.sample(prompts, negative=["a blue square"] * 2, **common)
    null = model.get_learned_conditioning(["a blue square"] * 2)
    explicit = model.sample(None, conditioning=model.get_learned_conditioning(prompts), null_conditioning=null,
                            **common)
    assert torch.allclose(negative, explicit, atol=1e-6)  # a negative prompt = CFG with its condition as the null
    assert not torch.allclose(negative, model.sample(prompts, **common))  # and it changes the output
    written = np.stack([pixels(f) for f in result.files])
    assert np.abs(written - to_uint8(negative).astype(np.int16)).max() <= 1  # the CLI does exactly that
    with pytest.raises(SampleError, match="--scale"):
        sample("txt2img", runs["text"], tmp_path / "s1", "--prompt", "x", "--scale", "1", "--negative-prompt", "y")
    with pytest.raises(SampleError, match="text-conditional"):
        shapes_image(tmp_path / "init.png")
        sample("img2img", runs["class"], tmp_path / "c", "--init-img", str(tmp_path / "init.png"), "--classes", "1",
               "--negative-prompt", "y")


def test_img2img_on_a_text_model(runs, tmp_path):
    init = tmp_path / "init.png"
    shapes_image(init, size=32)  # a 32x32 input: sampled at its own size (convolutionally)
    result = sample("img2img", runs["text"], tmp_path / "out", "--init-img", str(init), "--strength", "0.6",
                    "--prompt", "a red square", "--n_samples", "2")
    assert [Image.open(f).size for f in result.files] == [(32, 32), (32, 32)]
    assert result.settings["strength"] == 0.6 and result.settings["init_img"] == str(init)


# ---------------------------------------------------------------------------- pixel space, unconditional
def test_uncond_pixel_model_with_learned_variance(runs, tmp_path):
    result = sample("uncond", runs["pixel"], tmp_path, "--n_samples", "3", "--sampler", "ddpm")
    assert len(result.files) == 3 and all(Image.open(f).size == (16, 16) for f in result.files)
    assert result.settings["conditions"] == [] and result.settings["scale"] == 1.0
    assert Image.open(result.grid).size == (2 + 2 * 18, 2 + 2 * 18)  # near-square grid for 3 images


def test_uncond_from_checkpoint_and_config(runs, tmp_path):
    run_dir = runs["pixel"]
    config = next((run_dir / "configs").glob("*-project.yaml"))
    result = run(["uncond", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--config", str(config),
                  "--outdir", str(tmp_path), "--n_samples", "1", *STEPS])
    assert len(result.files) == 1 and result.settings["model"]["run"] is None


def test_img2img_low_strength_stays_close_to_the_input(runs, tmp_path):
    init = tmp_path / "init.png"
    original = shapes_image(init)
    near = sample("img2img", runs["pixel"], tmp_path / "near", "--init-img", str(init), "--steps", "10",
                  "--strength", "0.1", "--n_samples", "1")
    far = sample("img2img", runs["pixel"], tmp_path / "far", "--init-img", str(init), "--steps", "10",
                 "--strength", "1.0", "--n_samples", "1")
    # strength 0.1 of 10 steps runs only the last step (from t = 1 of 100, noise std ~0.04): the input
    # changes by a few grey levels; from pure noise (strength 1) the sample has nothing to do with it
    near_error = np.abs(pixels(near.files[0]) - original).mean()
    far_error = np.abs(pixels(far.files[0]) - original).mean()
    assert near_error < 8 and far_error > 4 * near_error


def test_inpaint_keeps_the_known_region(runs, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    original = shapes_image(init)
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[:, :8] = 255  # white = regenerate the left half
    Image.fromarray(hole).save(mask)
    raw = sample("inpaint", runs["pixel"], tmp_path / "raw", "--init-img", str(init), "--mask", str(mask),
                 "--n_samples", "2", "--no-paste")
    for f in raw.files:  # pixel space: the sampler itself keeps the known half, up to the noise of the
        out = pixels(f)  # final level alpha-bar[0] (std ~0.03, a few grey levels)
        assert np.abs(out[:, 8:] - original[:, 8:]).mean() < 6
        assert np.abs(out[:, :8] - original[:, :8]).mean() > 20
    latent = sample("inpaint", runs["class"], tmp_path / "latent", "--init-img", str(init), "--mask", str(mask),
                    "--classes", "3", "--n_samples", "1")
    out = pixels(latent.files[0])
    assert np.array_equal(out[:, 8:], original[:, 8:])  # known pixels pasted back after decoding
    assert np.abs(out[:, :8] - original[:, :8]).mean() > 5
    assert latent.settings["paste_known"] is True and latent.settings["mask"] == str(mask)


# ---------------------------------------------------------------------------- errors
def _error(argv: list[str]) -> str:
    with pytest.raises(SampleError) as info:
        run(argv + STEPS)
    return str(info.value)


def test_errors_for_missing_model_files(runs, tmp_path):
    assert "does not exist" in _error(["uncond", "--run", str(tmp_path / "nope")])
    empty_run = tmp_path / "run_without_ckpt"
    shutil.copytree(runs["pixel"] / "configs", empty_run / "configs")
    assert "checkpoint not found" in _error(["uncond", "--run", str(empty_run)])
    assert "needs --config" in _error(["uncond", "--ckpt", str(runs["pixel"] / "checkpoints" / "last.ckpt")])
    assert "no model given" in _error(["uncond"])


def test_errors_for_mode_and_conditioning_mismatch(runs, tmp_path):
    out = ["--outdir", str(tmp_path)]
    message = _error(["txt2img", "--run", str(runs["class"]), "--prompt", "a red circle", *out])
    assert "class-conditional" in message and "'class' mode" in message
    picture = str(shapes_image_path(tmp_path))
    assert "--classes" in _error(["img2img", "--run", str(runs["class"]), "--init-img", picture,
                                  "--prompt", "a red circle", *out])
    assert "unconditional" in _error(["uncond", "--run", str(runs["class"]), *out])
    assert "'txt2img' mode" in _error(["class", "--run", str(runs["text"]), *out])
    assert "needs --prompt" in _error(["txt2img", "--run", str(runs["text"]), *out])
    assert "guidance needs a conditional model" in _error(["uncond", "--run", str(runs["pixel"]), "--scale", "3", *out])
    assert not list(tmp_path.glob("samples/*.png"))


def shapes_image_path(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    shapes_image(path)
    return path


def test_errors_for_bad_values(runs, tmp_path):
    out = ["--outdir", str(tmp_path)]
    message = _error(["class", "--run", str(runs["class"]), "--classes", "12", *out])
    assert "out of range" in message and "0..11" in message and "null" in message
    assert "out of range" in _error(["class", "--run", str(runs["class"]), "--classes", "3,99", *out])
    assert "--classes" in _error(["class", "--run", str(runs["class"]), "--classes", "red", *out])
    assert "multiple of 8" in _error(["class", "--run", str(runs["class"]), "--classes", "1", "--H", "18", *out])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    assert "cannot read" in _error(["img2img", "--run", str(runs["pixel"]), "--init-img", str(broken), *out])
    assert "not found" in _error(["img2img", "--run", str(runs["pixel"]), "--init-img", str(tmp_path / "x.png"), *out])
    assert "--strength" in _error(["img2img", "--run", str(runs["pixel"]), "--init-img",
                                   str(shapes_image_path(tmp_path)), "--strength", "1.5", *out])


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_refuses_a_checkpoint_that_runs_code(runs, tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    config = next((runs["pixel"] / "configs").glob("*-project.yaml"))
    assert "refused" in _error(["uncond", "--ckpt", str(evil), "--config", str(config), "--outdir", str(tmp_path)])
    assert "pickled code ran" not in capsys.readouterr().out


def test_main_reports_one_line_and_exit_code_2(runs, tmp_path, capsys):
    code = main(["class", "--run", str(runs["class"]), "--classes", "40", "--outdir", str(tmp_path), *STEPS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sample: error: class index 40 is out of range")


def test_device_choice(monkeypatch):
    from ldm.cli.load_model import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(SampleError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(SampleError, match="MPS"):
        pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


@pytest.mark.slow
def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "ldm.cli.sample", "inpaint", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flag in ("--init-img", "--mask", "--steps", "--eta", "--scale", "--seed", "--n_samples", "--batch_size",
                 "--H", "--W", "--sampler", "--no-ema", "--run", "--ckpt", "--device"):
        assert flag in done.stdout
