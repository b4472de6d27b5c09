"""The latent cache's on-disk format: names, keys, version and errors (see :mod:`ldm.data.latent_cache`)."""
from __future__ import annotations

from ldm.data.contracts import LATENT_MEAN_KEY, LATENT_STD_KEY

FORMAT_NAME = "ldm-latent-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "latents-{:06d}.safetensors"

MEAN_KEY = LATENT_MEAN_KEY  # the batch keys are the declared contract of ldm.data.contracts
STD_KEY = LATENT_STD_KEY
COND_PREFIX = "cond."
FLIP_MODES = ("off", "both")
# keys a first stage's state dict may hold that never affect encoding (the training loss: LPIPS, discriminator)
HASH_EXCLUDED_PREFIXES = ("loss.",)


class LatentCacheError(RuntimeError):
    """A latent cache is missing, incomplete or malformed."""


class LatentCacheMismatchError(LatentCacheError):
    """The cache was encoded by a different first stage than the one in use."""
