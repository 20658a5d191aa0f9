"""Unwind one frame at every emulated instruction and compare with the truth.

At each instruction the machine's shadow stack knows the true CFA (the
caller's rsp after the return), the true return address and the caller's
values of rbx, rbp, r12-r15.  :class:`UnwindChecker` applies each unwind table
that covers the instruction — framevet's own CFA table and the object's
DWARF CFI — to the live registers and memory, and records every instruction
where a table recovers something else, naming the table that was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from framevet.emulate.spec import CALLEE_SAVED, REG_NAMES

if TYPE_CHECKING:
    from framevet.emulate.image import Image, MappedObject
    from framevet.emulate.machine import Frame, Machine
    from framevet.unwind.cfatable import CfaRule

CFA_UNDEFINED, CFA_REG, CFA_DEREF, CFA_UNSUPPORTED = 0, 1, 2, 3
#: where a register's caller value is: at CFA+arg / is CFA+arg / in register arg /
#: lost / not interpretable here / at register base + arg
HOW_AT, HOW_VAL, HOW_REG, HOW_UNDEFINED, HOW_UNSUPPORTED, HOW_ATREG = 1, 2, 3, 4, 5, 6
RA = 16
FRAMEVET = "framevet's CFA table"


@dataclass(frozen=True, slots=True)
class Rule:
    """CFA rule plus where each register's caller value is (unlisted: same value)."""

    cfa_kind: int
    cfa_reg: int = -1
    cfa_off: int = 0
    #: (DWARF reg, HOW_*, offset or register, base register for HOW_ATREG else -1)
    regs: tuple[tuple[int, int, int, int], ...] = ()

    def text(self) -> str:
        if self.cfa_kind == CFA_UNDEFINED:
            return "cfa=undefined"
        if self.cfa_kind == CFA_UNSUPPORTED:
            return "cfa=<expression>"
        base = f"{REG_NAMES[self.cfa_reg]}{self.cfa_off:+d}" if 0 <= self.cfa_reg < 17 else "?"
        parts = [f"cfa={base}" if self.cfa_kind == CFA_REG else f"cfa=[{base}]"]
        for r, how, arg, breg in self.regs:
            name = "ra" if r == RA else REG_NAMES[r] if r < 16 else f"r{r}"
            parts.append({HOW_AT: f"{name}=cfa{arg:+d}", HOW_VAL: f"{name}=val(cfa{arg:+d})",
                          HOW_REG: f"{name}=%{REG_NAMES[arg] if 0 <= arg < 16 else arg}",
                          HOW_UNDEFINED: f"{name}=undefined",
                          HOW_ATREG: f"{name}=at({REG_NAMES[breg % 16]}{arg:+d})",
                          }.get(how, f"{name}=<expr>"))
        return " ".join(parts)

    def lookup(self, reg: int) -> tuple[int, int, int] | None:
        for r, how, arg, base in self.regs:
            if r == reg:
                return how, arg, base
        return None


_ATREG = re.compile(r"at\((\w+)([+-]\d+)\)")
_VAL = re.compile(r"val\(cfa([+-]\d+)\)")


def from_cfarule(c: CfaRule, ra_reg: int = RA) -> Rule:
    """framevet's :class:`~framevet.unwind.cfatable.CfaRule` (its own table's rows, or
    :mod:`framevet.unwind.dwarf`'s) as a :class:`Rule`."""
    if c.kind == 3 or c.kind not in (CFA_UNDEFINED, CFA_REG, CFA_DEREF):
        kind = CFA_UNSUPPORTED
    else:
        kind = c.kind
    regs: list[tuple[int, int, int, int]] = []
    for r, off in c.saved:
        regs.append((RA if r == ra_reg else r, HOW_AT, off, -1))
    for r, text in getattr(c, "other", ()):
        r = RA if r == ra_reg else r
        m = _ATREG.fullmatch(text)
        v = _VAL.fullmatch(text)
        if text == "undefined":
            regs.append((r, HOW_UNDEFINED, 0, -1))
        elif text in REG_NAMES[:16]:
            regs.append((r, HOW_REG, REG_NAMES.index(text), -1))
        elif v:
            regs.append((r, HOW_VAL, int(v.group(1)), -1))
        elif m and m.group(1) in REG_NAMES[:16]:
            regs.append((r, HOW_ATREG, int(m.group(2)), REG_NAMES.index(m.group(1))))
        else:
            regs.append((r, HOW_UNSUPPORTED, 0, -1))
    regs.sort()
    return Rule(kind, c.reg, c.off, tuple(regs))


