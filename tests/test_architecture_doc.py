"""docs/architecture.md stays true to the code: every ``ldm/`` file it names exists, every module of
``ldm/`` is named in it (a package's ``__init__.py`` counts as named when the file or its folder
``ldm/<package>/`` is), and its dependency-rule table is the ``RULES`` of tests/test_import_rules.py."""
from __future__ import annotations

import re
from pathlib import Path

from test_import_rules import LIGHTNING, RULES

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()
FILES = set(re.findall(r"`(ldm/[\w/]+\.py)`", DOC))
FOLDERS = set(re.findall(r"`(ldm/[\w/]+/)`", DOC))


def test_every_named_file_exists():
    assert len(FILES) > 50
    missing = sorted(path for path in FILES | FOLDERS if not (REPO / path).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_module_is_named():
    unnamed = []
    for path in sorted((REPO / "ldm").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        folder = name[: -len("__init__.py")]
        if name in FILES or (path.name == "__init__.py" and (folder in FOLDERS or folder == "ldm/")):
            continue
        unnamed.append(name)
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"


def test_rule_table_is_the_rules_of_the_import_test():
    section = DOC.split("## Dependency rules", 1)[1]
    rows = re.findall(r"^\| `([\w.]+)` \| (.+) \|$", section, flags=re.M)
    table = {unit: set() if allowed.strip() == "nothing" else set(re.findall(r"`([\w.]+)`", allowed))
             for unit, allowed in rows}
    assert table == {unit: {"lightning" if u == LIGHTNING else u for u in allowed} for unit, allowed in RULES.items()}
