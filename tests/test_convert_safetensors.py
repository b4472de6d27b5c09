"""``convert to-safetensors``: weights only, EMA baked into model.*, float16, pickled code refused."""
import torch
from safetensors.torch import load_file
from torch import nn

from ldm.cli.convert import main
from ldm.modules.ema import LitEma


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        self.register_buffer("betas", torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64))


def _checkpoint(tmp_path):
    net = _Wrapper()
    ema = LitEma(net.model)
    for _ in range(3):  # the shadows move away from the weights
        with torch.no_grad():
            for p in net.model.parameters():
                p.add_(torch.randn_like(p))
        ema(net.model)
    sd = {**net.state_dict(), **{f"model_ema.{k}": v for k, v in ema.state_dict().items()}}
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": sd, "global_step": 3}, path)
    return sd, ema, path


def test_plain_export_keeps_every_tensor(tmp_path):
    sd, _, path = _checkpoint(tmp_path)
    assert main(["to-safetensors", "--ckpt", str(path), "--out", str(tmp_path / "x.safetensors")]) == 0
    out = load_file(str(tmp_path / "x.safetensors"))
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_ema_is_baked_into_model_weights(tmp_path):
    sd, ema, path = _checkpoint(tmp_path)
    assert main(["to-safetensors", "--ckpt", str(path), "--out", str(tmp_path / "e.safetensors"), "--ema"]) == 0
    out = load_file(str(tmp_path / "e.safetensors"))
    assert sorted(k for k in out if k.startswith("model_ema.")) == ["model_ema.decay", "model_ema.num_updates"]
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        shadow = ema.state_dict()[name.replace(".", "")]
        assert torch.equal(out[f"model.{name}"], shadow)
        assert not torch.equal(out[f"model.{name}"], sd[f"model.{name}"])
    assert torch.equal(out["betas"], sd["betas"])


def test_half_keeps_schedule_precision(tmp_path):
    _, _, path = _checkpoint(tmp_path)
    assert main(["to-safetensors", "--ckpt", str(path), "--out", str(tmp_path / "h.safetensors"), "--half"]) == 0
    out = load_file(str(tmp_path / "h.safetensors"))
    assert out["model.0.weight"].dtype == torch.float16
    assert out["betas"].dtype == torch.float64


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    assert main(["to-safetensors", "--ckpt", str(path), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error: refused to load") and not (tmp_path / "o.safetensors").exists()


def test_ema_without_shadows_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}}, path)
    assert main(["to-safetensors", "--ckpt", str(path), "--out", str(tmp_path / "o.safetensors"), "--ema"]) == 2
    assert "no model_ema" in capsys.readouterr().err
