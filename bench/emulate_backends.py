#!/usr/bin/env python3
"""Per-instruction cost of emulation under unicorn and under Bochs, with and without
unwinding at every step, measured in one run (issue 14).

    nice python3 bench/emulate_backends.py [ROWS]

Runs ``colsum_sse2`` of tests/fixtures/emulate/lane-sums.S (SSE2, so both emulators can
run it) on a ROWS x 16 matrix and on a 16 x 16 one; the difference between the two, in
CPU seconds over instructions, is the marginal cost of one instruction, without process
start, linking and table building.  Bochs runs in a child process: its CPU time is the
children's (``RUSAGE_CHILDREN``); unicorn runs in this process.  The AVX2 and AVX-512
versions are timed under Bochs too.  Prints microseconds per instruction and the ratios.
"""

from __future__ import annotations

import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from framevet.emulate import Budget, RunStats, run_abi  # noqa: E402
from framevet.load import load_path  # noqa: E402

LANES = os.path.join(ROOT, "tests", "fixtures", "emulate", "lane-sums.S")


def cpu() -> float:
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime


def measure(function: str, emulator: str, rows: int, unwind: bool) -> tuple[int, float]:
    objs = load_path(LANES)
    spec = f"ptr:{64 * rows}:rand,ptr:64,long:{rows}..{rows}"
    stats = RunStats()
    t0 = cpu()
    found = run_abi(objs, function, spec, runs=2, unwind=unwind, stats=stats,
                    emulator=emulator, budget=Budget(insns=5_000_000, seconds=600.0,
                                                     memory=256 << 20))
    dt = cpu() - t0
    if found:
        raise SystemExit(f"{function} under {emulator}: {found[0].text()}")
    return stats.instructions, dt


def marginal(function: str, emulator: str, rows: int, unwind: bool) -> float:
    n_small, t_small = measure(function, emulator, 16, unwind)
    n_big, t_big = measure(function, emulator, rows, unwind)
    return (t_big - t_small) / (n_big - n_small) * 1e6


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    print(f"marginal CPU cost per emulated instruction ({rows} x 16 matrix vs 16 x 16, "
          f"2 runs each)")
    got: dict[tuple[str, str, bool], float] = {}
    for function, emulator in (("colsum_sse2", "unicorn"), ("colsum_sse2", "bochs"),
                               ("colsum_avx2", "bochs"), ("colsum_avx512", "bochs")):
        for unwind in (False, True):
            us = marginal(function, emulator, rows, unwind)
            got[(function, emulator, unwind)] = us
            print(f"  {function:14} {emulator:8} unwind={'yes' if unwind else 'no ':3} "
                  f"{us:7.2f} us/insn")
    for unwind in (False, True):
        u, b = got[("colsum_sse2", "unicorn", unwind)], got[("colsum_sse2", "bochs", unwind)]
        print(f"bochs / unicorn on the same SSE2 code, unwind={'yes' if unwind else 'no'}: "
              f"{b / u:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
