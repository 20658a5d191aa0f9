"""Unwind one frame at every emulated instruction and compare with the truth.

At each instruction the machine's shadow stack knows the true CFA (the
caller's rsp after the return), the true return address and the caller's
values of rbx, rbp, r12-r15.  :class:`UnwindChecker` applies each unwind table
that covers the instruction — framevet's own CFA table and the object's
DWARF CFI — to the live registers and memory, and records every instruction
where a table recovers something else, naming the table that was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from framevet.emulate.dwarf_unwind import dwarf_table
from framevet.emulate.unwindrule import Rule, from_cfarule, recover
from framevet.unwind.cfatable import cfa_table

if TYPE_CHECKING:
    from framevet.emulate.image import Image, MappedObject
    from framevet.emulate.machine import Machine
    from framevet.emulate.records import Frame

FRAMEVET = "framevet's CFA table"


def _lost(m: Machine, regs: list[int], frame: Frame, value: int) -> bool:
    """True when ``value`` is in no register and nowhere in the frame [rsp-128, CFA)."""
    if value in regs[:16]:
        return False
    lo = (regs[7] - 128) & ~7
    hi = frame.cfa
    if not 0 < hi - lo <= 1 << 16:
        return True
    try:
        data = m.read_mem(lo, hi - lo)
    except Exception:  # noqa: BLE001 - partially unmapped: judge by what is readable
        return True
    return value.to_bytes(8, "little") not in data


class FramevetTable:
    """framevet's own per-instruction CFA table, by run-time address."""

    name = FRAMEVET

    def __init__(self, mo: MappedObject, profile: str) -> None:
        self.mo = mo
        self.table = cfa_table(mo.elf, profile)
        self._cache: dict[int, Rule | None] = {}

    def rule_at(self, addr: int) -> Rule | None:
        if addr in self._cache:
            return self._cache[addr]
        rule: Rule | None = None
        for s in self.mo.sections.values():
            if s.executable and s.addr <= addr < s.addr + s.size:
                if self.table.prog.gid(s.index, addr - s.addr) >= 0:
                    rule = from_cfarule(self.table.at(s.index, addr - s.addr))
                break
        self._cache[addr] = rule
        return rule


@dataclass
class Failure:
    table: str
    pc: int
    problems: list[str]
    rule: str
    pcs: set[int] = field(default_factory=set)
    runs: set[int] = field(default_factory=set)


@dataclass
class UnwindStats:
    steps: int = 0                                    # instructions unwound (any table)
    repeats: int = 0                                  # ... that repeated the previous one
                                                      # (rep iterations, jmp-to-self)
    checked: dict[str, int] = field(default_factory=dict)   # per table
    uncovered: dict[str, int] = field(default_factory=dict)  # no row/FDE at the pc


class UnwindChecker:
    """Observer for :class:`~framevet.emulate.machine.Machine`: unwinds at every step."""

    def __init__(self, image: Image, profile: str, notes: list[str],
                 clobbers: Mapping[str, frozenset[int]] | None = None) -> None:
        self.image = image
        self.clobbers = dict(clobbers or {})
        self.tables: dict[int, list[FramevetTable | object]] = {}
        self.stats = UnwindStats()
        #: (table, function symbol) -> first failure there
        self.failures: dict[tuple[str, str], Failure] = {}
        self.run = 0
        for mo in image.objects:
            tabs: list[FramevetTable | object] = []
            try:
                tabs.append(FramevetTable(mo, profile))
            except Exception as exc:  # noqa: BLE001 - report, keep the run going
                notes.append(f"{mo.display}: framevet's CFA table unavailable: {exc}")
            try:
                dw = dwarf_table(mo, notes)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{mo.display}: DWARF CFI unreadable: {exc}")
                dw = None
            if dw is not None and dw.fdes:
                tabs.append(dw)
            self.tables[id(mo)] = tabs
        self._by_pc: dict[int, list[tuple[str, Rule | None]]] = {}
        self._skip: dict[int, frozenset[int]] = {}
        self._last = -1

    def _rules(self, pc: int) -> list[tuple[str, Rule | None]]:
        got = self._by_pc.get(pc)
        if got is None:
            hit = self.image.code_section(pc)
            got = []
            if hit is not None:
                for t in self.tables.get(id(hit[0]), ()):
                    got.append((t.name, t.rule_at(pc)))  # type: ignore[attr-defined]
            self._by_pc[pc] = got
            loc = self.image.locate(pc)
            self._skip[pc] = self.clobbers.get(loc.symbol, frozenset()) if loc else frozenset()
        return got

    def step(self, m: Machine, pc: int, regs: list[int], frame: Frame) -> None:
        rules = self._rules(pc)
        if not rules:
            return
        st = self.stats
        st.steps += 1
        if pc == self._last:
            st.repeats += 1
        self._last = pc
        for name, rule in rules:
            if rule is None:
                st.uncovered[name] = st.uncovered.get(name, 0) + 1
                if name == FRAMEVET:
                    continue
                problems = ["has no FDE covering this instruction"]
            else:
                st.checked[name] = st.checked.get(name, 0) + 1
                problems = recover(rule, regs, m.read64, frame, self._skip[pc],
                                   lambda v: _lost(m, regs, frame, v))
            if problems:
                self._fail(name, pc, problems, rule)

    def _fail(self, table: str, pc: int, problems: list[str], rule: Rule | None) -> None:
        loc = self.image.locate(pc)
        key = (table, loc.symbol if loc is not None and loc.symbol else f"0x{pc:x}")
        f = self.failures.get(key)
        if f is None:
            self.failures[key] = Failure(table, pc, problems, rule.text() if rule else "-",
                                         {pc}, {self.run})
        else:
            f.pcs.add(pc)
            f.runs.add(self.run)
