"""State-dict key dumps of the original checkpoints (``tests/fixtures/*_keys.tsv``: ``key<TAB>shape``)."""
from __future__ import annotations

import ast
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the dump ``tests/fixtures/<name>``."""
    out = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(ast.literal_eval(shape))
    return out
