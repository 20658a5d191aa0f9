"""Command line: ``framevet check|orc|cfa|cfi|abi|diff|rules``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from framevet import __version__
from framevet.errors import InputError

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
_SEVERITY_RANK = {"note": 0, "warning": 1, "error": 2}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_CLEAN
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        where = getattr(args, "file", None) or " ".join(getattr(args, "files", []) or [])
        print(f"{where or 'framevet'}: error: internal error ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="framevet", description="Verify stack-frame and register discipline of x86-64 "
        "machine code: objtool-compatible checks and ORC, DWARF CFI validation, emulation.")
    p.add_argument("--version", action="version", version=f"framevet {__version__}")
    sub = p.add_subparsers(dest="command")

    c = sub.add_parser("check", help="validate stack frames and registers (objtool + more)")
    c.add_argument("files", nargs="+", metavar="FILE", help=".o/.ko/.a/.so/executable or .S")
    _objtool_switches(c)
    c.add_argument("--format", choices=("text", "objtool", "json", "sarif", "html"),
                   default="text")
    c.add_argument("-o", "--output", help="write the report here instead of stdout")
    c.add_argument("--fail-on", choices=("note", "warning", "error", "never"), default="warning",
                   help="exit 1 when a finding is at least this severe (default: warning)")
    c.add_argument("--disable", default="", help="comma-separated rule ids to leave out")
    c.add_argument("--objtool-only", action="store_true",
                   help="only objtool 6.1's checks, stopping each function at its first "
                        "warning exactly as objtool does")
    c.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: cores)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_check)

    o = sub.add_parser("orc", help="generate kernel ORC unwind data like objtool --orc")
    o.add_argument("file", metavar="FILE")
    o.add_argument("--dump", action="store_true", help="print it as objtool --dump=orc does")
    o.add_argument("-o", "--output", metavar="OUT", help="write FILE plus ORC sections to OUT")
    o.add_argument("--in-place", action="store_true", help="rewrite FILE (atomically)")
    o.add_argument("--read", action="store_true",
                   help="print the ORC sections FILE already has (objtool --dump=orc)")
    _common(o)
    o.set_defaults(func=cmd_orc)

    a = sub.add_parser("cfa", help="print framevet's per-address CFA table (DWARF terms)")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--profile", choices=("kernel", "user"), default="user")
    a.add_argument("--hints", metavar="TOML")
    a.add_argument("--cflags", default="")
    a.set_defaults(func=cmd_cfa)

    f = sub.add_parser("cfi", help="validate DWARF CFI (.eh_frame/.debug_frame) against the code")
    f.add_argument("files", nargs="+", metavar="FILE")
    f.add_argument("--format", choices=("text", "json", "sarif", "html"), default="text")
    f.add_argument("--fail-on", choices=("note", "warning", "error", "never"), default="warning")
    f.add_argument("--cflags", default="")
    f.add_argument("-j", "--jobs", type=int, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_cfi)

    r = sub.add_parser("rules", help="list the rules, or document one")
    r.add_argument("rule", nargs="?")
    r.set_defaults(func=cmd_rules)

    from framevet.cli_emulate import add_emulation_commands

    add_emulation_commands(sub)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=("kernel", "user"), default="kernel")
    p.add_argument("--hints", metavar="TOML", help="declarations (default: framevet.toml beside "
                   "the input)")
    p.add_argument("--cflags", default="", help="extra flags for assembling .S inputs")


def _objtool_switches(p: argparse.ArgumentParser) -> None:
    _common(p)
    g = p.add_argument_group("objtool switches (stack validation and ORC checks are always on)")
    for name in ("sls", "retpoline", "rethunk", "stackval", "uaccess", "noinstr", "ibt", "unret"):
        g.add_argument(f"--{name}", action="store_true")
    g.add_argument("--orc", action="store_true", help="accepted for objtool compatibility")
    g.add_argument("--module", action="store_true", help="accepted for objtool compatibility")
    g.add_argument("--link", action="store_true",
                   help="vmlinux.o-style linked object (implied by --noinstr/--ibt/--unret)")


# -- check ----------------------------------------------------------------------------

def _options(args: argparse.Namespace) -> Any:
    from framevet.analysis import Options

    return Options(
        profile=args.profile, sls=args.sls, retpoline=args.retpoline, rethunk=args.rethunk,
        stackval=args.stackval, uaccess=args.uaccess, noinstr=args.noinstr, ibt=args.ibt,
        unret=args.unret, orc=args.orc, link=args.link or args.noinstr or args.ibt or args.unret,
        disabled=frozenset(x for x in args.disable.split(",") if x),
        all_warnings=not args.objtool_only, hints_file=args.hints,
        objtool_only=args.objtool_only, module=args.module)


def findings_of(task: str | tuple[str, range], job: str, options: Any,
                cflags: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Worker: the findings (as JSON dicts) of every object in a task -- a path, or
    (archive path, member numbers) -- for ``job`` "check" or "cfi"; or an error line."""
    from framevet.load import load_path

    path, members = (task, None) if isinstance(task, str) else task
    try:
        out: list[dict[str, Any]] = []
        for obj in load_path(path, cflags, members):
            if job == "cfi":
                from framevet.cficheck import check_cfi

                found: Iterable[Any] = check_cfi(obj)
            else:
                from framevet.analysis import analyse

                found = analyse(obj, options).findings
            out.extend(_pack(f) for f in found)
        return out, ""
    except InputError as exc:
        return [], str(exc)
    except Exception as exc:  # noqa: BLE001 - one line per file, never a traceback
        return [], f"{path}: error: internal error ({type(exc).__name__}: {exc})"


