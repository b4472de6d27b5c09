"""Which ``target:`` strings a config may instantiate.

A config's ``target`` is imported and called, so a config file is code: ``target: os.system`` with
``params: {command: ...}`` would run a shell command. Training from your own ``-b`` files is your
decision; a config that merely sits in a run directory (``sample --run``, ``main.py -r``) or is handed
to ``sample/evaluate/cache_latents --config`` may come from someone else. Those are built in
*restricted* mode:

* the target (after the legacy aliases of :data:`ldm.util.LEGACY_TARGETS`) must lie in this package
  (``ldm``), ``torch``, ``torchvision``, ``lightning`` or a module the user lists (``--allow-target``,
  repeatable, or the comma-separated environment variable ``LDM_ALLOW_TARGETS``);
* outside this package only classes are built (no ``torch.hub.load``-style functions);
* no node may switch on ``trust_checkpoint`` (full unpickling of a checkpoint it names).

Anything else raises :class:`UntrustedTargetError` (a :class:`~ldm.util.ConfigError`: one line, exit
code 2) naming the target *before* its module is imported. ``--trust-config`` lifts the restriction.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ldm.util import ConfigError

TRUSTED_PACKAGES = ("ldm", "torch", "torchvision", "lightning")
ALLOW_ENV = "LDM_ALLOW_TARGETS"
_UNSAFE_PARAMS = ("trust_checkpoint", "unsafe_load")


class UntrustedTargetError(ConfigError):
    """A restricted config names a target outside the allow-list."""


class _Policy:
    def __init__(self, allowed: Iterable[str], source: str) -> None:
        listed = list(allowed) + os.environ.get(ALLOW_ENV, "").split(",")
        self.allowed = tuple(TRUSTED_PACKAGES) + tuple(a.strip().rstrip(".") for a in listed if a.strip())
        self.source = source

    def covers(self, path: str, prefixes: Iterable[str]) -> bool:
        return any(path == p or path.startswith(p + ".") for p in prefixes)

    def refuse(self, what: str) -> UntrustedTargetError:
        return UntrustedTargetError(
            f"{what} in {self.source}: a config from a run directory or --config may only build classes of "
            f"{', '.join(TRUSTED_PACKAGES)} (and modules given with --allow-target MODULE or LDM_ALLOW_TARGETS); "
            "pass --allow-target for that module, or --trust-config if you trust this config")


_policy: ContextVar[_Policy | None] = ContextVar("ldm_config_policy", default=None)


@contextmanager
def restricted_targets(allowed: Iterable[str] = (), source: str = "the config") -> Iterator[None]:
    """Build configs in restricted mode inside this block (see the module docstring)."""
    token = _policy.set(_Policy(allowed, source))
    try:
        yield
    finally:
        _policy.reset(token)


@contextmanager
def trust_policy(trust_config: bool, allowed: Iterable[str] = (), source: str = "the config") -> Iterator[None]:
    """``restricted_targets`` unless ``trust_config`` (the ``--trust-config`` flag)."""
    if trust_config:
        yield
    else:
        with restricted_targets(allowed, source):
            yield


def check_target_path(original: str, path: str) -> None:
    """Before importing: is ``path`` (the modern form of ``original``) allowed?"""
    policy = _policy.get()
    if policy is not None and not policy.covers(path, policy.allowed):
        raise policy.refuse(f"refused config target {original!r}")


def check_built_object(original: str, path: str, obj: Any, params: Mapping) -> None:
    """After importing, before calling: classes only outside ``ldm``; no ``trust_checkpoint``."""
    policy = _policy.get()
    if policy is None:
        return
    if not policy.covers(path, ("ldm",) + policy.allowed[len(TRUSTED_PACKAGES):]) and not isinstance(obj, type):
        raise policy.refuse(f"refused config target {original!r} (not a class)")
    for key in _UNSAFE_PARAMS:
        if params.get(key):
            raise policy.refuse(f"refused {key}: true for {original!r}")


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-config", "--trust_config", dest="trust_config", action="store_true",
                        help="build any target the config names (only for configs you trust)")
    parser.add_argument("--allow-target", "--allow_target", dest="allow_target", action="append", default=[],
                        metavar="MODULE", help="also allow config targets from this module (repeatable)")
