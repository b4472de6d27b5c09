"""``--precision auto`` per hardware (capability checks mocked) and the warning for slow CPU bf16."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import tiny_config, write_yaml  # noqa: E402  (after the sys.path line)
from ldm import precision  # noqa: E402
from ldm.cli.train import run  # noqa: E402


@pytest.fixture
def cpu(monkeypatch):
    """A machine without CUDA whose CPU bf16 support the test sets."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_warned", False)

    def set_native(native: bool):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    return set_native


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device with the given bf16 support and compute capability."""
    def set_gpu(bf16: bool, capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return set_gpu


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32")])
@pytest.mark.parametrize("accelerator", ["cpu", "auto", None])
def test_auto_on_cpu_follows_onednn_bf16_support(cpu, native, expected, accelerator):
    cpu(native)
    assert precision.cpu_has_native_bf16() is native
    assert precision.resolve_precision("auto", accelerator) == expected


@pytest.mark.parametrize("bf16, capability, expected", [
    (True, (9, 0), "bf16-mixed"),   # H100
    (True, (8, 0), "bf16-mixed"),   # A100
    (False, (7, 0), "16-mixed"),    # V100: fp16 tensor cores, no bf16
    (False, (6, 1), "32"),          # Pascal
])
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "auto"])
def test_auto_on_cuda_follows_the_device(gpu, bf16, capability, expected, accelerator):
    gpu(bf16, capability)
    assert precision.resolve_precision("auto", accelerator) == expected


def test_auto_on_a_cuda_machine_asked_for_the_cpu_uses_the_cpu_rule(gpu, monkeypatch):
    gpu(True, (9, 0))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "32"


def test_explicit_precisions_pass_through(cpu):
    cpu(True)
    for value in ("32", 32, "32-true", "16-mixed", "bf16-mixed", "64-true"):
        assert precision.resolve_precision(value, "cpu") == value


def test_explicit_bf16_on_a_cpu_without_native_support_warns_once(cpu):
    cpu(False)
    with pytest.warns(UserWarning, match=r"--precision 32") as record:
        assert precision.warn_if_slow("bf16-mixed", "cpu") is True
        assert precision.warn_if_slow("bf16-mixed", "cpu") is True
    assert len(record) == 1
    assert "50x slower" in str(record[0].message) and "_is_mkldnn_bf16_supported" in str(record[0].message)


@pytest.mark.parametrize("native, value, accelerator", [
    (True, "bf16-mixed", "cpu"),   # native: no warning
    (False, "32", "cpu"),          # not bf16
    (False, "16-mixed", "cpu"),
])
def test_no_warning_where_bf16_is_fast_or_not_used(cpu, native, value, accelerator):
    cpu(native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.warn_if_slow(value, accelerator) is False


def test_no_cpu_warning_for_bf16_on_a_gpu(gpu, monkeypatch):
    gpu(True, (8, 0))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.warn_if_slow("bf16-mixed", "gpu") is False


def test_trainer_kwargs_are_resolved_in_place(cpu):
    cpu(False)
    kwargs = {"accelerator": "cpu", "precision": "auto"}
    assert precision.resolve_trainer_precision(kwargs) == "precision auto -> 32 (cpu)"
    assert kwargs["precision"] == "32"
    assert precision.resolve_trainer_precision({"accelerator": "cpu"}) is None
    assert precision.resolve_trainer_precision({"accelerator": "cpu", "precision": "32-true"}) is None


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_main_py_precision_auto_builds_the_trainer_for_the_hardware(tmp_path, capsys, cpu, native, expected):
    cpu(native)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(max_steps=1))
    result = run(["-b", str(config), "-t", "-l", str(tmp_path / "logs"), "--precision", "auto", "--no-test"])
    assert result.trainer.precision == expected
    assert f"precision auto -> {expected.replace('-true', '')} (cpu)" in capsys.readouterr().out


#: demo configs with a measured fixed precision (docs/quality.md: bf16 no faster for the quick start's tiny UNet)
FIXED_PRECISION = {"quickstart_ldm.yaml": 32}


def test_demo_configs_default_to_auto():
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "configs" / "demo"
    for path in sorted(root.glob("*.yaml")):
        expected = FIXED_PRECISION.get(path.name, "auto")
        assert OmegaConf.load(path).lightning.trainer.precision == expected, path.name


@pytest.mark.parametrize("native, words", [(True, "bf16 native"), (False, "bf16 NOT native")])
def test_benchmark_header_names_the_cpu_and_its_bf16_support(cpu, native, words):
    from benchmarks.common import describe_device
    from ldm.precision import cpu_model

    cpu(native)
    line = describe_device("cpu")
    assert line.startswith(f"CPU {cpu_model()}, {torch.get_num_threads()} threads") and words in line