def collect(args: argparse.Namespace, job: str, options: Any) -> tuple[list[Any], int]:
    """Run ``job`` over every input in parallel: (findings in input order, error count);
    error lines go to stderr as they are met."""
    tasks = split_tasks(args.files, args.jobs)
    _preload()
    findings: list[Any] = []
    errors = 0
    for _task, (packed, err) in run_parallel(tasks, findings_of,
                                             (job, options, args.cflags.split()),
                                             args.jobs, not args.no_progress):
        if err:
            print(err, file=sys.stderr)
            errors += 1
        findings.extend(_unpack(d) for d in packed)
    return findings, errors


def _pack(f: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(f)


def _unpack(d: dict[str, Any]) -> Any:
    from framevet.report.findings import Finding, Location

    loc = d.get("location")
    src = d.get("source")
    return Finding(d["file"], d["rule"], d["message"], d["severity"],
                   Location(**loc) if loc else None, tuple(src) if src else None,
                   d.get("details") or {})


ARCHIVE_CHUNK = 48


def split_tasks(paths: list[str], jobs: int) -> list[Any]:
    """Files as tasks; a big archive becomes chunks of members so every core gets work."""
    from framevet.load.inputs import archive_size

    if (jobs or os.cpu_count() or 1) <= 1:
        return list(paths)
    tasks: list[Any] = []
    for p in paths:
        n = archive_size(p)
        if n > ARCHIVE_CHUNK:
            tasks.extend((p, range(i, min(i + ARCHIVE_CHUNK, n)))
                         for i in range(0, n, ARCHIVE_CHUNK))
        else:
            tasks.append(p)
    return tasks


def run_parallel(paths: list[Any], work: Callable[..., tuple[list[dict[str, Any]], str]],
                 extra: tuple[Any, ...], jobs: int, progress: bool) -> Iterable[tuple[Any, Any]]:
    """(task, (findings, error)) for every task, in input order; one worker per core."""
    jobs = jobs or os.cpu_count() or 1
    jobs = min(jobs, len(paths))
    bar = _progress(len(paths)) if progress else None
    results: list[Any] = [None] * len(paths)
    try:
        if jobs <= 1:
            for i, p in enumerate(paths):
                results[i] = work(p, *extra)
                if bar:
                    bar.advance()
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as ex:
                futs = {ex.submit(work, p, *extra): i for i, p in enumerate(paths)}
                from concurrent.futures import as_completed

                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    if bar:
                        bar.advance()
    finally:
        if bar:
            bar.close()
    return zip(paths, results, strict=True)


class _Bar:
    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.p = Progress("framevet", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          transient=True, console=__import__("rich.console").console.Console(
                              stderr=True))
        self.p.start()
        self.task = self.p.add_task("files", total=total)

    def advance(self) -> None:
        self.p.advance(self.task)

    def close(self) -> None:
        self.p.stop()


def _progress(total: int) -> _Bar | None:
    if total < 2 or not sys.stderr.isatty():
        return None
    return _Bar(total)


def _preload() -> None:
    """Import the pipeline before the workers fork, so they inherit it."""
    from framevet import analysis, rules  # noqa: F401

    rules.all_rules()


def cmd_check(args: argparse.Namespace) -> int:
    findings, errors = collect(args, "check", _options(args))
    _emit(findings, args.format, getattr(args, "output", None))
    return _exit(findings, errors, args.fail_on)


def _emit(findings: list[Any], fmt: str, output: str | None) -> None:
    from framevet.report.formats import render

    text = render(findings, fmt)
    if output:
        with open(output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _exit(findings: list[Any], errors: int, fail_on: str) -> int:
    if errors:
        return EXIT_ERROR
    if fail_on == "never":
        return EXIT_CLEAN
    rank = _SEVERITY_RANK[fail_on]
    if any(_SEVERITY_RANK.get(f.severity, 1) >= rank for f in findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


# -- orc ------------------------------------------------------------------------------

def cmd_orc(args: argparse.Namespace) -> int:
    from framevet.analysis import Options, analyse
    from framevet.load import load_path
    from framevet.orc import dump_text, generate

    if not (args.dump or args.output or args.in_place or args.read):
        raise InputError(args.file, "nothing to do: give --dump, --read, -o OUT or --in-place")
    objs = load_path(args.file, args.cflags.split())
    if len(objs) != 1:
        raise InputError(args.file, "orc works on one object, not an archive")
    obj = objs[0]
    if args.read:
        from framevet.orcread import dump_existing

        sys.stdout.write(dump_existing(obj.elf))
        return EXIT_CLEAN
    ctx = analyse(obj, Options(profile=args.profile, all_warnings=False, hints_file=args.hints,
                               objtool_only=True, orc_only=True))
    rows = generate(ctx.prog, ctx.result)
    if not rows and _orc_refused(ctx):
        return EXIT_FINDINGS
    if args.dump:
        sys.stdout.write(dump_text(ctx.prog, rows))
    if args.output or args.in_place:
        from framevet.elfwrite import orc_object, write_atomically

        data = orc_object(obj.elf, rows)
        target = args.file if args.in_place else args.output
        if not args.in_place and os.path.abspath(target) == os.path.abspath(args.file):
            raise InputError(args.file, "refusing to overwrite the input; use --in-place")
        write_atomically(target, data)
    return EXIT_CLEAN


def _orc_refused(ctx: Any) -> bool:
    """Say why no ORC was generated, as objtool would (it abandons the file)."""
    from framevet.orc import already_has_orc, unknown_cfa_base

    prog = ctx.prog
    reason = None
    if prog.aborted is not None:
        p = prog.aborted
        reason = ctx.finding_at(p.sec, p.off, p.rule, p.message)
    else:
        bad = unknown_cfa_base(prog, ctx.result)
        if bad is not None:
            g, base = bad
            reason = ctx.finding(g, "unknown-cfa-base-reg", f"unknown CFA base reg {base}")
        elif already_has_orc(prog):
            reason = ctx.finding(-1, "output-section-exists",
                                 "file already has .orc_unwind section, skipping")
    if reason is None:
        return False
    print(reason.text() + " (no ORC generated)", file=sys.stderr)
    return True


# -- cfa / cfi ------------------------------------------------------------------------

def cmd_cfa(args: argparse.Namespace) -> int:
    from framevet.cfatable import cfa_table
    from framevet.load import load_path

    for path in args.files:
        for obj in load_path(path, args.cflags.split()):
            table = cfa_table(obj.elf, args.profile)
            if len(args.files) > 1 or "(" in obj.display:
                print(f"{obj.display}:")
            for rows in table.rows.values():
                for row in rows:
                    print(row.text())
    return EXIT_CLEAN


def cmd_cfi(args: argparse.Namespace) -> int:
    findings, errors = collect(args, "cfi", None)
    _emit(findings, args.format, None)
    return _exit(findings, errors, args.fail_on)


# -- rules ----------------------------------------------------------------------------

def cmd_rules(args: argparse.Namespace) -> int:
    from framevet.rules import all_rules

    rules = all_rules()
    if args.rule:
        r = rules.get(args.rule)
        if r is None:
            print(f"framevet: error: unknown rule {args.rule!r} (see `framevet rules`)",
                  file=sys.stderr)
            return EXIT_ERROR
        print(r.doc())
        return EXIT_CLEAN
    width = max(len(k) for k in rules)
    for rid in sorted(rules, key=lambda k: (rules[k].family, k)):
        r = rules[rid]
        print(f"{rid:<{width}}  {r.family:<9} {r.severity:<7} {r.summary}")
    return EXIT_CLEAN


if __name__ == "__main__":
    raise SystemExit(main())
