"""What every command shares: exit codes, the shared options, writing a report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framevet.report.formats import render

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
_SEVERITY_RANK = {"note": 0, "warning": 1, "error": 2}
FAIL_ON = ("note", "warning", "error", "never")


def add_common(p: argparse.ArgumentParser) -> None:
    """--profile, --hints and --cflags, as ``check`` and ``orc`` take them."""
    p.add_argument("--profile", choices=("kernel", "user"), default="kernel")
    p.add_argument("--hints", metavar="TOML", help="declarations (default: framevet.toml beside "
                   "the input)")
    p.add_argument("--cflags", default="", help="extra flags for assembling .S inputs")


def emit(findings: list[Any], fmt: str, output: str | None) -> None:
    """Render ``findings`` in ``fmt`` to ``output`` (a path) or stdout."""
    text = render(findings, fmt)
    if output:
        with open(output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def exit_code(findings: list[Any], errors: int, fail_on: str) -> int:
    """2 after an input error, 1 for a finding at ``fail_on`` or worse, else 0."""
    if errors:
        return EXIT_ERROR
    if fail_on == "never":
        return EXIT_CLEAN
    rank = _SEVERITY_RANK[fail_on]
    if any(_SEVERITY_RANK.get(f.severity, 1) >= rank for f in findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN
