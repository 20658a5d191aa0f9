"""``framevet diff``: run two versions of a routine on the same random states."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framevet.cli.common import (
    add_emulator_arguments,
    add_report_options,
    emit,
    exit_code,
    known_findings,
)


def add_parser(sub: Any) -> None:
    d = sub.add_parser("diff", help="run two versions of a routine on the same random states")
    d.add_argument("a", metavar="A", help="FILE:FUNCTION or "
                   "raw:STUB.bin@BASE[+ENTRY][,NAME=ADDR...][,link=FILE...]")
    d.add_argument("b", metavar="B")
    d.add_argument("--args", default=None)
    d.add_argument("--runs", type=int, default=16)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--value", action="append", default=[], metavar="SYMBOL=VALUE",
                   help="initial 8-byte value of an undefined data symbol, on both sides; "
                        "repeatable")
    add_report_options(d)
    d.add_argument("--cflags", default="")
    d.add_argument("--compare", default="abi",
                   help="registers compared: abi (callee-saved + rax/rdx), all, or a list")
    d.add_argument("--profile", choices=("kernel", "user"), default=None)
    add_emulator_arguments(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here: unicorn is slow to load, and only the emulation commands need it
    from framevet.cli.emulation import run_diff_command

    findings = run_diff_command(args)
    findings, suppressed = known_findings(findings, args, [])
    emit(findings, args, 2, suppressed)
    if not findings:
        print(f"framevet: no divergence between {args.a} and {args.b} in {args.runs} runs",
              file=sys.stderr)
    return exit_code(findings, 0, args.fail_on, args)