def recover(rule: Rule, regs: list[int], read64: Callable[[int], int | None],
            frame: Frame, skip: frozenset[int] = frozenset(),
            lost: Callable[[int], bool] | None = None) -> list[str]:
    """What ``rule`` gets wrong against ``frame`` (empty: the unwind is right).

    ``lost(value)`` says a callee-saved value survives nowhere (the code
    destroyed it: an ABI violation, not a table error), so it is not held
    against the table.
    """
    if rule.cfa_kind == CFA_UNDEFINED:
        return ["has no rule here (cfa=undefined)"]
    if rule.cfa_kind == CFA_UNSUPPORTED:
        return []
    if not 0 <= rule.cfa_reg < 16:
        return [f"bases the CFA on register {rule.cfa_reg}"]
    cfa: int | None = (regs[rule.cfa_reg] + rule.cfa_off) & (1 << 64) - 1
    if rule.cfa_kind == CFA_DEREF:
        cfa = read64(cfa) if cfa is not None else None
        if cfa is None:
            return ["dereferences unmapped memory for the CFA"]
    assert cfa is not None
    if cfa != frame.cfa:
        return [f"computes CFA 0x{cfa:x} but the caller's rsp is 0x{frame.cfa:x} "
                f"({cfa - frame.cfa:+d})"]
    out: list[str] = []
    ra_rule = rule.lookup(RA)
    if ra_rule is not None and ra_rule[0] == HOW_UNSUPPORTED:
        pass
    elif ra_rule is None or ra_rule[0] != HOW_AT:
        out.append("has no rule for the return address")
    else:
        ra = read64(cfa + ra_rule[1])
        if ra != frame.ra:
            shown_ra = "unmapped memory" if ra is None else f"0x{ra:x}"
            out.append(f"recovers return address {shown_ra} from cfa{ra_rule[1]:+d} but the "
                       f"return address is 0x{frame.ra:x}")
    for reg, want in zip(CALLEE_SAVED, frame.saved, strict=True):
        if reg in skip:
            continue
        r = rule.lookup(reg)
        how, arg, base = r if r is not None else (0, 0, -1)
        if how == HOW_UNSUPPORTED:
            continue
        got: int | None
        if how == HOW_AT:
            got, src = read64(cfa + arg), f"cfa{arg:+d}"
        elif how == HOW_VAL:
            got, src = cfa + arg, f"val(cfa{arg:+d})"
        elif how == HOW_REG:
            got, src = (regs[arg] if 0 <= arg < 16 else None), f"%{REG_NAMES[arg]}"
        elif how == HOW_UNDEFINED:
            got, src = None, "an undefined rule"
        elif how == HOW_ATREG:
            got, src = read64((regs[base] + arg) & (1 << 64) - 1), \
                f"[{REG_NAMES[base]}{arg:+d}]"
        else:
            got, src = regs[reg], "the register itself"
        if got != want and (lost is None or not lost(want)):
            shown = "nothing" if got is None else f"0x{got:x}"
            out.append(f"recovers {REG_NAMES[reg]} = {shown} from {src} but the caller's "
                       f"{REG_NAMES[reg]} is 0x{want:x}")
    return out


def _lost(m: Machine, regs: list[int], frame: Frame, value: int) -> bool:
    """True when ``value`` is in no register and nowhere in the frame [rsp-128, CFA)."""
    if value in regs[:16]:
        return False
    lo = (regs[7] - 128) & ~7
    hi = frame.cfa
    if not 0 < hi - lo <= 1 << 16:
        return True
    try:
        data = bytes(m.uc.mem_read(lo, hi - lo))
    except Exception:  # noqa: BLE001 - partially unmapped: judge by what is readable
        return True
    return value.to_bytes(8, "little") not in data


class FramevetTable:
    """framevet's own per-instruction CFA table, by run-time address."""

    name = FRAMEVET

    def __init__(self, mo: MappedObject, profile: str) -> None:
        from framevet.unwind.cfatable import cfa_table

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
        from framevet.emulate.dwarf_unwind import dwarf_table

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
