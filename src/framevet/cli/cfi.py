"""``framevet cfi``: validate DWARF CFI (``.eh_frame``/``.debug_frame``) against the code."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import add_report_options, emit, exit_code, known_findings
from framevet.cli.parallel import collect
from framevet.pipeline import Options


def add_parser(sub: Any) -> None:
    f = sub.add_parser("cfi", help="validate DWARF CFI (.eh_frame/.debug_frame) against the code")
    f.add_argument("files", nargs="+", metavar="FILE")
    add_report_options(f, explain=True)
    f.add_argument("--cflags", default="")
    f.add_argument("-j", "--jobs", type=int, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--confirm", action="store_true",
                   help="run each function with a cfi-mismatch under emulation and unwind "
                        "with the CFI at the instructions in question")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = "cfi+confirm" if args.confirm else "cfi"
    findings, errors = collect(args, job, Options(explain=args.explain))
    findings, suppressed = known_findings(findings, args, args.files)
    emit(findings, args, len(args.files), suppressed, errors)
    return exit_code(findings, errors, args.fail_on, args)
