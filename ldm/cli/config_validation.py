"""Catch misspelled and mistyped config entries before anything is built.

OmegaConf merges whatever the files say, so ``modle:``, ``model.base_learnig_rate`` or
``lightnin.trainer.max_steps`` used to train silently with the defaults. :func:`validate_config` checks
the merged config of ``main.py`` where the schema is known:

* top-level sections (``model``, ``data``, ``lightning``; ``extra`` is free-form, ``quickstart`` is read
  by ``ldm.cli.quickstart``), the keys of ``model`` and of ``lightning``;
* ``lightning.trainer`` against the arguments of ``lightning.Trainer`` (plus the Lightning 1 names the
  CLI translates);
* the ``params`` of every ``{target, params}`` node whose target is a class of this package, against the
  parameters of its ``__init__`` — read from the signature, so parameters added later count at once.
  A class whose ``**kwargs`` end in a framework base (``**unused`` that the class rejects itself, or
  passed on to ``super()``) is checked through its whole chain of ``__init__`` methods;
* value types where the annotation is a plain ``int``/``float``/``bool``/``str`` (or an optional or a
  union of them): ``batch_size: four`` or ``model_channels: '32'`` are errors.

Each problem names the key, the file (or the command line) that set it and the closest valid name
(:func:`difflib.get_close_matches`). ``--allow-unknown-keys`` turns the unknown-key errors into notes
(for deliberate extras); free-form entries can also live under a top-level ``extra:`` section.
"""
from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.util import ConfigError, modern_target

TOP_LEVEL = ("model", "data", "lightning", "extra", "quickstart")
MODEL_KEYS = ("target", "params", "base_learning_rate")
LIGHTNING_KEYS = ("trainer", "callbacks", "logger", "modelcheckpoint", "find_unused_parameters")


class Sources:
    """Which file (or the command line) set a key path: the last one that holds it."""

    def __init__(self, files: Sequence[str], dotlist: Sequence[str]) -> None:
        from ldm.config_files import load_config_file, quote_format_templates

        self.layers: list[tuple[str, Any]] = [(str(f), OmegaConf.to_container(load_config_file(f), resolve=False))
                                              for f in files]
        if dotlist:
            try:
                overrides = OmegaConf.from_dotlist([quote_format_templates(item) for item in dotlist])
                self.layers.append(("the command line", OmegaConf.to_container(overrides, resolve=False)))
            except Exception:  # reported by merge_configs
                pass

    def of(self, path: Sequence[str]) -> str:
        for name, layer in reversed(self.layers):
            node = layer
            for key in path:
                if not isinstance(node, Mapping) or key not in node:
                    node = _MISSING
                    break
                node = node[key]
            if node is not _MISSING:
                return name
        return "the merged config"


_MISSING = object()


