#!/usr/bin/env python3
"""How often framevet's CFA rule agrees with the CFI that glibc ships, per instruction.

For every object of an archive (default: ``/usr/lib/x86_64-linux-gnu/libc.a``),
extracted with ``ar x`` into a temporary directory, this script

* runs ``readelf -SW -sW -rW -wF`` and parses that *text* -- sections, symbols,
  the relocations of ``.eh_frame``/``.debug_frame`` (which say which section an
  FDE of a relocatable object covers) and the decoded per-address CFI table.
  Nothing here uses framevet's own DWARF reader (``framevet.unwind.dwarf``) or its
  comparison code (``framevet.unwind.cficheck``): the oracle is binutils;
* asks framevet for its per-instruction rule (``framevet.unwind.cfatable``, profile
  ``user``);
* compares the CFA rule (base register and offset; a DWARF expression such as
  GCC's DRAP ``DW_OP_breg6 -8; DW_OP_deref`` against framevet's dereferenced
  rule) at every instruction an FDE covers, instruction-weighted.

It prints the agreement, the time, and every remaining disagreement, one per
disagreeing range, classified (see ``KNOWN`` for the verdicts that were reached
by reading the code, and :func:`classify` for the ones recognised mechanically).

    python3 bench/libc_cfa_agree.py [ARCHIVE-OR-OBJECTS...] [-j N] [--regs] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from framevet.load import load_path  # noqa: E402
from framevet.unwind.cfarule import CFA_DEREF, CFA_REG, CfaRule  # noqa: E402
from framevet.unwind.cfatable import cfa_table  # noqa: E402

LIBC = "/usr/lib/x86_64-linux-gnu/libc.a"
DWARF_NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "ra"]
DWARF_NO = {n: i for i, n in enumerate(DWARF_NAMES)}
CALLEE_SAVED_DWARF = (3, 6, 12, 13, 14, 15, 16)

# ---------------------------------------------------------------------------
# readelf text -> FDE tables
# ---------------------------------------------------------------------------

_SEC_RE = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+"
                     r"([0-9a-f]+)\s+[0-9a-f]+\s+([A-Za-z]*)\s")
_SYM_RE = re.compile(r"^\s*(\d+):\s+([0-9a-f]+)\s+(\d+|0x[0-9a-f]+)\s+(\S+)\s+(\S+)\s+\S+\s+"
                     r"(\S+)\s*(.*)$")
_RELSEC_RE = re.compile(r"^Relocation section '([^']+)'")
_REL_RE = re.compile(r"^([0-9a-f]+)\s+([0-9a-f]+)\s+(\S+)\s+([0-9a-f]+)?\s*(.*?)\s*([+-])\s*"
                     r"([0-9a-f]+)$")
_CONTENTS_RE = re.compile(r"^Contents of the (\S+) section")
_CIE_RE = re.compile(r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ CIE")
_FDE_RE = re.compile(r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) "
                     r"pc=([0-9a-f]+)\.\.([0-9a-f]+)")
_TOKEN_RE = re.compile(r"r\d+ \([^)]*\)|\S+")


@dataclass
class Fde:
    frame_section: str
    offset: int
    lo: int
    hi: int
    #: (location, cfa text, {dwarf register: rule text})
    rows: list[tuple[int, str, dict[int, str]]] = field(default_factory=list)


@dataclass
class ReadelfView:
    sections: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)
    symbols: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # value, ndx, name
    #: frame section name -> {relocation offset: (symbol index, addend)}
    frame_relocs: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    fdes: list[Fde] = field(default_factory=list)


def _regno(name: str) -> int:
    return DWARF_NO.get(name, -1)


def parse_readelf(text: str) -> ReadelfView:
    v = ReadelfView()
    lines = text.splitlines()
    relsec = None
    frame_sec = None
    cie_rows: dict[tuple[str, int], list[tuple[int, str, dict[int, str]]]] = {}
    cur: list[tuple[int, str, dict[int, str]]] | None = None
    header: list[int] = []
    for ln in lines:
        m = _RELSEC_RE.match(ln)
        if m:
            name = m.group(1)
            relsec = name[5:] if name.startswith(".rela") else name[4:]
            if relsec not in (".eh_frame", ".debug_frame"):
                relsec = None
            else:
                v.frame_relocs.setdefault(relsec, {})
            frame_sec = None
            continue
        if ln.startswith(("Symbol table", "Section Headers")):
            relsec = None
            continue
        m = _CONTENTS_RE.match(ln)
        if m:
            frame_sec = m.group(1)
            relsec = None
            cur = None
            continue
        if frame_sec is None:
            m = _SEC_RE.match(ln)
            if m and relsec is None:
                v.sections[int(m.group(1))] = (m.group(2), int(m.group(4), 16),
                                               int(m.group(6), 16), m.group(7))
                continue
            m = _SYM_RE.match(ln)
            if m and relsec is None:
                v.symbols[int(m.group(1))] = (int(m.group(2), 16), m.group(6), m.group(7))
                continue
            if relsec is not None:
                m = _REL_RE.match(ln.strip())
                if m:
                    info = int(m.group(2), 16)
                    addend = int(m.group(7), 16) * (-1 if m.group(6) == "-" else 1)
                    v.frame_relocs[relsec][int(m.group(1), 16)] = (info >> 32, addend)
            continue
        # inside "Contents of the .eh_frame section"
        m = _CIE_RE.match(ln)
        if m:
            cur = cie_rows.setdefault((frame_sec, int(m.group(1), 16)), [])
            header = []
            continue
        m = _FDE_RE.match(ln)
        if m:
            fde = Fde(frame_sec, int(m.group(1), 16), int(m.group(3), 16), int(m.group(4), 16))
            v.fdes.append(fde)
            cie = cie_rows.get((frame_sec, int(m.group(2), 16)), [])
            if cie:
                # an FDE without instructions prints no rows: the CIE's state holds
                fde.rows.append((fde.lo, cie[-1][1], dict(cie[-1][2])))
            cur = fde.rows
            header = []
            continue
        s = ln.strip()
        if not s or cur is None or "ZERO terminator" in s:
            continue
        if s.startswith("LOC"):
            header = [_regno(t) for t in s.split()[2:]]
            continue
        toks = _TOKEN_RE.findall(s)
        if len(toks) < 2 or not re.fullmatch(r"[0-9a-f]+", toks[0]):
            continue
        loc = int(toks[0], 16)
        regs = {r: t for r, t in zip(header, toks[2:], strict=False) if r >= 0}
        if len(cur) == 1 and cur[0][0] == loc and v.fdes and cur is v.fdes[-1].rows:
            cur[0] = (loc, toks[1], regs)      # the FDE's own first row replaces the CIE's
        else:
            cur.append((loc, toks[1], regs))
    return v


def fde_section(v: ReadelfView, fde: Fde) -> tuple[int, int] | None:
    """(section index, start offset) of the code an FDE covers."""
    rel = v.frame_relocs.get(fde.frame_section, {}).get(fde.offset + 8)
    if rel is not None:
        symi, addend = rel
        sym = v.symbols.get(symi)
        if sym is None or not sym[1].isdigit():
            return None
        return int(sym[1]), sym[0] + addend
    if v.frame_relocs.get(fde.frame_section):
        return None          # relocatable, but this FDE has no relocation: covers nothing
    for idx, (_, addr, size, flags) in v.sections.items():
        if "X" in flags and addr <= fde.lo < addr + size:
            return idx, fde.lo - addr
    return None


def readelf_cfa(text: str) -> tuple[int, int, int]:
    """CFA text -> (kind, dwarf reg, offset); kind 'exp' is CFA_DEREF-like."""
    if text == "exp":
        return (CFA_DEREF, -1, 0)
    m = re.fullmatch(r"([a-z0-9]+)([+-]\d+)", text)
    if not m:
        return (-1, -1, 0)
    return (CFA_REG, _regno(m.group(1)), int(m.group(2)))


def fv_cfa(rule: CfaRule) -> tuple[int, int, int]:
    if rule.kind == CFA_DEREF:
        return (CFA_DEREF, -1, 0)
    if rule.kind == CFA_REG:
        return (CFA_REG, rule.reg, rule.off)
    return (0, -1, 0)


def fv_saved(rule: CfaRule) -> dict[int, str]:
    out = {r: f"c{o:+d}" for r, o in rule.saved}
    for r, holder in getattr(rule, "in_reg", ()):
        out[r] = f"r{holder} ({DWARF_NAMES[holder]})"
    return out


def readelf_saved(regs: dict[int, str]) -> dict[int, str]:
    return {r: t for r, t in regs.items() if t not in ("u", "s")}


# ---------------------------------------------------------------------------
# one object
# ---------------------------------------------------------------------------

@dataclass
class Disagreement:
    member: str
    section: str
    offset: int
    symbol: str
    insns: int
    cfi: str
    framevet: str
    cls: str = ""
    why: str = ""
    #: facts for the classification, taken at the range's first instruction
    reached: bool = True          # framevet's walk reached it
    in_function: bool = True      # inside an STT_FUNC symbol
    ra_undefined: bool = False    # the CFI marks the return address undefined
    equivalent: bool = False      # just after mov %reg,%rsp, CFI reg+N vs framevet rsp+N


@dataclass
class MemberResult:
    member: str
    agree: int = 0
    total: int = 0
    reg_agree: int = 0
    reg_total: int = 0
    fdes: int = 0
    fv_seconds: float = 0.0
    error: str = ""
    disagreements: list[Disagreement] = field(default_factory=list)


def _symbol_at(elf, sec_index: int, off: int) -> str:
    best = None
    for s in elf.symbols:
        if s.shndx == sec_index and s.type in (1, 2, 0) and s.name and s.offset <= off:
            if s.offset + max(s.size, 1) > off or s.size == 0:
                if best is None or s.offset > best.offset or (
                        s.offset == best.offset and s.type == 2 and best.type != 2):
                    best = s
    if best is None:
        return f"+0x{off:x}"
    return f"{best.name}+0x{off - best.offset:x}"


_HW = {0: 0, 1: 2, 2: 1, 3: 3, 4: 6, 5: 7, 6: 5, 7: 4, **{r: r for r in range(8, 16)}}


def _after_mov_to_rsp(prog, g: int, want: tuple[int, int, int],
                      got: tuple[int, int, int]) -> bool:
    """``mov %reg, %rsp`` just executed, the CFI says reg+N and framevet rsp+N."""
    if g == 0 or prog.sec_of[g - 1] != prog.sec_of[g] or want[0] != CFA_REG \
            or got[:2] != (CFA_REG, 7) or want[2] != got[2]:
        return False
    ops = prog.ops[g - 1]
    return bool(ops) and ops[0][:2] == (0, 4) and ops[0][3] == 0 \
        and ops[0][4] == _HW.get(want[1], -1)


#: framevet's interned state: VALS (what a register holds, CFA-relative) starts here
_VALS0 = 9 + 2 * 17
_CFA_BASE_VAL = -2


def _holds_copy(c: tuple[int, ...] | None, want: tuple[int, int, int]) -> bool:
    """The CFI says ``reg + N`` and framevet's state knows ``reg`` holds ``CFA - N``
    (a copy of rsp taken earlier, ``mov %rsp, %r9``): the same CFA, spelled on
    another register."""
    hw = _HW.get(want[1], -1)
    if c is None or want[0] != CFA_REG or hw < 0:
        return False
    return c[_VALS0 + 2 * hw] == _CFA_BASE_VAL and c[_VALS0 + 2 * hw + 1] + want[2] == 0


def compare_member(args: tuple[str, str, bool]) -> MemberResult:
    path, display, want_regs = args
    res = MemberResult(display)
    try:
        text = subprocess.run(["readelf", "-SW", "-sW", "-rW", "-wF", path], capture_output=True,
                              text=True, check=False).stdout
        v = parse_readelf(text)
        t0 = time.perf_counter()
        objs = load_path(path)
        tables = [cfa_table(o.elf) for o in objs]
        res.fv_seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - reported, counted as a failure
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    if not tables:
        return res
    tb = tables[0]
    prog = tb.prog
    elf = objs[0].elf
    for fde in v.fdes:
        loc = fde_section(v, fde)
        if loc is None or loc[0] not in prog.secmap:
            continue
        sec, start = loc
        res.fdes += 1
        ds = prog.secmap[sec]
        base = prog.base[sec]
        end = start + (fde.hi - fde.lo)
        rows = fde.rows
        ri = 0
        run: Disagreement | None = None
        i = ds.at.get(start)
        if i is None:
            # FDE start is not an instruction boundary of framevet's decode: count nothing
            continue
        while i < len(ds) and ds.off[i] < end:
            o = ds.off[i]
            while ri + 1 < len(rows) and rows[ri + 1][0] - fde.lo + start <= o:
                ri += 1
            _, cfa_txt, regs = rows[ri]
            rule = tb.rule_at_gid(base + i)
            want = readelf_cfa(cfa_txt)
            got = fv_cfa(rule)
            res.total += 1
            ok = want == got
            if ok:
                res.agree += 1
                run = None
            else:
                g = base + i
                eq = _after_mov_to_rsp(prog, g, want, got) or \
                    _holds_copy(tb.result.cfi[g], want)
                key = (cfa_txt, rule.text().split()[0])
                if run is None or (run.cfi, run.framevet, run.equivalent) != \
                        (f"cfa={key[0]}", key[1], eq):
                    run = Disagreement(display, ds.name, o, _symbol_at(elf, sec, o), 0,
                                       f"cfa={key[0]}", key[1])
                    run.reached = tb.result.cfi[g] is not None
                    run.in_function = prog.func[g] >= 0
                    run.ra_undefined = regs.get(16) == "u"
                    run.equivalent = eq
                    res.disagreements.append(run)
                run.insns += 1
            if want_regs and ok:
                res.reg_total += 1
                a = {r: t for r, t in readelf_saved(regs).items() if r in CALLEE_SAVED_DWARF}
                b = {r: t for r, t in fv_saved(rule).items() if r in CALLEE_SAVED_DWARF}
                if a == b:
                    res.reg_agree += 1
            i += 1
    return res


# ---------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------

FRAMEVET_WRONG = "framevet wrong"
CFI_WRONG = "CFI wrong"
CFI_IMPRECISE = "CFI imprecise by design"
EQUIVALENT = "both right: two spellings of one CFA"
UNREACHABLE = "never executed: dead code"

#: verdicts reached by reading the code: (member, symbol+offset) -> (class, why)
KNOWN: dict[tuple[str, str], tuple[str, str]] = {
    **{(m, f"{f}+0x{o:x}"): (CFI_IMPRECISE,
       "from here the CFI describes the frame longjmp is about to restore (CFA and "
       "callee-saved registers in the jmp_buf at %rdi, ra in %rdx), while the code still "
       "runs in its own frame (rsp+8) until `mov %r8,%rsp`")
       for m, f, o in (("__longjmp.o", "__longjmp", 0x33),
                       ("__longjmp_cancel.o", "__longjmp_cancel", 0x33),
                       ("____longjmp_chk.o", "____longjmp_chk", 0x83))},
    **{(m, f"{f}+0x{o:x}"): (FRAMEVET_WRONG,
       "`mov %r8,%rsp` loads rsp from the (pointer-mangled) jmp_buf: framevet cannot "
       "follow the stack switch; the CFI's jmp_buf-relative rule is right")
       for m, f, o in (("__longjmp.o", "__longjmp", 0x4b),
                       ("__longjmp_cancel.o", "__longjmp_cancel", 0x4b),
                       ("____longjmp_chk.o", "____longjmp_chk", 0x9b))},
    ("__start_context.o", "__start_context+0x3"): (
        CFI_WRONG,
        "`mov %rbx,%rsp` switches to the context's stack, whose top word is uc_link "
        "(`mov (%rsp),%rdi` next), not a return address; the CFI keeps cfa=rsp+8 "
        "ra=cfa-8, so an unwinder 'returns' to the uc_link pointer (the outermost frame "
        "of a context should say DW_CFA_undefined rip)"),
    **{(m, f"{f}+0x{o:x}"): (
        CFI_WRONG,
        "`push %rbx` / `push %rbp` at entry (and the pops at the end) have no CFI: "
        "inside the function an unwinder reads the saved rbp as the return address")
       for m, f in (("addmul_1.o", "__mpn_addmul_1"), ("submul_1.o", "__mpn_submul_1"))
       for o in (0x1, 0x2, 0xe9)},
    ("setcontext.o", "__setcontext+0x35"): (
        CFI_IMPRECISE,
        "the CFI switches to the target context (CFA and registers in the ucontext at "
        "%rdx) one instruction before `mov 0xa0(%rdx),%rsp` switches the stack"),
    ("setcontext.o", "__setcontext+0x3c"): (
        FRAMEVET_WRONG,
        "after `mov 0xa0(%rdx),%rsp` the stack is the target context's: framevet cannot "
        "follow; the CFI describes the context through %rdx"),
    ("setcontext.o", "__setcontext+0x7d"): (
        FRAMEVET_WRONG,
        "after the stack switch and `push %rcx` (the context's rip) the top of the stack "
        "is a return address again: the CFI's rsp+8 is right, framevet lost the CFA at "
        "the switch"),
    ("swapcontext.o", "__swapcontext+0xaf"): (
        FRAMEVET_WRONG,
        "after `mov 0xa0(%rdx),%rsp` framevet cannot follow the switch; from `push %rcx` "
        "(+0xd1, the context's rip) on the CFI's rsp+8 is right -- before it (8 "
        "instructions) the CFI is wrong too: the top of the new stack is not a return "
        "address"),
}


def classify(d: Disagreement) -> None:
    member = d.member[d.member.rfind("(") + 1:-1] if d.member.endswith(")") else d.member
    hit = KNOWN.get((member, d.symbol))
    if hit is not None:
        d.cls, d.why = hit
    elif d.ra_undefined:
        d.cls, d.why = CFI_IMPRECISE, ("the CFI marks the return address undefined: an "
                                       "outermost frame (a new thread), its CFA is never used")
    elif not d.reached and not d.in_function:
        d.cls, d.why = CFI_IMPRECISE, ("alignment padding before a function that its FDE "
                                       "covers: never executed")
    elif not d.reached:
        d.cls, d.why = UNREACHABLE, ("no path reaches these instructions (a label no jump "
                                     "uses): no unwinder ever sees them")
    elif d.equivalent:
        d.cls, d.why = EQUIVALENT, ("the CFI computes the CFA from a register that holds "
                                    "a copy of rsp (`mov %rsp,%reg` earlier, or just "
                                    "`mov %reg,%rsp`), framevet from rsp: the same value")
    else:
        d.cls = "unclassified"


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def _inputs(paths: list[str], tmp: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for p in paths:
        with open(p, "rb") as fh:
            magic = fh.read(8)
        if magic[:4] != b"\x7fELF" and magic != b"!<arch>\n":
            print(f"skipping {p}: neither an ELF object nor an archive (a linker script?)",
                  file=sys.stderr)
            continue
        if magic == b"!<arch>\n":
            d = os.path.join(tmp, os.path.basename(p))
            os.makedirs(d, exist_ok=True)
            subprocess.run(["ar", "x", os.path.abspath(p)], cwd=d, check=True)
            names = subprocess.run(["ar", "t", p], capture_output=True, text=True,
                                   check=True).stdout.split()
            out += [(os.path.join(d, n), f"{p}({n})") for n in names]
        else:
            out.append((p, p))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=[LIBC])
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--regs", action="store_true",
                    help="also compare callee-saved register rules where the CFA agrees")
    ap.add_argument("--json", help="write every disagreement as JSON here")
    ap.add_argument("-q", "--quiet", action="store_true", help="summary only")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="framevet-bench-") as tmp:
        inputs = _inputs(a.paths, tmp)
        t_extract = time.perf_counter() - t0
        work = [(p, d, a.regs) for p, d in inputs]
        if a.jobs > 1:
            with multiprocessing.Pool(a.jobs) as pool:
                results = list(pool.imap_unordered(compare_member, work, chunksize=8))
        else:
            results = [compare_member(w) for w in work]
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: r.member)
    agree = sum(r.agree for r in results)
    total = sum(r.total for r in results)
    fv_cpu = sum(r.fv_seconds for r in results)
    errors = [r for r in results if r.error]
    dis = [d for r in results for d in r.disagreements]
    for d in dis:
        classify(d)
    print(f"objects: {len(results)}  FDEs compared: {sum(r.fdes for r in results)}  "
          f"errors: {len(errors)}")
    print(f"CFA rule agreement: {agree}/{total} instructions = "
          f"{100.0 * agree / max(total, 1):.4f} %")
    if a.regs:
        ra = sum(r.reg_agree for r in results)
        rt = sum(r.reg_total for r in results)
        print(f"callee-saved register rules agree (where CFA agrees): {ra}/{rt} = "
              f"{100.0 * ra / max(rt, 1):.4f} %")
    print(f"time: {wall:.1f} s wall with {a.jobs} jobs (extract {t_extract:.1f} s; "
          f"framevet load+analysis {fv_cpu:.1f} s CPU)")
    for r in errors[:10]:
        print(f"error: {r.member}: {r.error}")
    if len(errors) > 10:
        print(f"... and {len(errors) - 10} more errors")
    classes: dict[str, list[int]] = {}
    for d in dis:
        c = classes.setdefault(d.cls, [0, 0])
        c[0] += 1
        c[1] += d.insns
    for cls, (n, k) in sorted(classes.items()):
        print(f"  {cls}: {n} ranges, {k} instructions")
    if not a.quiet and dis:
        by_cls: dict[str, list[Disagreement]] = {}
        for d in dis:
            by_cls.setdefault(d.cls, []).append(d)
        for cls in sorted(by_cls):
            lst = by_cls[cls]
            print(f"\n{cls}: {len(lst)} ranges, {sum(d.insns for d in lst)} instructions")
            for d in lst:
                print(f"  {d.member}: {d.section}+0x{d.offset:x} <{d.symbol}> {d.insns} insns: "
                      f"CFI {d.cfi}, framevet {d.framevet}" + (f" -- {d.why}" if d.why else ""))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([d.__dict__ for d in dis], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
