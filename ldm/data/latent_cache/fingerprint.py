"""Fingerprints of a first stage and of a checkpoint file: the latent cache records both so a
reader can refuse latents from another first stage."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ldm.data.latent_cache.format import HASH_EXCLUDED_PREFIXES


def state_dict_sha256(state: nn.Module | Mapping[str, torch.Tensor],
                      exclude_prefixes: Iterable[str] = HASH_EXCLUDED_PREFIXES) -> str:
    """sha256 over the sorted key names and, for each, the tensor's dtype, shape and raw bytes.

    ``loss.*`` keys (the autoencoder's training loss) are left out: they do not change ``E(x)``,
    and a first stage built for inference replaces that loss by an identity.
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    exclude = tuple(exclude_prefixes)
    digest = hashlib.sha256()
    for key in sorted(state):
        if exclude and key.startswith(exclude):
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(key.encode("utf-8"))
        digest.update(f"{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
