"""The dependency rules of the ``ldm`` package, checked on every file's imports (also the lazy ones
inside functions), read with :mod:`ast` — no module is imported.

A *unit* is ``ldm.<first name>`` (``ldm.models``, ``ldm.samplers``, ``ldm.util``, ...), except that
:mod:`ldm.data.contracts` (the declared interface between the data and the models) is a unit of its own.
``lightning`` stands for ``lightning`` / ``pytorch_lightning``. Imports inside a unit are free.

Rules (``RULES`` below: a unit may import only the units listed for it):

* ``ldm.diffusion``  — nothing (the Gaussian-diffusion maths);
* ``ldm.samplers``   — ``diffusion`` (samplers know nothing of Lightning, models or the CLI);
* ``ldm.modules``    — ``diffusion``, ``util``, ``checkpoint`` (networks; no Lightning);
* ``ldm.models``     — ``modules``, ``diffusion``, ``samplers`` (public names), ``data.contracts``,
  ``optim``, ``util``, ``checkpoint``, ``lora``, ``distributed``, and Lightning. Never a dataset, a cache,
  a callback or the CLI: what a model needs from those goes through ``ldm.data.contracts``;
* ``ldm.data.contracts`` — nothing;
* ``ldm.data``       — ``data.contracts``, ``util``, and Lightning (never the models);
* ``ldm.callbacks``  — ``checkpoint``, ``util``, and Lightning (they drive a model through Lightning's hooks);
* ``ldm.config_files`` — ``util`` (YAML files -> one merged config);
* ``ldm.model_loading`` — ``config_files``, ``checkpoint``, ``util`` (config + checkpoint -> trained model;
  the CLI, ``convert`` and ``merge-lora`` build on it);
* nothing outside ``ldm.cli`` imports ``ldm.cli`` (``main.py`` does);
* no private name (``_name``) is imported from another unit.

Also here: no file of ``ldm/models`` is over 400 lines (files of one idea each).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ldm"
LIGHTNING = "lightning"
CONTRACTS = "ldm.data.contracts"

RULES = {
    "ldm.diffusion": set(),
    "ldm.samplers": {"ldm.diffusion"},
    "ldm.modules": {"ldm.diffusion", "ldm.util", "ldm.checkpoint"},
    "ldm.models": {"ldm.modules", "ldm.diffusion", "ldm.samplers", CONTRACTS, "ldm.optim", "ldm.util",
                   "ldm.checkpoint", "ldm.lora", "ldm.distributed", LIGHTNING},
    CONTRACTS: set(),
    "ldm.data": {CONTRACTS, "ldm.util", LIGHTNING},
    "ldm.callbacks": {"ldm.checkpoint", "ldm.util", LIGHTNING},
    "ldm.config_files": {"ldm.util"},
    "ldm.model_loading": {"ldm.config_files", "ldm.checkpoint", "ldm.util"},
}


def unit_of(module: str) -> str:
    if module.startswith(("lightning", "pytorch_lightning")):
        return LIGHTNING
    if module == CONTRACTS or module.startswith(CONTRACTS + "."):
        return CONTRACTS
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import of one file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def all_imports():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 50, ROOT
    for path in files:
        importer = unit_of(module_name(path))
        for module, names, line in imports_of(path):
            if module.startswith(("ldm", "lightning", "pytorch_lightning")):
                yield path, importer, module, names, line


def test_units_import_only_what_their_rule_allows():
    broken = []
    for path, importer, module, _, line in all_imports():
        target = unit_of(module)
        if importer in RULES and target != importer and module != "ldm" and target not in RULES[importer]:
            broken.append(f"{path.relative_to(ROOT.parent)}:{line}: {importer} imports {module}")
    assert not broken, "\n".join(broken)


def test_only_the_cli_imports_the_cli():
    broken = [f"{path.relative_to(ROOT.parent)}:{line}: {module}" for path, importer, module, _, line in all_imports()
              if unit_of(module) == "ldm.cli" and importer != "ldm.cli"]
    assert not broken, "\n".join(broken)


def test_no_private_name_crosses_a_unit():
    broken = []
    for path, importer, module, names, line in all_imports():
        for name in names:
            private = name.startswith("_") and not name.startswith("__")
            if private and unit_of(module) != importer:
                broken.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} from {module}")
    assert not broken, "\n".join(broken)


def test_the_checker_sees_a_violation(tmp_path):
    """The parser resolves relative and lazy imports (a rule test that sees nothing passes vacuously)."""
    package = tmp_path / "ldm" / "samplers"
    package.mkdir(parents=True)
    (package / "x.py").write_text("def f():\n    from ..models import ddpm\n    from ldm.cli.sample import _p\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "ldm"
    try:
        found = imports_of(package / "x.py")
    finally:
        ROOT = saved
    assert found == [("ldm.models", ["ddpm"], 2), ("ldm.cli.sample", ["_p"], 3)]
    assert unit_of("ldm.models.ddpm") == "ldm.models" and unit_of("ldm.data.contracts") == CONTRACTS


def test_model_files_are_small():
    """ldm/models holds files of one idea each (the issue's bound: about 400 lines)."""
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "models").glob("*.py")}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
