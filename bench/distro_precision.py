#!/usr/bin/env python3
"""framevet's precision on this machine's own user-space binaries.

Runs ``framevet cfi`` and ``framevet check`` (profile chosen by framevet from the
input) on every ELF executable and shared object of ``/usr/bin`` and
``/usr/lib/x86_64-linux-gnu`` (or on a seeded random sample of them, or on the
files named), and prints per file: FDEs, functions, findings by rule, time; then
the totals and the two rates the project is judged by:

* ``cfi-mismatch`` per 10,000 FDEs                      (target: <= 1)
* ``check`` errors and warnings per 1,000 functions     (target: <= 1)

The counts that are the denominators come from binutils, not from framevet:
FDEs and their first rows are parsed from ``readelf -wF``; a *function* is an FDE
whose first row is a function entry (``cfa=rsp+8``, only the return address
saved) or a defined function symbol (``readelf -sW``) that starts where no FDE
does.  FDEs that start inside a frame (GCC's cold partitions, ``.plt``) are
counted as FDEs, not as functions.

Each file is measured in a child process forked from this one (framevet is
imported once), which runs what ``framevet cfi FILE`` and ``framevet check FILE``
run, one load each, and times them; ``-j`` files at a time, at ``nice`` 10.

    python3 bench/distro_precision.py -j 2 --max-mb 8    # 300 files of at most 8 MB, seed 1
    python3 bench/distro_precision.py --all -j 2         # every file
    python3 bench/distro_precision.py --sample 400 --seed 7 --json out.json
    python3 bench/distro_precision.py /usr/bin/tar /usr/bin/ls
    python3 bench/distro_precision.py -j 2 --max-mb 8 --minutes 40   # as many as fit
    python3 bench/distro_precision.py -j 2 --max-mb 8 --state run.jsonl  # resumable

With ``--state FILE`` every measured file is appended to FILE (one JSON line, with
its findings) as soon as it is done; run the same command again after a kill, or
with ``--minutes`` slices, and the files already in FILE (same path, size and
mtime) are not measured again: the summary covers every file of the sample found
in FILE.  ``--summary`` prints the summary of what FILE holds without measuring.

A file that ends in a usage or internal error is listed as such, one that takes
longer than ``--timeout`` as ``TIMEOUT``; both count against the result (exit
status 1).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

DIRS = ("/usr/bin", "/usr/lib/x86_64-linux-gnu")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
CFI_TARGET = 1.0        # cfi-mismatch per 10,000 FDEs
CHECK_TARGET = 1.0      # check errors + warnings per 1,000 functions


@dataclass
class FileResult:
    path: str
    size: int
    fdes: int = 0
    functions: int = 0
    cfi: Counter[str] = field(default_factory=Counter)
    check: Counter[str] = field(default_factory=Counter)
    check_serious: int = 0
    cfi_time: float = 0.0
    check_time: float = 0.0
    profile: str = ""
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    mtime: float = 0.0
    findings: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> FileResult:
        res = cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})
        res.cfi, res.check = Counter(res.cfi), Counter(res.check)
        return res


# ---------------------------------------------------------------------------
# which files
# ---------------------------------------------------------------------------

def elf_files(dirs: tuple[str, ...]) -> list[str]:
    """x86-64 ELF executables and shared objects (not symlinks; one path per inode)."""
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    with open(path, "rb") as fh:
                        head = fh.read(20)
                except OSError:
                    continue
                if (head[:4] != b"\x7fELF" or head[4] != 2 or head[16] not in (2, 3)
                        or int.from_bytes(head[18:20], "little") != 62):
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                out.append(path)
    return out


# ---------------------------------------------------------------------------
# denominators, from binutils
# ---------------------------------------------------------------------------

_CIE_RE = re.compile(r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ CIE")
_FDE_RE = re.compile(r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) "
                     r"pc=([0-9a-f]+)\.\.([0-9a-f]+)")
_HEAD_RE = re.compile(r"^\s+LOC\s+CFA\s")


def _first_row_is_entry(header: list[str], row: list[str]) -> bool:
    """A table row of ``readelf -wF`` says "just called": cfa=rsp+8, and no register
    but the return address saved."""
    if len(row) < 2 or row[1] != "rsp+8":
        return False
    for name, rule in zip(header[2:], row[2:], strict=False):
        if name != "ra" and rule not in ("u", "s"):
            return False
    return True


def count_fdes(path: str) -> tuple[int, set[int], set[int]]:
    """(number of FDEs, starts of FDEs that begin at a function entry, all FDE starts)."""
    text = subprocess.run(["readelf", "-wF", path], capture_output=True, text=True,
                          errors="replace").stdout
    cie_entry: dict[str, bool] = {}
    entries: set[int] = set()
    starts: set[int] = set()
    n = 0
    cur: tuple[str, str, int] | None = None       # (kind, cie, start)
    header: list[str] = []
    first_seen = False

    def close() -> None:
        if cur is not None and cur[0] == "FDE" and not first_seen and cie_entry.get(cur[1]):
            entries.add(cur[2])           # no table: the CIE's initial row holds

    for line in text.splitlines():
        m = _FDE_RE.match(line)
        c = _CIE_RE.match(line) if m is None else None
        if m or c:
            close()
            first_seen = False
            header = []
            if m:
                n += 1
                cur = ("FDE", m.group(2), int(m.group(3), 16))
                starts.add(cur[2])
            else:
                assert c is not None
                cur = ("CIE", c.group(1), 0)
            continue
        if cur is None:
            continue
        if _HEAD_RE.match(line):
            header = line.split()
            continue
        if header and not first_seen and line[:1] in "0123456789abcdef" and line.strip():
            first_seen = True
            entry = _first_row_is_entry(header, line.split())
            if cur[0] == "CIE":
                cie_entry[cur[1]] = entry
            elif entry:
                entries.add(cur[2])
    close()
    return n, entries, starts


def count_symbol_functions(path: str, fde_starts: set[int]) -> int:
    """Defined STT_FUNC symbols (``.symtab`` and ``.dynsym``) at no FDE start, not
    ``.cold`` parts."""
    text = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True,
                          errors="replace").stdout
    addrs: set[int] = set()
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8 or f[3] != "FUNC" or f[6] == "UND" or ".cold" in f[7]:
            continue
        try:
            addrs.add(int(f[1], 16))
        except ValueError:
            continue
    return len(addrs - fde_starts)


# ---------------------------------------------------------------------------
# running framevet
# ---------------------------------------------------------------------------

def _run_commands(path: str, keep: bool, profile: str, conn: Any) -> None:
    """Child process: ``framevet check`` and ``framevet cfi`` on ``path``, as the
    command line runs them (one load each), timed; the result goes to ``conn``."""
    from framevet.load import load_path
    from framevet.pipeline import Options, analyse
    from framevet.unwind.cficheck import check_cfi

    out: dict[str, Any] = {"errors": []}
    for cmd in ("cfi", "check"):
        t0 = time.perf_counter()
        found: list[dict[str, Any]] = []
        try:
            for obj in load_path(path):
                if cmd == "cfi":
                    found += [f.to_json() for f in check_cfi(obj)]
                else:
                    ctx = analyse(obj, Options(profile=profile))
                    found += [f.to_json() for f in ctx.findings]
        except Exception as exc:  # noqa: BLE001 - reported as this file's error
            out["errors"].append(f"{cmd}: {type(exc).__name__}: {exc}")
        out[cmd] = found
        out[f"{cmd}_time"] = time.perf_counter() - t0
    conn.send(out)
    conn.close()


def _preload() -> None:
    """Import the pipeline (and register the rules) before the children fork."""
    from framevet import pipeline, rules  # noqa: F401
    from framevet.unwind import cficheck  # noqa: F401

    rules.all_rules()


def measure(path: str, timeout: float, keep: bool, profile: str) -> FileResult:
    res = FileResult(path, os.path.getsize(path), mtime=os.path.getmtime(path))
    res.fdes, entries, starts = count_fdes(path)
    res.functions = len(entries) + count_symbol_functions(path, starts)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_run_commands, args=(path, keep, profile, send))
    t0 = time.perf_counter()
    child.start()
    send.close()
    got: dict[str, Any] | None = None
    if recv.poll(timeout):
        try:
            got = recv.recv()
        except EOFError:
            got = None
    child.join(1)
    if child.is_alive():
        child.kill()
        child.join()
    if got is None:
        spent = time.perf_counter() - t0
        res.timed_out = spent >= timeout
        res.errors.append(f"timeout: no result after {spent:.0f} s" if res.timed_out
                          else f"no result after {spent:.0f} s (exit {child.exitcode})")
        return res
    res.errors += got["errors"]
    res.cfi_time, res.check_time = got["cfi_time"], got["check_time"]
    for cmd, counter in (("cfi", res.cfi), ("check", res.check)):
        for f in got[cmd]:
            counter[str(f["rule"])] += 1
            if cmd == "check":
                res.profile = res.profile or str(f.get("profile", ""))
                if f["severity"] in ("error", "warning"):
                    res.check_serious += 1
        if keep:
            res.findings[cmd] = got[cmd]
    return res


# ---------------------------------------------------------------------------

def _load_state(path: str | None) -> dict[str, FileResult]:
    """Results a previous run appended to ``path``, by file (a file measured again
    later wins); a torn last line (the run was killed while writing) is ignored."""
    done: dict[str, FileResult] = {}
    if not path or not os.path.exists(path):
        return done
    with open(path) as fh:
        for line in fh:
            try:
                res = FileResult.from_json(json.loads(line))
            except (ValueError, TypeError):
                continue
            done[res.path] = res
    return done


def _still_valid(res: FileResult) -> bool:
    try:
        st = os.stat(res.path)
    except OSError:
        return False
    return st.st_size == res.size and st.st_mtime == res.mtime


def _choose(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.files:
        return list(args.files), f"{len(args.files)} named files"
    pool = elf_files(DIRS)
    if args.max_mb:
        pool = [p for p in pool if os.path.getsize(p) <= args.max_mb * 1e6]
    if args.all or args.sample >= len(pool):
        return pool, f"all {len(pool)} ELF files of {', '.join(DIRS)}"
    # (in the sample's own random order: files measured before --minutes runs
    # out are a random sample too)
    files = random.Random(args.seed).sample(pool, args.sample)
    return files, (f"a sample of {len(files)} of the {len(pool)} ELF files of "
                   f"{', '.join(DIRS)} (seed {args.seed}"
                   + (f", at most {args.max_mb:g} MB" if args.max_mb else "") + ")")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="files to measure (default: the sample)")
    ap.add_argument("--all", action="store_true", help="every ELF file of " + " and ".join(DIRS))
    ap.add_argument("--sample", type=int, default=300, help="files in the sample (default 300)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the sample (default 1)")
    ap.add_argument("--max-mb", type=float, default=0.0,
                    help="leave out files larger than this many MB (default: none)")
    ap.add_argument("-j", type=int, default=1, help="files measured at a time (default 1)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="start no file after this many minutes; summarise those measured")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per file for both commands (default 300); a file that "
                         "takes longer is reported as TIMEOUT")
    ap.add_argument("--profile", choices=("auto", "kernel", "user"), default="auto",
                    help="profile for check (default: auto, chosen from each file)")
    ap.add_argument("--json", metavar="OUT", help="write per-file results and findings")
    ap.add_argument("--state", metavar="FILE",
                    help="append each file's result (JSON lines) here; files already in it "
                         "are not measured again")
    ap.add_argument("--summary", action="store_true",
                    help="with --state: summarise the sample's files found there, measure none")
    args = ap.parse_args(argv)
    os.nice(10)
    _preload()

    files, what = _choose(args)
    done = {p: r for p, r in _load_state(args.state).items() if _still_valid(r)}
    todo = [] if args.summary else [p for p in files if p not in done]
    print(f"framevet precision on {what}"
          + (f"; {len(files) - len(todo)} already in {args.state}" if args.state else ""),
          flush=True)
    t0 = time.perf_counter()
    deadline = t0 + 60 * args.minutes if args.minutes else None
    state = open(args.state, "a") if args.state else None  # noqa: SIM115 - kept open

    def one(path: str) -> FileResult | None:
        if deadline is not None and time.perf_counter() > deadline:
            return None
        return measure(path, args.timeout, bool(args.json or args.state), args.profile)

    with ThreadPoolExecutor(max_workers=max(1, args.j)) as ex:
        for res in ex.map(one, todo):
            if res is not None:
                done[res.path] = res
                _print_row(res)
                if state is not None:
                    state.write(json.dumps(res.__dict__, default=dict) + "\n")
                    state.flush()
    if state is not None:
        state.close()
    results = [done[p] for p in files if p in done]
    if len(results) < len(files):
        print(f"\nnot finished: {len(results)} of the {len(files)} files measured "
              f"(the first ones of the sample's random order)"
              + (f"; run again with --state {args.state} to go on" if args.state else ""))
    wall = time.perf_counter() - t0
    code = _summary(results, wall, args.json)
    return code if len(results) == len(files) else 1


def _print_row(r: FileResult) -> None:
    cfi = ", ".join(f"{k} {v}" for k, v in sorted(r.cfi.items())) or "-"
    chk = ", ".join(f"{k} {v}" for k, v in r.check.most_common()) or "-"
    err = (f"  TIMEOUT {'; '.join(r.errors)}" if r.timed_out
           else f"  ERROR {'; '.join(r.errors)}" if r.errors else "")
    print(f"{r.path}  {r.size / 1e6:.2f} MB  FDEs {r.fdes}  functions {r.functions}  "
          f"cfi [{cfi}] {r.cfi_time:.1f}s  check [{chk}] {r.check_time:.1f}s{err}", flush=True)


def _summary(results: list[FileResult], wall: float, out: str | None) -> int:
    fdes = sum(r.fdes for r in results)
    funcs = sum(r.functions for r in results)
    cfi: Counter[str] = Counter()
    check: Counter[str] = Counter()
    for r in results:
        cfi.update(r.cfi)
        check.update(r.check)
    mism = cfi.get("cfi-mismatch", 0)
    serious = sum(r.check_serious for r in results)
    slowest = max(results, key=lambda r: max(r.cfi_time, r.check_time), default=None)
    failed = [r for r in results if r.errors]
    timeouts = [r for r in results if r.timed_out]
    cfi_rate = 1e4 * mism / fdes if fdes else 0.0
    chk_rate = 1e3 * serious / funcs if funcs else 0.0
    print()
    print(f"files {len(results)}  ({len(failed) - len(timeouts)} with errors, "
          f"{len(timeouts)} timed out: {', '.join(r.path for r in timeouts) or '-'})  "
          f"FDEs {fdes}  functions {funcs}  wall {wall:.0f} s")
    print(f"cfi:   {dict(cfi.most_common())}")
    print(f"check: {dict(check.most_common())}")
    print(f"cfi time {sum(r.cfi_time for r in results):.0f} s, check time "
          f"{sum(r.check_time for r in results):.0f} s" + (
              f"; slowest {slowest.path} (cfi {slowest.cfi_time:.1f} s, check "
              f"{slowest.check_time:.1f} s)" if slowest else ""))
    ok1, ok2 = cfi_rate <= CFI_TARGET, chk_rate <= CHECK_TARGET
    print(f"cfi-mismatch per 10,000 FDEs: {cfi_rate:.2f} ({mism} / {fdes})  "
          f"target <= {CFI_TARGET:g}: {'met' if ok1 else 'NOT met'}")
    print(f"check errors+warnings per 1,000 functions: {chk_rate:.2f} ({serious} / {funcs})  "
          f"target <= {CHECK_TARGET:g}: {'met' if ok2 else 'NOT met'}")
    if out:
        with open(out, "w") as fh:
            json.dump([r.__dict__ for r in results], fh, indent=1, default=dict)
    return 0 if ok1 and ok2 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
