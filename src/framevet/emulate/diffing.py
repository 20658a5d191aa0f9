"""Run two versions of a routine on the same random states; report the first divergence.

Both sides see the same argument registers and buffers, the same canaries,
the same caller's frame, the same values from external calls (in call
order) and from port I/O.  What is compared, in this order:

1. how the run ended (returned, or which fault);
2. rsp, the callee-saved registers, the return value (``compare="abi"``: rax),
   the direction flag;  ``compare="all"`` adds every GPR and CF/PF/AF/ZF/SF/OF,
   or pass register names explicitly;
3. memory that outlives the call: argument buffers, the caller's frame, data
   of undefined symbols;
4. the sequence of external calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from framevet.emulate.abi import trace_lines
from framevet.emulate.bochs import BochsMachine
from framevet.emulate.bxlib import DEFAULT_CPU, select_model
from framevet.emulate.child import Crash, Supervisor
from framevet.emulate.findings import DIFF_DIVERGENCE, EMULATION_ERROR, Finding, finding_at
from framevet.emulate.image import Image
from framevet.emulate.machine import Machine
from framevet.emulate.records import RunResult
from framevet.emulate.spec import (
    CALLEE_SAVED,
    DF,
    REG_NAMES,
    RFLAGS,
    ArgSpec,
    Budget,
    make_state,
)

STATUS_FLAGS = 0x8D5
_FLAG_NAMES = {0x1: "CF", 0x4: "PF", 0x10: "AF", 0x40: "ZF", 0x80: "SF", 0x800: "OF"}


@dataclass
class Side:
    label: str
    name: str            # what the user called it: FILE:FUNCTION or the raw stub
    image: Image
    entry: int
    display: str


def compared_regs(compare: str | Sequence[str]) -> tuple[list[int], int]:
    """(DWARF registers, rflags mask) that ``compare`` asks for."""
    if compare == "abi":
        return [7, *CALLEE_SAVED, 0], DF
    if compare == "all":
        return [7, *CALLEE_SAVED, 0, 1, 2, 4, 5, 8, 9, 10, 11], DF | STATUS_FLAGS
    regs: list[int] = []
    mask = DF
    for name in compare:
        if name in REG_NAMES[:16]:
            regs.append(REG_NAMES.index(name))
        elif name == "flags":
            mask |= STATUS_FLAGS
        else:
            raise ValueError(f"unknown register {name!r} to compare")
    return regs, mask


def _last_write(res: RunResult, addr: int) -> int:
    for pc, a, size, _v in reversed(res.writes):
        if a <= addr < a + size:
            return pc
    return 0


def _ending(res: RunResult) -> str:
    if res.returned:
        return "returns"
    return res.fault.message if res.fault else "stops"


def first_divergence(a: RunResult, b: RunResult, regs: list[int], mask: int,
                     sa: Side, sb: Side) -> tuple[str, int, int] | None:
    """(words, pc on A, pc on B) responsible for the first difference, or None."""
    if a.returned != b.returned or (not a.returned and a.fault and b.fault
                                    and (a.fault.kind, a.fault.message)
                                    != (b.fault.kind, b.fault.message)):
        pa = a.fault.pc if a.fault else (a.trace[-1] if a.trace else 0)
        pb = b.fault.pc if b.fault else (b.trace[-1] if b.trace else 0)
        return f"A {_ending(a)}; B {_ending(b)}", pa, pb
    if not a.returned:
        return None
    for r in regs:
        if a.regs[r] != b.regs[r]:
            wa, wb = a.last_writer[r], b.last_writer[r]
            da = sa.image.describe(wa) if wa else "unchanged"
            db = sb.image.describe(wb) if wb else "unchanged"
            return (f"{REG_NAMES[r]} differs at return: A 0x{a.regs[r]:x} (last set by {da}), "
                    f"B 0x{b.regs[r]:x} (last set by {db})", wa, wb)
    fa, fb = a.regs[RFLAGS] & mask, b.regs[RFLAGS] & mask
    if fa != fb:
        bits = fa ^ fb
        names = [n for m, n in _FLAG_NAMES.items() if bits & m] + (["DF"] if bits & DF else [])
        wa = a.df_writer if bits & DF else (a.trace[-1] if a.trace else 0)
        wb = b.df_writer if bits & DF else (b.trace[-1] if b.trace else 0)
        return (f"flags differ at return: {', '.join(names)} (A rflags 0x{a.regs[RFLAGS]:x}, "
                f"B 0x{b.regs[RFLAGS]:x})", wa, wb)
    for name in a.memory:
        ma, mb = a.memory[name], b.memory.get(name, b"")
        if ma != mb:
            i = next(k for k in range(min(len(ma), len(mb)) + 1)
                     if k >= len(ma) or k >= len(mb) or ma[k] != mb[k])
            frame = name == "caller's frame"
            wa = _last_write(a, a.memory_addr.get(name, 0) + i)
            wb = _last_write(b, b.memory_addr.get(name, 0) + i)
            where = f"entry rsp+0x{8 + i:x}" if frame else f"offset {i}"
            va = ma[i:i + 8].hex() if i < len(ma) else "-"
            vb = mb[i:i + 8].hex() if i < len(mb) else "-"
            da = sa.image.describe(wa) if wa else "untouched"
            db = sb.image.describe(wb) if wb else "untouched"
            return (f"memory written differs in {name} at {where}: A leaves {va} ({da}), "
                    f"B leaves {vb} ({db})", wa, wb)
    ca, cb = [n for n, _ in a.externs], [n for n, _ in b.externs]
    if ca != cb:
        k = next((i for i in range(min(len(ca), len(cb))) if ca[i] != cb[i]), min(len(ca),
                                                                                  len(cb)))
        pa = a.externs[k][1] if k < len(ca) else 0
        pb = b.externs[k][1] if k < len(cb) else 0
        return (f"external calls differ at call {k + 1}: A calls "
                f"{ca[k] if k < len(ca) else 'nothing'}, B calls "
                f"{cb[k] if k < len(cb) else 'nothing'}", pa, pb)
    return None


def _limitation(ra: RunResult, rb: RunResult, sa: Side, sb: Side, run: int,
                seed: int) -> Finding | None:
    """A run the emulator could not finish (an instruction it cannot run, an internal
    error) says nothing about the code: ``emulation-error``, never a divergence."""
    for res, side in ((ra, sa), (rb, sb)):
        f = res.fault
        if f is not None and f.rule == EMULATION_ERROR:
            msg = (f"{sa.name} and {sb.name} cannot be compared from run {run} (seed {seed}) "
                   f"on: {side.name} {f.message}")
            return finding_at(side.image, f.pc, EMULATION_ERROR, "warning", msg,
                              trace_lines(side.image, res, prefix=f"{side.name}: "),
                              side.display)
    return None


def diff_sides(sa: Side, sb: Side, specs: list[ArgSpec], runs: int, seed: int,
               budget: Budget, compare: str | Sequence[str], profile: str,
               stats: object | None = None, backend: str = "unicorn",
               cpu: str = DEFAULT_CPU) -> list[Finding]:
    regs, mask = compared_regs(compare)
    cls = BochsMachine if backend == "bochs" else Machine

    def one(run: int) -> tuple[int, int, Finding | None]:
        state = make_state(specs, seed, run)
        ra = cls(sa.image, state, sa.entry, budget, profile).run()
        rb = cls(sb.image, state, sb.entry, budget, profile).run()
        limit = _limitation(ra, rb, sa, sb, run, seed)
        if limit is not None:
            return ra.steps + rb.steps, ra.rep_iters + rb.rep_iters, limit
        d = first_divergence(ra, rb, regs, mask, sa, sb)
        found = None if d is None else _finding(sa, sb, ra, rb, run, seed, d)
        return ra.steps + rb.steps, ra.rep_iters + rb.rep_iters, found

    sup = Supervisor(one, 2 * budget.seconds + 60, lambda: select_model(cpu)) \
        if backend == "bochs" else None
    out: list[Finding] = []
    try:
        for run in range(runs):
            got = sup.call(run) if sup is not None else one(run)
            if isinstance(got, Crash):
                out.append(Finding(sb.display, "", "", 0, EMULATION_ERROR, "warning",
                                   f"run {run} of {sa.name} and {sb.name} could not be "
                                   f"compared: {got.reason}"))
                continue
            steps, reps, found = got
            if stats is not None:
                stats.runs += 1                       # type: ignore[attr-defined]
                stats.instructions += steps           # type: ignore[attr-defined]
                stats.rep_iterations += reps          # type: ignore[attr-defined]
            if found is not None:
                return out + [found]
    finally:
        if sup is not None:
            sup.close()
    return out


def _finding(sa: Side, sb: Side, ra: RunResult, rb: RunResult, run: int, seed: int,
             d: tuple[str, int, int]) -> Finding:
    words, pa, pb = d
    trace = [f"A = {sa.name}", *trace_lines(sa.image, ra, prefix="A: "),
             f"B = {sb.name}", *trace_lines(sb.image, rb, prefix="B: ")]
    msg = f"{sa.name} and {sb.name} diverge in run {run} (seed {seed}): {words}"
    if pb:
        return finding_at(sb.image, pb, DIFF_DIVERGENCE, "warning", msg, trace, sb.display)
    return finding_at(sa.image, pa, DIFF_DIVERGENCE, "warning", msg, trace, sa.display)
