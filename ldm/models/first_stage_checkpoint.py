"""Loading a trained autoencoder into a model: run directories and an architecture check.

Stage 2 names its autoencoder with ``first_stage_config.params.ckpt_path``. That may be

* a checkpoint file (``.ckpt`` / ``.pt`` / ``.safetensors``; a latent-diffusion checkpoint works
  too: its ``first_stage_model.*`` weights are used), or
* a stage-1 **run directory** (``logs/<run>``): its ``checkpoints/last.ckpt`` is loaded.

Before any weight is copied, the checkpoint's architecture is compared with the module's: the
encoder / decoder / quantiser / (post-)quant-conv weights must have the same names and shapes.
A mismatch (a KL checkpoint for a VQ config, another ``ch_mult`` or ``z_channels``, ...) is a
one-line :class:`~ldm.util.ConfigError` that describes both, e.g.
``checkpoint holds a KL f4 autoencoder (...) but the config's first stage is a VQ f4 autoencoder (...)``.
Loss, EMA and other non-architecture entries are not compared.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ldm.util import ConfigError

ARCHITECTURE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
LDM_PREFIX = "first_stage_model."


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as is; a run directory -> its ``checkpoints/last.ckpt``."""
    given = Path(path)
    if given.is_dir():
        for candidate in (given / "checkpoints" / "last.ckpt", given / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"ckpt_path={given}: a directory without checkpoints/last.ckpt; pass a stage-1 run "
                          "directory (logs/<run>) whose training saved a checkpoint, or a checkpoint file")
    if not given.is_file():
        raise ConfigError(f"ckpt_path={given}: no such file or directory; train stage 1 first and pass its run "
                          "directory (logs/<run>) or a checkpoint file")
    return given


def autoencoder_weights(state_dict: Mapping) -> dict:
    """The autoencoder's entries; a latent-diffusion state dict gives its ``first_stage_model.*``."""
    if not any(key.startswith(ARCHITECTURE_PREFIXES) for key in state_dict) and \
            any(key.startswith(LDM_PREFIX) for key in state_dict):
        return {key[len(LDM_PREFIX):]: value for key, value in state_dict.items() if key.startswith(LDM_PREFIX)}
    return dict(state_dict)


def architecture(state_dict: Mapping, ignore_keys: Iterable[str] = ()) -> dict[str, tuple]:
    """``{name: shape}`` of the weights that define the autoencoder's architecture."""
    ignore = tuple(ignore_keys or ())
    return {key: tuple(value.shape) for key, value in state_dict.items()
            if key.startswith(ARCHITECTURE_PREFIXES) and not (ignore and key.startswith(ignore))
            and hasattr(value, "shape")}


def describe(arch: Mapping[str, tuple]) -> str:
    """A short human description: kind, downsampling factor, widths, latent size, codebook."""
    if not arch:
        return "no autoencoder (no encoder/decoder weights)"
    vq = "quantize.embedding.weight" in arch
    levels = sorted({int(m.group(1)) for key in arch if (m := re.match(r"encoder\.down\.(\d+)\.", key))})
    downsamplings = sum(1 for level in levels if any(k.startswith(f"encoder.down.{level}.downsample.") for k in arch))
    ch = arch.get("encoder.conv_in.weight", (None,))[0]
    widths = [arch.get(f"encoder.down.{level}.block.0.conv1.weight", (None,))[0] for level in levels]
    mult = [w // ch if ch and w else None for w in widths]
    blocks = len({m.group(1) for key in arch if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", key))})
    z = arch.get("post_quant_conv.weight", (None, None))[1]
    embed = arch.get("quant_conv.weight", (None,))[0]
    parts = [f"ch {ch}", f"ch_mult {mult}", f"num_res_blocks {blocks}"]
    if any(".attn." in key for key in arch):
        parts.append("attention")
    if vq:
        parts += [f"embed_dim {embed}", f"n_embed {arch['quantize.embedding.weight'][0]}"]
    else:
        parts.append(f"embed_dim {embed // 2 if embed else None}")
    kind = "VQ" if vq else "KL"
    return f"a {kind} f{2 ** downsamplings} autoencoder ({', '.join(parts)}, z_channels {z})"


def check_architecture(module, state_dict: Mapping, path: str | Path, ignore_keys: Iterable[str] = ()) -> None:
    """Raise a one-line ConfigError unless ``state_dict`` has ``module``'s autoencoder architecture."""
    wanted = architecture(module.state_dict(), ignore_keys)
    found = architecture(state_dict, ignore_keys)
    if wanted == found:
        return
    differing = sorted(set(wanted) ^ set(found)) or sorted(k for k in wanted if wanted[k] != found[k])
    key = differing[0]
    detail = (f"first difference: {key} {found.get(key, 'absent')} in the checkpoint, "
              f"{wanted.get(key, 'absent')} in the model")
    raise ConfigError(
        f"ckpt_path={path}: the checkpoint holds {describe(found)} but the config's first stage "
        f"({type(module).__name__}) is {describe(wanted)} ({detail}); train stage 1 with the autoencoder config "
        "that pairs with this one (docs/custom-data.md) or copy its model.params into first_stage_config.params")
