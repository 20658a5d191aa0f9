"""``framevet cfi``: validate DWARF CFI (``.eh_frame``/``.debug_frame``) against the code."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import FAIL_ON, emit, exit_code
from framevet.cli.parallel import collect


def add_parser(sub: Any) -> None:
    f = sub.add_parser("cfi", help="validate DWARF CFI (.eh_frame/.debug_frame) against the code")
    f.add_argument("files", nargs="+", metavar="FILE")
    f.add_argument("--format", choices=("text", "json", "sarif", "html"), default="text")
    f.add_argument("--fail-on", choices=FAIL_ON, default="warning")
    f.add_argument("--cflags", default="")
    f.add_argument("-j", "--jobs", type=int, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    findings, errors = collect(args, "cfi", None)
    emit(findings, args.format, None)
    return exit_code(findings, errors, args.fail_on)
