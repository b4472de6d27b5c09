"""Latent cache: encode a dataset once with the frozen first stage, then train ``LatentDiffusion``
from the stored latents with no encoder in the step (LDM Sec. 3.2: ``z = E(x)`` is fixed once the
first stage is trained, so it can be computed ahead of time).

Per sample the cache keeps the first stage's latent *moments* (``latent_moments`` of
``docs/architecture.md``), so training still draws ``z = mean + std * eps`` every time it sees the
sample (the KL posterior sample of LDM Sec. 3.1 / Eq. (25)'s regulariser):

* KL (``AutoencoderKL``): posterior mean and std;
* VQ (``VQModelInterface``): the pre-quantisation latent, std zero (not stored);
* identity: the pixels, std zero (not stored);

together with the sample's conditioning inputs (``class_label``, ``caption``, ``mask``,
``LR_image``, ...: every key but the image).

Layout of a cache directory::

    manifest.json                     what, how and from which first stage (written last)
    latents-000000.safetensors ...    shards: ``latent_mean`` [N,C,h,w], ``latent_std`` (stochastic
                                      first stages only), ``source_index`` [N], ``flipped`` [N],
                                      ``cond.<name>`` tensors; strings and other JSON values in the
                                      shard metadata (``extras``: one dict per row)

Shards are safetensors (no pickle). The manifest records the first stage's config, the sha256 of its
state dict (:func:`state_dict_sha256`), the checkpoint file's sha256, the preprocessing (dataset
target/params, image size), the latent shape and the flip mode; :class:`LatentCacheDataset` refuses
a first stage whose hash differs (:class:`LatentCacheMismatchError`).

Horizontal flips: ``flip="both"`` stores every sample twice (as is, and mirrored; spatial
conditioning tensors are mirrored too, captions are not), so training keeps the random-flip
augmentation by picking an orientation per draw; ``flip="off"`` stores one orientation and the
augmentation is off.

The package, one idea a module: :mod:`~ldm.data.latent_cache.format` (names, keys, errors),
:mod:`~ldm.data.latent_cache.fingerprint` (state-dict and file hashes),
:mod:`~ldm.data.latent_cache.writer` (shards and manifest), :mod:`~ldm.data.latent_cache.encode`
(the encoding driver), :mod:`~ldm.data.latent_cache.reader` (manifest check and dataset) and
:mod:`~ldm.data.latent_cache.batch` (cached batches in a training step). Every public name is
importable from ``ldm.data.latent_cache`` (configs use ``ldm.data.latent_cache.LatentCacheDataset``).
"""
from ldm.data.latent_cache.batch import cached_moments, has_cached_latents, sample_cached_latent
from ldm.data.latent_cache.encode import encode_dataset
from ldm.data.latent_cache.fingerprint import file_sha256, state_dict_sha256
from ldm.data.latent_cache.format import (
    COND_PREFIX,
    FLIP_MODES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH_EXCLUDED_PREFIXES,
    MANIFEST_NAME,
    MEAN_KEY,
    SHARD_PATTERN,
    STD_KEY,
    LatentCacheError,
    LatentCacheMismatchError,
)
from ldm.data.latent_cache.reader import LatentCacheDataset, read_manifest
from ldm.data.latent_cache.writer import LatentCacheWriter

__all__ = [
    "COND_PREFIX", "FLIP_MODES", "FORMAT_NAME", "FORMAT_VERSION", "HASH_EXCLUDED_PREFIXES", "MANIFEST_NAME", "MEAN_KEY",
    "SHARD_PATTERN", "STD_KEY", "LatentCacheDataset", "LatentCacheError", "LatentCacheMismatchError",
    "LatentCacheWriter", "cached_moments", "encode_dataset", "file_sha256", "has_cached_latents", "read_manifest",
    "sample_cached_latent", "state_dict_sha256",
]
