"""Caption tables for image + caption datasets: JSON, JSON Lines, CSV or TSV.

Accepted layouts (keys are image paths relative to the image root, file names, or file stems):

* JSON object ``{"img_001.jpg": "a photo of ...", ...}``
* JSON list / JSON Lines of records ``{"file": "img_001.jpg", "caption": "..."}``
  (the file column may be called ``file``, ``file_name``, ``filename``, ``image``, ``path``;
  the caption column ``caption``, ``text`` or ``prompt``)
* CSV / TSV with a header naming those columns.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from typing import Any

FILE_COLUMNS = ("file", "file_name", "filename", "image", "path", "image_path")
CAPTION_COLUMNS = ("caption", "text", "prompt")


def _pick(record: dict[str, Any], columns: Iterable[str], what: str, source: str) -> Any:
    for column in columns:
        if column in record:
            return record[column]
    raise ValueError(f"caption table {source}: a record has no {what} column (expected one of {list(columns)}); "
                     f"keys present: {sorted(record)}")


def _from_records(records: Iterable[dict[str, Any]], source: str) -> dict[str, str]:
    table = {}
    for record in records:
        table[str(_pick(record, FILE_COLUMNS, "file", source))] = str(_pick(record, CAPTION_COLUMNS, "caption", source))
    return table


def load_caption_table(path: str | os.PathLike) -> dict[str, str]:
    """Read a caption table into ``{key: caption}``; see the module docstring for the layouts."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption table not found: {path}")
    lower = path.lower()
    with open(path, encoding="utf-8", newline="") as handle:
        if lower.endswith(".jsonl"):
            return _from_records((json.loads(line) for line in handle if line.strip()), path)
        if lower.endswith(".json"):
            data = json.load(handle)
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}
            if isinstance(data, list):
                return _from_records(data, path)
            raise ValueError(f"caption table {path}: expected a JSON object or list, got {type(data).__name__}")
        if lower.endswith((".csv", ".tsv")):
            reader = csv.DictReader(handle, delimiter="\t" if lower.endswith(".tsv") else ",")
            return _from_records(reader, path)
    raise ValueError(f"caption table {path}: unsupported format (use .json, .jsonl, .csv or .tsv)")


def lookup_caption(table: dict[str, str], relpath: str) -> str | None:
    """Find the caption of ``relpath`` by relative path, then file name, then file stem."""
    relpath = relpath.replace(os.sep, "/")
    name = os.path.basename(relpath)
    for key in (relpath, name, os.path.splitext(relpath)[0], os.path.splitext(name)[0]):
        if key in table:
            return table[key]
    return None


def read_sidecar_caption(image_path: str, extension: str = ".txt") -> str | None:
    """The caption stored next to an image (``img_001.jpg`` -> ``img_001.txt``), if there is one."""
    sidecar = os.path.splitext(image_path)[0] + extension
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar, encoding="utf-8") as handle:
        return handle.read().strip()
