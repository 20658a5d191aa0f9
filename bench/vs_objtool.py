#!/usr/bin/env python3
"""Time ``framevet check`` against objtool 6.1 over the same kernel modules, in one run.

    python3 bench/vs_objtool.py [--objtool PATH] [--repeat N] [MODULE.ko ...]

Defaults: every module of ../shared/corpus/kmod, objtool from Debian's
linux-kbuild-6.1 (``apt-get download linux-kbuild-6.1 && dpkg -x *.deb /opt/kbuild``).
objtool runs as ``objtool --orc --module`` on fresh copies (it rewrites its input),
one process per module as kbuild runs it; framevet runs once over all modules
with one worker per core, as a user runs it.  Each side is timed ``--repeat``
times and the best wall time is kept.  Also prints framevet's instructions per
second and the phase profile of one single-process pass (what dominates).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(ROOT, "..", "shared", "corpus", "kmod")
OBJTOOL_CANDIDATES = [
    "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool",
    "/usr/lib/linux-kbuild-6.1/tools/objtool/objtool",
]


def find_objtool(path: str | None) -> str:
    for cand in [path] if path else OBJTOOL_CANDIDATES:
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("objtool 6.1 not found: apt-get download linux-kbuild-6.1 && "
             "dpkg -x linux-kbuild-6.1_*.deb /opt/kbuild (or pass --objtool PATH)")


def time_objtool(objtool: str, modules: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="fv-bench-") as tmp:
        copies = []
        for m in modules:
            dst = os.path.join(tmp, os.path.basename(m))
            shutil.copyfile(m, dst)
            copies.append(dst)
        t = time.perf_counter()
        for c in copies:
            subprocess.run([objtool, "--orc", "--module", c], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - t


def time_framevet(modules: list[str]) -> float:
    exe = shutil.which("framevet") or sys.executable
    cmd = [exe] if exe != sys.executable else [sys.executable, "-m", "framevet.cli"]
    t = time.perf_counter()
    proc = subprocess.run([*cmd, "check", "--no-progress", "--fail-on", "never", *modules],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"framevet failed ({proc.returncode}): {proc.stderr.strip()}")
    return dt


def profile(modules: list[str]) -> tuple[int, dict[str, float]]:
    """One single-process pass with phase timings; returns (instructions, seconds by phase)."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from framevet import rules
    from framevet.cfg.build import build
    from framevet.cfg.declarations import read_hints
    from framevet.findings import SymbolIndex
    from framevet.load import load_path
    from framevet.pipeline import Options
    from framevet.stack.walker import Walker, WalkOptions

    phases = dict.fromkeys(("load", "decode+cfg", "cfa walk", "rules"), 0.0)
    insns = 0
    registry = rules.all_rules()
    from framevet.pipeline import Context

    for m in modules:
        t0 = time.perf_counter()
        obj = load_path(m)[0]
        t1 = time.perf_counter()
        prog = build(obj.elf)
        hints = read_hints(obj, prog)
        t2 = time.perf_counter()
        res = Walker(prog, WalkOptions(all_warnings=True), hints.cfi, hints.save,
                     hints.restore).run()
        t3 = time.perf_counter()
        ctx = Context(obj, prog, res, Options(), SymbolIndex(obj.elf), hints)
        for r in registry.values():
            if r.check is not None and "kernel" in r.profiles:
                list(r.check(ctx))
        t4 = time.perf_counter()
        insns += len(prog.off)
        for k, a, b in (("load", t0, t1), ("decode+cfg", t1, t2), ("cfa walk", t2, t3),
                        ("rules", t3, t4)):
            phases[k] += b - a
    return insns, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*")
    ap.add_argument("--objtool")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    modules = args.modules or sorted(glob.glob(os.path.join(CORPUS, "*.ko")))
    if not modules:
        sys.exit(f"no modules given and none in {CORPUS}")
    objtool = find_objtool(args.objtool)
    ot = min(time_objtool(objtool, modules) for _ in range(args.repeat))
    fv = min(time_framevet(modules) for _ in range(args.repeat))
    insns, phases = profile(modules)
    total = sum(phases.values())
    print(f"modules:            {len(modules)}")
    print(f"instructions:       {insns}")
    print(f"objtool 6.1 --orc --module (best of {args.repeat}): {ot:.3f} s")
    print(f"framevet check, {os.cpu_count()} workers (best of {args.repeat}): {fv:.3f} s")
    print(f"ratio framevet/objtool: {fv / ot:.2f}x")
    print(f"framevet throughput: {insns / fv:,.0f} instructions/s (wall, incl. start-up)")
    print("single-process phase profile:")
    for k, v in phases.items():
        print(f"  {k:<11} {v:6.3f} s  {100 * v / total:5.1f} %")


if __name__ == "__main__":
    main()
