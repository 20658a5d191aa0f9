"""``framevet check``: objtool's stack validation and ORC checks, and framevet's own rules."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import (
    add_common,
    add_report_options,
    emit,
    exit_code,
    known_findings,
    rule_ids,
)
from framevet.cli.parallel import collect
from framevet.pipeline import Options

OBJTOOL_SWITCHES = ("sls", "retpoline", "rethunk", "stackval", "uaccess", "noinstr", "ibt",
                    "unret")


def add_parser(sub: Any) -> None:
    c = sub.add_parser("check", help="validate stack frames and registers (objtool + more)")
    c.add_argument("files", nargs="+", metavar="FILE", help=".o/.ko/.a/.so/executable or .S")
    add_common(c, "auto")
    g = c.add_argument_group("objtool switches (stack validation and ORC checks are always on)")
    for name in OBJTOOL_SWITCHES:
        g.add_argument(f"--{name}", action="store_true")
    g.add_argument("--orc", action="store_true", help="accepted for objtool compatibility")
    g.add_argument("--module", action="store_true", help="accepted for objtool compatibility")
    g.add_argument("--link", action="store_true",
                   help="vmlinux.o-style linked object (implied by --noinstr/--ibt/--unret)")
    add_report_options(c, ("text", "objtool", "json", "sarif", "html"), explain=True)
    c.add_argument("--disable", default="", help="comma-separated rule ids to leave out")
    c.add_argument("--all", action="store_true",
                   help="HTML report: every function's annotated disassembly, not only those "
                        "with findings")
    c.add_argument("--objtool-only", action="store_true",
                   help="only objtool 6.1's checks, stopping each function at its first "
                        "warning exactly as objtool does")
    c.add_argument("--stats", action="store_true",
                   help="also print, per file on stderr, how many instructions the walk "
                        "reached, how many it never reached, how many bytes are not code")
    c.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: cores)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=run)


def options(args: argparse.Namespace) -> Options:
    """The pipeline's options from ``check``'s command line."""
    return Options(
        profile=args.profile, sls=args.sls, retpoline=args.retpoline, rethunk=args.rethunk,
        stackval=args.stackval, uaccess=args.uaccess, noinstr=args.noinstr, ibt=args.ibt,
        unret=args.unret, orc=args.orc, link=args.link or args.noinstr or args.ibt or args.unret,
        disabled=rule_ids(args.disable, "--disable"),
        all_warnings=not args.objtool_only, hints_file=args.hints,
        objtool_only=args.objtool_only, module=args.module,
        stats=getattr(args, "stats", False),
        explain=_html(args) or bool(getattr(args, "explain", False)),
        listings="all" if getattr(args, "all", False) else "findings" if _html(args) else "")


def _html(args: argparse.Namespace) -> bool:
    """(``scan`` reuses these options without a report format of its own.)"""
    return getattr(args, "format", "text") == "html"


def run(args: argparse.Namespace) -> int:
    run = collect(args, "check", options(args))
    findings, suppressed = known_findings(run.findings, args, args.files)
    errors = run.errors
    emit(findings, args, len(args.files), suppressed, errors, run.listings)
    return exit_code(findings, errors, args.fail_on, args)
