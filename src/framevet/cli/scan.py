"""``framevet scan``: check and cfi over packages, archives and directories, into SQLite."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

from framevet.cli.check import OBJTOOL_SWITCHES
from framevet.cli.check import options as check_options
from framevet.cli.common import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, FAIL_ON
from framevet.load.errors import InputError
from framevet.scan.dashboard import write_dashboard
from framevet.scan.pools import DaskPool, LocalPool, Pool
from framevet.scan.runner import Limits, Scanner
from framevet.scan.store import Store
from framevet.scan.work import CHECKS, ScanOptions, version

DEFAULT_DB = "framevet-scan.sqlite"


def add_parser(sub: Any) -> None:
    s = sub.add_parser("scan", help="check whole packages, archives and directories into an "
                       "SQLite database (incremental, resumable, parallel or on Dask)")
    s.add_argument("paths", nargs="*", metavar="PATH",
                   help="ELF file, .a, directory (walked recursively) or Debian .deb")
    s.add_argument("--db", default=DEFAULT_DB, help=f"the result database (default {DEFAULT_DB})")
    s.add_argument("--checks", default=",".join(CHECKS),
                   help="which analyses: check, cfi or both (default check,cfi)")
    s.add_argument("--profile", choices=("auto", "kernel", "user"), default="auto",
                   help="auto (default): kernel for objects the kernel's build made, else user")
    s.add_argument("--hints", metavar="TOML", help="declarations for every file")
    g = s.add_argument_group("check's switches")
    for name in OBJTOOL_SWITCHES:
        g.add_argument(f"--{name}", action="store_true")
    for name in ("orc", "module", "link", "objtool-only"):
        g.add_argument(f"--{name}", action="store_true")
    g.add_argument("--disable", default="", help="comma-separated rule ids to leave out")
    s.add_argument("-j", "--jobs", type=int, default=0,
                   help="files analysed at once on this machine (default: cores)")
    s.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="send the work to this dask.distributed scheduler")
    s.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one file may take (default 600; 0: no limit)")
    s.add_argument("--memory-limit", type=int, default=4096, metavar="MIB",
                   help="memory one file's analysis may add, in MiB (default 4096; 0: none)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--report", metavar="HTML_FILE",
                   help="write a dashboard of the database's latest scan to this file")
    s.add_argument("--fail-on", choices=FAIL_ON, default="warning",
                   help="exit 1 when a finding is at least this severe (default: warning)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run)


def scan_options(args: argparse.Namespace) -> ScanOptions:
    checks = tuple(c for c in CHECKS if c in args.checks.split(","))
    unknown = set(args.checks.split(",")) - set(CHECKS)
    if unknown or not checks:
        raise InputError("--checks", f"expected check and/or cfi, got {args.checks!r}")
    opts = check_options(argparse.Namespace(**{**vars(args), "profile": "user"}))
    return ScanOptions(checks, args.profile, replace(opts, profile="user"))


def run(args: argparse.Namespace) -> int:
    if not args.paths and not args.report:
        raise InputError("framevet scan", "give a PATH to scan, or --report HTML_FILE")
    if not args.paths and not os.path.isfile(args.db):
        raise InputError(args.db, "no such scan database")
    store = Store(args.db)
    try:
        result: dict[str, Any] = {}
        if args.paths:
            result = _scan(args, store)
        if args.report:
            write_dashboard(store.db, args.report)
    finally:
        store.close()
    if not result:
        return EXIT_CLEAN
    if result["errors"]:
        return EXIT_ERROR
    if args.fail_on != "never" and result["at_fail_on"]:
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _scan(args: argparse.Namespace, store: Store) -> dict[str, Any]:
    options = scan_options(args)
    limits = Limits(args.timeout, args.memory_limit)
    pool: Pool
    if args.scheduler:
        pool = DaskPool(args.scheduler, options, limits.timeout, limits.memory_mb)
    else:
        from framevet import rules

        rules.all_rules()   # loaded once here, so every forked child has it
        pool = LocalPool(args.jobs, options, limits.timeout, limits.memory_mb)
    bar = _Bar() if not args.no_progress and sys.stderr.isatty() else None
    start = time.perf_counter()
    try:
        tally = Scanner(store, pool, options, limits, bar.update if bar else None).run(
            args.paths, version())
    finally:
        if bar:
            bar.close()
    result = store.summary(tally)
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["database"] = args.db
    severities = store.db.execute("SELECT severity, count(*) FROM file_findings "
                                  "WHERE scan_id = ? GROUP BY severity", (store.scan_id,))
    result["by_severity"] = dict(severities.fetchall())
    result["at_fail_on"] = _at_least(result["by_severity"], args.fail_on)
    _print(result, args.format)
    return result


def _at_least(by_severity: dict[str, int], fail_on: str) -> int:
    """How many findings are at least as severe as ``fail_on`` ("note" < "warning" < "error")."""
    if fail_on == "never":
        return 0
    rank = FAIL_ON.index(fail_on)
    return sum(n for sev, n in by_severity.items()
               if FAIL_ON.index(sev if sev in FAIL_ON[:3] else "warning") >= rank)


def _print(result: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"framevet scan: {result['files']} files ({result['analysed']} analysed, "
          f"{result['cached']} cached) in {result['seconds']:.1f} s: "
          f"{result['findings']} findings, {result['errors']} errors")
    width = max((len(r) for r in result["by_rule"]), default=0)
    for rule, n in result["by_rule"].items():
        print(f"  {rule:<{width}}  {n}")
    print(f"results in {result['database']} (scan {result['scan']})")


class _Bar:
    """Files done, findings so far and the rate, on stderr; redrawn at most 10 times a
    second from the scanning loop (no refresh thread: the scan forks its workers)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True, auto_refresh=False)
        self.task = self.progress.add_task("scanning")
        self.progress.start()
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, files: int, findings: int, analysed: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        rate = analysed / max(now - self.start, 1e-6)
        self.progress.update(self.task, description=(
            f"{files} files, {findings} findings, {analysed} analysed ({rate:.1f}/s)"))
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()