def _closest(key: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def init_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters ``cls(...)`` accepts, following ``**kwargs`` up the MRO; None if unknowable."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if not klass.__module__.startswith("ldm."):
            return found  # a framework base (nn.Module, LightningModule, Dataset, object) takes no config keys
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            return None
        for name, param in signature.parameters.items():
            if name != "self" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                found.setdefault(name, param)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            return found
    return found


def _hints(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or not klass.__module__.startswith("ldm."):
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except Exception:  # an annotation that does not evaluate: no type checks from it
            pass
    return hints


def _matches(value: Any, hint: Any) -> bool | None:
    """True / False when ``value`` fits / does not fit a simple ``hint``; None when it cannot tell."""
    if value is None or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        results = [_matches(value, arg) for arg in typing.get_args(hint)]
        return True if any(r is True for r in results) else (None if None in results else False)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    return None


def _unresolved(value: Any) -> bool:
    """An interpolation left as text (``${...}`` that cannot resolve yet, e.g. a data root given later):
    its type is checked when the node is built."""
    return isinstance(value, str) and "${" in value


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


class _Checker:
    def __init__(self, sources: Sources, allow_unknown: bool) -> None:
        self.sources = sources
        self.allow_unknown = allow_unknown
        self.notes: list[str] = []

    def unknown(self, path: Sequence[str], valid: Iterable[str], what: str) -> None:
        dotted = ".".join(path)
        message = (f"{dotted} (in {self.sources.of(path)}): unknown {what}{_closest(path[-1], valid)} "
                   "(deliberate extras: --allow-unknown-keys, or a top-level 'extra:' section)")
        if not self.allow_unknown:
            raise ConfigError(message)
        self.notes.append(message)

    def wrong_type(self, path: Sequence[str], value: Any, hint: Any) -> None:
        raise ConfigError(f"{'.'.join(path)} = {value!r} (in {self.sources.of(path)}): expected "
                          f"{_describe(hint)}, got {type(value).__name__}")

    def keys(self, node: Any, path: Sequence[str], valid: Sequence[str], what: str) -> None:
        if isinstance(node, Mapping):
            for key in node:
                if str(key) not in valid:
                    self.unknown([*path, str(key)], valid, what)

    def target_nodes(self, node: Any, path: list[str]) -> None:
        """Check every ``{target, params}`` node below ``node`` whose class is ours."""
        if isinstance(node, Mapping):
            if isinstance(node.get("target"), str) and isinstance(node.get("params", {}) or {}, Mapping):
                self.params(node, path)
            for key, value in node.items():
                self.target_nodes(value, [*path, str(key)])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self.target_nodes(value, [*path, str(i)])

    def params(self, node: Mapping, path: list[str]) -> None:
        path_name = modern_target(node["target"])
        if not path_name.startswith("ldm."):
            return
        from ldm.util import resolve_target

        try:
            cls = resolve_target(node["target"])
        except ConfigError:
            return  # reported with its node when the object is built
        if not isinstance(cls, type):
            return
        accepted = init_parameters(cls)
        if accepted is None:
            return
        hints = _hints(cls)
        for key, value in (node.get("params") or {}).items():
            key = str(key)
            where = [*path, "params", key]
            if key not in accepted:
                self.unknown(where, accepted, f"parameter of {node['target']}")
            elif key in hints and not _unresolved(value) and _matches(value, hints[key]) is False:
                self.wrong_type(where, value, hints[key])

    def trainer(self, trainer: Any) -> None:
        if not isinstance(trainer, Mapping):
            return
        import lightning as L

        from ldm.cli.config import _CLI_OWNED, _REMOVED_TRAINER_KEYS, _RENAMED_TRAINER_KEYS

        signature = inspect.signature(L.Trainer.__init__)
        valid = [n for n in signature.parameters if n != "self"]
        legacy = set(_RENAMED_TRAINER_KEYS) | set(_REMOVED_TRAINER_KEYS) | set(_CLI_OWNED) | {"gpus"}
        try:
            hints = typing.get_type_hints(L.Trainer.__init__)
        except Exception:
            hints = {}
        for key, value in trainer.items():
            key = str(key)
            where = ["lightning", "trainer", key]
            if key in legacy:
                continue
            if key not in valid:
                self.unknown(where, valid, "Lightning Trainer argument")
            elif key in hints and not _unresolved(value) and _matches(value, hints[key]) is False:
                self.wrong_type(where, value, hints[key])


def validate_config(config: DictConfig, files: Sequence[str], dotlist: Sequence[str] = (), *,
                    allow_unknown: bool = False) -> list[str]:
    """Raise :class:`ConfigError` for the first problem; return notes for tolerated unknown keys."""
    checker = _Checker(Sources(files, dotlist), allow_unknown)
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation that does not resolve: OmegaConf reports it when the node is used
        plain = OmegaConf.to_container(config, resolve=False)
    checker.keys(plain, [], TOP_LEVEL, "top-level section")
    checker.keys(plain.get("model"), ["model"], MODEL_KEYS, "key of the model section")
    checker.keys(plain.get("lightning"), ["lightning"], LIGHTNING_KEYS, "key of the lightning section")
    for section in ("model", "data"):
        checker.target_nodes(plain.get(section), [section])
    lightning = plain.get("lightning")
    if isinstance(lightning, Mapping):
        checker.trainer(lightning.get("trainer"))
    return checker.notes
