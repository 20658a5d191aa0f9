"""Emulate glibc's hand-written string and memory functions from ``libc.a``.

``python -m framevet.emulate.survey [LIBC_A] [--runs N] [--seed S] [--only NAME...]``
runs every function of :data:`LIBC` with its argument spec, unwinding at every
instruction with framevet's CFA table and the members' ``.eh_frame``, and
prints one line per function: runs, instructions stepped, instructions
unwound with each table, and findings.  docs/emulate.md quotes its output.

Listed: the SSE2 (baseline), SSSE3, SSE4.2 and ERMS variants (run by unicorn), and with
``--set avx`` the AVX2 and EVEX (AVX-512VL/BW) variants (run by Bochs, see
:mod:`framevet.emulate.bochs`); ``--diff`` also runs each of those against its SSE2
sibling on the same states (``framevet diff``).  Not listed: functions reaching locale
data through TLS (``strcasecmp``: R_X86_64_GOTTPOFF is not linked), the wide
string functions that need a wide-NUL-terminated argument (no spec for it),
and the IFUNC resolvers (they need the dynamic loader's CPU feature data).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from framevet.emulate import FunctionTarget, RunStats, diff, run_abi
from framevet.emulate.findings import Finding
from framevet.load.archive import iter_members
from framevet.load.elf import parse_elf
from framevet.load.object import LoadedObject, read_file

LIBC_A = "/usr/lib/x86_64-linux-gnu/libc.a"
N = 300
#: glibc's cache-size tunables the memmove/memset variants read (typical values)
TUNABLES = {
    "__x86_rep_movsb_threshold": 2048,
    "__x86_rep_stosb_threshold": 2048,
    "__x86_shared_non_temporal_threshold": 0xC0000,
    "__x86_rep_movsb_stop_threshold": 0xC0000,
}
BIG = 5000          # past the 2048-byte rep movsb/stosb thresholds
STR2 = f"ptr:{N}:str,ptr:{N}:copy"
COPY = f"ptr:{BIG},ptr:{BIG}:rand,long:0..{BIG}"
SET = f"ptr:{BIG},int:0..255,long:0..{BIG}"

#: (member, function, --args)
LIBC: list[tuple[str, str, str]] = [
    ("strlen-sse2.o", "__strlen_sse2", f"ptr:{N}:str"),
    ("strnlen-sse2.o", "__strnlen_sse2", f"ptr:{N}:str,long:0..{N}"),
    ("strchr-sse2.o", "__strchr_sse2", f"ptr:{N}:str,int:0..255"),
    ("strchrnul-sse2.o", "__strchrnul_sse2", f"ptr:{N}:str,int:0..255"),
    ("strrchr-sse2.o", "__strrchr_sse2", f"ptr:{N}:str,int:0..255"),
    ("rawmemchr-sse2.o", "__rawmemchr_sse2", f"ptr:{N}:str,int:0..0"),
    ("memchr-sse2.o", "__memchr_sse2", f"ptr:{N}:rand,int:0..255,long:0..{N}"),
    ("memrchr-sse2.o", "__memrchr_sse2", f"ptr:{N}:rand,int:0..255,long:0..{N}"),
    ("strcmp-sse2.o", "__strcmp_sse2", STR2),
    ("strcmp-sse2-unaligned.o", "__strcmp_sse2_unaligned", STR2),
    ("strcmp-sse4_2.o", "__strcmp_sse42", STR2),
    ("strncmp-sse2.o", "__strncmp_sse2", f"{STR2},long:0..{N}"),
    ("strncmp-sse4_2.o", "__strncmp_sse42", f"{STR2},long:0..{N}"),
    ("memcmp-sse2.o", "__memcmp_sse2", f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N}"),
    ("memcmpeq-sse2.o", "__memcmpeq_sse2", f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N}"),
    ("wmemchr-sse2.o", "__wmemchr_sse2", f"ptr:{N}:rand,int,long:0..{N // 4}"),
    ("wmemcmp-sse2.o", "__wmemcmp_sse2", f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N // 4}"),
    ("strcpy-sse2.o", "__strcpy_sse2", f"ptr:{N},ptr:{N}:str"),
    ("stpcpy-sse2.o", "__stpcpy_sse2", f"ptr:{N},ptr:{N}:str"),
    ("strcpy-sse2-unaligned.o", "__strcpy_sse2_unaligned", f"ptr:{N},ptr:{N}:str"),
    ("stpcpy-sse2-unaligned.o", "__stpcpy_sse2_unaligned", f"ptr:{N},ptr:{N}:str"),
    ("memmove-sse2-unaligned-erms.o", "__memmove_sse2_unaligned", COPY),
    ("memmove-sse2-unaligned-erms.o", "__memmove_sse2_unaligned_erms", COPY),
    ("memmove-sse2-unaligned-erms.o", "__mempcpy_sse2_unaligned_erms", COPY),
    ("memset-sse2-unaligned-erms.o", "__memset_sse2_unaligned", SET),
    ("memset-sse2-unaligned-erms.o", "__memset_sse2_unaligned_erms", SET),
    ("memset-sse2-unaligned-erms.o", "__wmemset_sse2_unaligned",
     f"ptr:{BIG},int,long:0..{BIG // 4}"),
    ("memmove-ssse3.o", "__memmove_ssse3", COPY),
    ("memmove-erms.o", "__memmove_erms", COPY),
    ("memset-erms.o", "__memset_erms", SET),
]


#: (member, function, --args, SSE2 sibling member, sibling function): AVX2 and EVEX
LIBC_AVX: list[tuple[str, str, str, str, str]] = [
    (f"{base}-{v}.o", f"__{name}_{v}", args, f"{base}-sse2.o", f"__{name}_sse2")
    for v in ("avx2", "evex")
    for base, name, args in (
        ("strlen", "strlen", f"ptr:{N}:str"),
        ("strnlen", "strnlen", f"ptr:{N}:str,long:0..{N}"),
        ("strchr", "strchr", f"ptr:{N}:str,int:0..255"),
        ("strchrnul", "strchrnul", f"ptr:{N}:str,int:0..255"),
        ("strrchr", "strrchr", f"ptr:{N}:str,int:0..255"),
        ("rawmemchr", "rawmemchr", f"ptr:{N}:str,int:0..0"),
        ("memchr", "memchr", f"ptr:{N}:rand,int:0..255,long:0..{N}"),
        ("memrchr", "memrchr", f"ptr:{N}:rand,int:0..255,long:0..{N}"),
        ("strcmp", "strcmp", STR2),
        ("strncmp", "strncmp", f"{STR2},long:0..{N}"),
        ("memcmpeq", "memcmpeq", f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N}"),
        ("wmemchr", "wmemchr", f"ptr:{N}:rand,int,long:0..{N // 4}"),
        ("strcpy", "strcpy", f"ptr:{N},ptr:{N}:str"),
        ("stpcpy", "stpcpy", f"ptr:{N},ptr:{N}:str"),
    )
] + [
    (f"memcmp-{v}-movbe.o", f"__memcmp_{v}_movbe", f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N}",
     "memcmp-sse2.o", "__memcmp_sse2") for v in ("avx2", "evex")
] + [
    (f"wmemcmp-{v}-movbe.o", f"__wmemcmp_{v}_movbe",
     f"ptr:{N}:rand,ptr:{N}:copy,long:0..{N // 4}", "wmemcmp-sse2.o", "__wmemcmp_sse2")
    for v in ("avx2", "evex")
] + [
    (f"memmove-{v}-unaligned-erms.o", f"__{fn}_{v}_unaligned{e}", COPY,
     "memmove-sse2-unaligned-erms.o", f"__{fn}_sse2_unaligned{e}")
    for v in ("avx", "evex", "avx512") for fn in ("memmove", "mempcpy") for e in ("", "_erms")
] + [
    (f"memset-{v}-unaligned-erms.o", f"__memset_{v}_unaligned{e}", SET,
     "memset-sse2-unaligned-erms.o", f"__memset_sse2_unaligned{e}")
    for v in ("avx2", "evex", "avx512") for e in ("", "_erms")
]

WIDTHS = (8, 8, 7, 8, 8, 7)


@dataclass
class Row:
    function: str
    member: str
    stats: RunStats
    findings: list[Finding]
    seconds: float
    #: diff against the SSE2 sibling: None when not asked, else its findings
    diff: list[Finding] | None = None


def members(path: str, wanted: set[str]) -> dict[str, LoadedObject]:
    data = read_file(path)
    out = {}
    for name, body in iter_members(data, path):
        if name in wanted:
            display = f"{path}({name})"
            out[name] = LoadedObject(parse_elf(body, display), display)
    return out


def survey(path: str = LIBC_A, runs: int = 8, seed: int = 0,
           only: set[str] | None = None, which: str = "sse", against_sse2: bool = False
           ) -> list[Row]:
    """Run the functions of ``which`` ("sse": :data:`LIBC`, "avx": :data:`LIBC_AVX`);
    ``against_sse2`` also diffs each AVX function with its SSE2 sibling."""
    todo = [(m, f, a, "", "") for m, f, a in LIBC] if which == "sse" else list(LIBC_AVX)
    todo = [t for t in todo if only is None or t[1] in only]
    objs = members(path, {t[0] for t in todo} | {t[3] for t in todo if t[3]})
    rows = []
    for member, fn, args, sib_member, sibling in todo:
        if member not in objs:
            continue
        st = RunStats()
        t0 = time.monotonic()
        found = run_abi(objs[member], fn, args, runs=runs, seed=seed, values=TUNABLES, stats=st)
        row = Row(fn, member, st, found, time.monotonic() - t0)
        if against_sse2 and sib_member in objs:
            row.diff = diff(FunctionTarget(path, sibling, loaded=[objs[sib_member]]),
                            FunctionTarget(path, fn, loaded=[objs[member]]), runs, seed,
                            args_spec=args, values=TUNABLES, compare=_compared(fn))
        rows.append(row)
    return rows


def _compared(function: str) -> str | list[str]:
    """__memcmpeq returns zero or *some* non-zero value, so its rax is not compared (its
    memory and the callee-saved registers are); the others return what the ABI says."""
    if function.startswith("__memcmpeq"):
        return ["rsp", "rbx", "rbp", "r12", "r13", "r14", "r15"]
    return "abi"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m framevet.emulate.survey")
    ap.add_argument("archive", nargs="?", default=LIBC_A)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--set", choices=("sse", "avx"), default="sse",
                    help="sse: the SSE2/SSSE3/SSE4.2/ERMS variants; avx: AVX2 and EVEX")
    ap.add_argument("--diff", action="store_true",
                    help="with --set avx: also diff each function with its SSE2 sibling")
    ns = ap.parse_args(argv)
    rows = survey(ns.archive, ns.runs, ns.seed, set(ns.only) if ns.only else None, ns.set,
                  ns.diff)
    fv, dw = "framevet's CFA table", "DWARF CFI (.eh_frame)"
    print(f"{'function':32} {'runs':>4} {'executed':>8} {'rep-iter':>8} {'unwound':>7} "
          f"{'rep-iter':>8} {'framevet':>8} {'dwarf':>7} findings")
    tot = [0, 0, 0, 0, 0, 0]
    bad = 0
    for r in rows:
        u = r.stats.unwind
        cells = [r.stats.instructions, r.stats.rep_iterations, u.steps, u.repeats,
                 u.checked.get(fv, 0), u.checked.get(dw, 0)]
        tot = [a + b for a, b in zip(tot, cells, strict=True)]
        bad += bool(r.findings)
        same = "" if r.diff is None else "  diff: " + (
            "equivalent" if not r.diff else "DIVERGES")
        bad += bool(r.diff)
        print(f"{r.function:32} {r.stats.runs:>4} " + " ".join(
            f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True))
            + f" {len(r.findings)}{same}")
        for f in [*r.findings, *(r.diff or [])]:
            print(f"    {f.text()}")
    print(f"{'total: ' + str(len(rows)) + ' functions':32} {'':>4} " + " ".join(
        f"{c:>{w}}" for c, w in zip(tot, WIDTHS, strict=True)) + f" {bad} with findings")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
