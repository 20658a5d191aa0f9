"""``framevet cfi --confirm``: run a function to the instructions of a cfi-mismatch and
unwind there with the shipped CFI, to show what the wrong rule yields.

For each function with ``cfi-mismatch`` findings the function runs under unicorn
(:class:`~framevet.emulate.machine.Machine`: random arguments, canaries in
the callee-saved registers, a sentinel return address) with a few argument shapes
(pointers to buffers, and a small count in the third or fourth argument, as
block functions take).  At every instruction of a finding's range the run
reaches, the object's DWARF CFI unwinds one frame against the true one.  The
verdict goes into the finding's ``details["confirm"]`` (a JSON and SARIF
property) and its message:

* ``confirmed: the CFI yields return address X, the true one is Y`` (or the
  callee-saved register, or the CFA, it gets wrong);
* ``not confirmed (the CFI unwinds right where the runs went)``;
* ``not confirmed (path not reached)``; ``not confirmed (AVX)`` or ``not
  confirmed (an instruction unicorn cannot run)`` when a run stopped at such an
  instruction before the range; ``not confirmed (not runnable: ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import iced_x86

from framevet.emulate.dwarf_unwind import dwarf_table
from framevet.emulate.image import link
from framevet.emulate.machine import Machine
from framevet.emulate.spec import Budget, make_state, parse_args_spec
from framevet.emulate.unwindrule import CFA_DEREF, HOW_AT, RA, Rule, recover
from framevet.load.errors import InputError

if TYPE_CHECKING:
    from framevet.emulate.image import Image, MappedObject
    from framevet.emulate.records import Frame
    from framevet.findings import Finding
    from framevet.load.object import LoadedObject

#: argument shapes tried in turn (block functions: ctx, in, num / ctx, out, in, num)
SHAPES = ("ptr:4096,ptr:4096,int:1..2,ptr:4096,ptr:4096,ptr:4096",
          "ptr:4096,ptr:4096,ptr:4096,int:1..2,ptr:4096,ptr:4096",
          "ptr:4096,ptr:4096,ptr:4096,ptr:4096,ptr:4096,ptr:4096")
RUNS_PER_SHAPE = 2
BUDGET = Budget(insns=2_000_000, seconds=10.0)


class _Watch:
    """Machine observer: at the watched addresses, unwind with the DWARF CFI."""

    def __init__(self, mo: MappedObject, watch: set[int]) -> None:
        self.table = dwarf_table(mo)
        self.watch = watch
        self.reached: set[int] = set()
        #: address -> what the CFI got wrong there (first time seen)
        self.wrong: dict[int, str] = {}
        self.run = 0

    def step(self, m: Machine, pc: int, regs: list[int], frame: Frame) -> None:
        if pc not in self.watch or self.table is None:
            return
        self.reached.add(pc)
        rule = self.table.rule_at(pc)
        if rule is None or pc in self.wrong:
            return
        problems = recover(rule, regs, m.read64, frame)
        if problems:
            self.wrong[pc] = _verdict(rule, regs, m, frame, problems)


def _verdict(rule: Rule, regs: list[int], m: Machine, frame: Frame,
             problems: list[str]) -> str:
    """``confirmed: ...`` naming the return address the CFI yields, when it gets the
    CFA wrong, else the first thing it gets wrong."""
    ra_rule = rule.lookup(RA)
    if problems[0].startswith("computes CFA") and ra_rule is not None and ra_rule[0] == HOW_AT:
        cfa: int | None = (regs[rule.cfa_reg] + rule.cfa_off) & (1 << 64) - 1
        if rule.cfa_kind == CFA_DEREF and cfa is not None:
            cfa = m.read64(cfa)
            cfa = None if cfa is None else cfa + rule.cfa_post
        ra = None if cfa is None else m.read64(cfa + ra_rule[1])
        shown = "unmapped memory" if ra is None else f"0x{ra:x}"
        return (f"confirmed: the CFI yields return address {shown}, the true one is "
                f"0x{frame.ra:x} (it {problems[0]})")
    text = problems[0]
    if text.startswith("recovers return address "):
        got = text.split()[3]
        return f"confirmed: the CFI yields return address {got}, the true one is 0x{frame.ra:x}"
    return f"confirmed: the CFI {text}"


def confirm(obj: LoadedObject, findings: Sequence[Finding]) -> None:
    """Add ``details["confirm"]`` to every cfi-mismatch in ``findings`` (of ``obj``)."""
    by_func: dict[str, list[Finding]] = {}
    for f in findings:
        if f.rule == "cfi-mismatch" and f.location is not None and f.location.symbol:
            by_func.setdefault(f.location.symbol, []).append(f)
    for name, fs in by_func.items():
        for f, text in zip(fs, _confirm_function(obj, name, fs), strict=True):
            f.details["confirm"] = text
            f.message += f" [{text}]"


def _watched(image: Image, mo: MappedObject, name: str, f: Finding) -> set[int]:
    """Run-time addresses of the instructions of finding ``f``'s range."""
    base = image.function_addr(name)
    hit = image.code_section(base) if base is not None else None
    if base is None or hit is None or f.location is None:
        return set()
    sec = hit[1]
    start = base + f.location.symbol_offset
    data = mo.elf.sections[sec.index].data
    n = f.details.get("insns", 1)
    out: set[int] = set()
    dec = iced_x86.Decoder(64, data[start - sec.addr:], ip=start)
    for ins in dec:
        if len(out) >= (n if isinstance(n, int) else 1) or ins.code == iced_x86.Code.INVALID:
            break
        out.add(ins.ip)
    return out


def _confirm_function(obj: LoadedObject, name: str, fs: list[Finding]) -> list[str]:
    try:
        image = link([obj])
        entry = image.function_addr(name)
    except InputError as exc:
        return [f"not confirmed (not runnable: {exc})"] * len(fs)
    hit = image.code_section(entry) if entry is not None else None
    if entry is None or hit is None:
        return ["not confirmed (not runnable: no function to run)"] * len(fs)
    watches = [_watched(image, hit[0], name, f) for f in fs]
    watch = _Watch(hit[0], set().union(*watches))
    stop = ""
    for shape in SHAPES:
        specs = parse_args_spec(shape)
        for run in range(RUNS_PER_SHAPE):
            res = Machine(image, make_state(specs, 0, run), entry, BUDGET, "user", watch).run()
            if res.fault is not None and res.fault.kind == "unsupported":
                stop = stop or ("AVX" if "AVX" in res.fault.message
                                else "an instruction unicorn cannot run")
        if all(w & watch.reached and (w & watch.wrong.keys() or not w - watch.reached)
               for w in watches):
            break
    out = []
    for w in watches:
        wrong = sorted(w & watch.wrong.keys())
        if wrong:
            out.append(watch.wrong[wrong[0]])
        elif w & watch.reached:
            out.append("not confirmed (the CFI unwinds right where the runs went)")
        else:
            out.append(f"not confirmed ({stop or 'path not reached'})")
    return out
