"""Run the shell commands of a documentation code block in-process (for the docs' end-to-end tests).

A tiny interpreter for the few shell forms the docs use: ``python main.py ARGS``,
``python -m ldm.cli.<tool> ARGS``, ``VAR=$(ls -d PATTERN | tail -n 1)``, ``$VAR``, globs and ``<timestamp>``
(any run time stamp) in arguments, backslash line continuations and ``#`` comments. Anything else is an error, so a doc
edit that this cannot follow fails the test instead of being skipped. Each command runs in this
process (no interpreter start-up per command) through the tool's own ``main(argv)``.
"""
from __future__ import annotations

import glob
import importlib
import re
import shlex
from collections.abc import Callable
from pathlib import Path

ASSIGN = re.compile(r"^(\w+)=\$\(ls -d (\S+) \| tail -n 1\)$")
TOOLS = {"ldm.cli.sample", "ldm.cli.evaluate", "ldm.cli.cache_latents"}


def code_block(markdown: str, after: str, language: str = "bash") -> str:
    """The first ```language block after the line that contains ``after``."""
    start = markdown.index(after)
    match = re.search(rf"```{language}\n(.*?)```", markdown[start:], re.DOTALL)
    if match is None:
        raise AssertionError(f"no ```{language} block after {after!r}")
    return match.group(1)


def commands(block: str) -> list[str]:
    """Logical lines: continuations joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [re.sub(r"\s+", " ", line) for line in lines if line and not line.startswith("#")]


def _expand(token: str, variables: dict[str, str]) -> list[str]:
    token = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], token)
    token = token.replace("<timestamp>", "*")  # the docs' placeholder for a run directory's time stamp
    key, sep, value = token.partition("=")
    if sep and not key.startswith("-") and any(ch in value for ch in "*?["):  # a config override's value
        return [key + sep + piece for piece in _expand(value, variables)]
    if any(ch in token for ch in "*?["):
        matches = sorted(glob.glob(token))
        if not matches:
            raise AssertionError(f"nothing matches {token}")
        return matches
    return [token]


def run_commands(lines: list[str], adapt: Callable[[str, list[str]], list[str]] | None = None) -> dict[str, str]:
    """Run each line; ``adapt(tool, argv) -> argv`` may shrink a command (fewer steps, ...).
    Returns the shell variables set along the way."""
    variables: dict[str, str] = {}
    for line in lines:
        if line.startswith((". ", "source ")):
            continue  # activating a virtual environment: this process already runs in one
        assigned = ASSIGN.match(line)
        if assigned:
            matches = sorted(glob.glob(assigned.group(2)))
            if not matches:
                raise AssertionError(f"{line}: nothing matches {assigned.group(2)}")
            variables[assigned.group(1)] = matches[-1]
            continue
        tokens = [piece for token in shlex.split(line) for piece in _expand(token, variables)]
        if tokens[:2] == ["python", "main.py"]:
            tool, argv = "main.py", tokens[2:]
        elif tokens[:2] == ["python", "-m"] and tokens[2] in TOOLS:
            tool, argv = tokens[2], tokens[3:]
        else:
            raise AssertionError(f"cannot run {line!r} in-process")
        if adapt is not None:
            argv = adapt(tool, argv)
        if tool == "main.py":
            from ldm.cli.train import main

            main(argv)
        else:
            code = importlib.import_module(tool).main(argv)
            if code not in (0, None):
                raise AssertionError(f"{line!r} exited with {code}")
    return variables


def replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    """``--flag OLD`` -> ``--flag value`` (the flag must be present)."""
    index = argv.index(flag)
    return argv[:index + 1] + [value] + argv[index + 2:]


def write_class_folders(root: Path, classes: int = 3, per_class: int = 12, size: int = 32) -> Path:
    """A generated dataset: root/class_<k>/<i>.png, class k a square of its own colour on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    palette = np.array([[230, 30, 30], [30, 200, 40], [40, 80, 240], [240, 220, 30]], dtype=np.uint8)
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(20, 90, size=(size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, size=2)
            image[y:y + size // 2, x:x + size // 2] = palette[k % len(palette)]
            Image.fromarray(image).save(folder / f"{i}.png")
    return root
