"""Running one job (``check`` or ``cfi``) over many inputs, one worker per core."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from framevet import rules
from framevet.cfg.declarations import read_declarations
from framevet.findings import Finding, Location
from framevet.load import load_path
from framevet.load.errors import InputError
from framevet.load.inputs import archive_size
from framevet.pipeline import Options, add_explanations, analyse
from framevet.stack.coverage import coverage
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import check_cfi

ARCHIVE_CHUNK = 48


def findings_of(task: str | tuple[str, range], job: str, options: Options | None,
                cflags: list[str]) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Worker: the findings (as JSON dicts) of every object in a task -- a path, or
    (archive path, member numbers) -- for ``job`` "check" or "cfi"; or an error line.
    The third item says which functions each declarations file names that the task's
    objects define (``{"declared": {path: [names]}}``)."""
    path, members = (task, None) if isinstance(task, str) else task
    declared: dict[str, list[str]] = {}
    listings: list[list[Any]] = []
    try:
        out: list[dict[str, Any]] = []
        for obj in load_path(path, cflags, members):
            if job in ("cfi", "cfi+confirm"):
                table = cfa_table(obj.elf, "user")
                found: Iterable[Finding] = check_cfi(obj, table)
                if job == "cfi+confirm":
                    # imported here: unicorn and Bochs are slow to load, and only --confirm
                    # needs them
                    from framevet.emulate.confirm import confirm

                    found = list(found)
                    confirm(obj, found)
                if options is not None and options.explain:
                    found = list(found)
                    add_explanations(found, table.prog, table.result)
            else:
                assert options is not None
                ctx = analyse(obj, options)
                found = ctx.findings
                if options.stats:
                    reach = coverage(ctx.prog, ctx.result.visited)
                    print(f"{obj.display}: stats: {reach.text()}", file=sys.stderr, flush=True)
                listings.extend([obj.display, name, rows] for name, rows in ctx.listings.items())
                if ctx.hints.source is not None:
                    # a table names a function, a label or an address ("0x...")
                    names = {f.name for f in ctx.prog.functions}
                    names |= {s.name for s in obj.elf.symbols if s.defined}
                    declared.setdefault(ctx.hints.source, []).extend(
                        n for n in ctx.hints.functions if n in names or n.startswith("0x"))
            out.extend(asdict(f) for f in found)
        return out, "", {"declared": declared, "listings": listings}
    except InputError as exc:
        return [], str(exc), {}
    except Exception as exc:  # noqa: BLE001 - one line per file, never a traceback
        return [], f"{path}: error: internal error ({type(exc).__name__}: {exc})", {}


@dataclass
class Collected:
    """What a run over many inputs found: unpacks as ``findings, errors``."""

    findings: list[Finding]
    errors: int
    #: declarations file -> the functions it names that some input defines
    declared: dict[str, set[str]] = field(default_factory=dict)
    #: (input, function) -> annotated disassembly, for the HTML report
    listings: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.findings, self.errors))


def collect(args: argparse.Namespace, job: str, options: Options | None) -> Collected:
    """Run ``job`` over every input in parallel: findings in input order, and the error
    count; error lines go to stderr as they are met, and so does a warning for each
    declaration of a function that none of the inputs defines."""
    tasks = split_tasks(args.files, args.jobs)
    rules.all_rules()    # loaded before the workers fork, so they inherit it
    run = Collected([], 0)
    for _task, (packed, err, extra) in run_parallel(tasks, findings_of,
                                                    (job, options, args.cflags.split()),
                                                    args.jobs,
                                                    not (args.no_progress or args.quiet)):
        if err:
            print(err, file=sys.stderr)
            run.errors += 1
        run.findings.extend(unpack(d) for d in packed)
        for file, name, rows in extra.get("listings", ()):
            run.listings[(file, name)] = rows
        for source, names in extra.get("declared", {}).items():
            run.declared.setdefault(source, set()).update(names)
    if not run.errors:
        _unused_declarations(run.declared)
    return run


def _unused_declarations(declared: dict[str, set[str]]) -> None:
    """A declaration no input defines is worth a warning, not an error: one
    framevet.toml may serve a whole tree of objects, checked a few at a time."""
    for source, defined in sorted(declared.items()):
        sc, functions, _ = read_declarations(source)
        for name in sorted(set(functions) - defined, key=sc.line):
            print(f"{source}:{sc.line(name)}: warning: [{name}] declares a function that "
                  "none of the inputs defines", file=sys.stderr)


def unpack(d: dict[str, Any]) -> Finding:
    """A :class:`Finding` from the dict a worker sent back."""
    loc = d.get("location")
    src = d.get("source")
    return Finding(d["file"], d["rule"], d["message"], d["severity"],
                   Location(**loc) if loc else None, tuple(src) if src else None,
                   d.get("details") or {}, d.get("profile"), d.get("column") or 0,
                   tuple(d["follows"]) if d.get("follows") else None)


def split_tasks(paths: list[str], jobs: int) -> list[Any]:
    """Files as tasks; a big archive becomes chunks of members so every core gets work."""
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


def run_parallel(paths: list[Any], work: Callable[..., Any],
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
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as ex:
                futs = {ex.submit(work, p, *extra): i for i, p in enumerate(paths)}
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
        self.p = Progress("framevet", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          transient=True, console=Console(stderr=True))
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
