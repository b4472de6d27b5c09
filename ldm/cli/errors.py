"""How a command reports bad input: one line ``<prog>: error: <message>`` on stderr and exit code 2
(the project's rule for every CLI; tracebacks are for bugs)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE_ERROR = 2


def error_line(err: BaseException, prog: str = "") -> str:
    """``err`` as one line (white space folded), prefixed ``<prog>: error:``."""
    message = " ".join(str(err).split())
    return f"{prog}: error: {message}" if prog else f"error: {message}"


def run_reporting_errors(run: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None,
                         errors: tuple[type[BaseException], ...], prog: str = "") -> int:
    """``run(argv)``; exit code 0, or 2 with :func:`error_line` on stderr for one of ``errors``."""
    try:
        run(argv)
    except errors as err:
        print(error_line(err, prog), file=sys.stderr)
        return USAGE_ERROR
    return 0
