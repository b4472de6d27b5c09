"""Conditioners registered by name, so configs and code can pick one without an import path."""
from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[str, type] = {}


def register_conditioner(*names: str) -> Callable[[type], type]:
    """Class decorator: register a conditioner under ``names`` and its class name."""

    def decorate(cls: type) -> type:
        for name in (*names, cls.__name__):
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"conditioner name {name!r} is already taken by {_REGISTRY[name].__name__}")
            _REGISTRY[name] = cls
        return cls

    return decorate


def get_conditioner(name: str) -> type:
    """The conditioner class registered under ``name``."""
    import ldm.modules.conditioners  # noqa: F401  (registers the built-in conditioners)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown conditioner {name!r}; registered: {sorted(_REGISTRY)}") from None


def build_conditioner(name: str, **params):
    """Instantiate the conditioner registered under ``name`` with ``params``."""
    return get_conditioner(name)(**params)


def list_conditioners() -> list[str]:
    import ldm.modules.conditioners  # noqa: F401

    return sorted(_REGISTRY)
