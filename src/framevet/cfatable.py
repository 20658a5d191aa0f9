"""framevet's own per-address CFA table, in DWARF terms (design §4 "CFA dump").

One :class:`CfaRow` per address where the unwind state changes: the CFA rule
and where each saved register's caller value lives, CFA-relative, registers in
DWARF order.  This is what ``framevet cfa`` prints, what ``framevet cfi``
compares with ``.eh_frame``, and what emulation unwinds with.
"""

from __future__ import annotations

from dataclasses import dataclass

from framevet import decode as d
from framevet.cfa import (
    BP_INDIRECT,
    CFA,
    CFA_BASE,
    CFA_OFF,
    NREGS,
    SP_INDIRECT,
    UNDEFINED,
    WalkOptions,
    WalkResult,
    walk,
)
from framevet.cfg import SKIP_ORC_SECTIONS, Program, build
from framevet.load.elf import ElfObject

#: hardware register number -> DWARF register number (x86-64 SysV psABI)
HW_TO_DWARF = {d.AX: 0, d.DX: 1, d.CX: 2, d.BX: 3, d.SI: 4, d.DI: 5, d.BP: 6, d.SP: 7,
               **{r: r for r in range(8, 16)}, 16: 16}
DWARF_NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "ra"]

#: CFA kinds
CFA_UNDEFINED, CFA_REG, CFA_DEREF = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CfaRule:
    kind: int            # CFA_UNDEFINED / CFA_REG (reg + off) / CFA_DEREF (*(reg + off))
    reg: int = -1        # DWARF register number
    off: int = 0
    #: (DWARF register, CFA-relative offset) of saved registers, DWARF order, ra included
    saved: tuple[tuple[int, int], ...] = ()

    def text(self) -> str:
        if self.kind == CFA_UNDEFINED:
            cfa = "cfa=undefined"
        elif self.kind == CFA_REG:
            cfa = f"cfa={DWARF_NAMES[self.reg]}{self.off:+d}"
        else:
            cfa = f"cfa=[{DWARF_NAMES[self.reg]}{self.off:+d}]"
        parts = [cfa] + [f"{DWARF_NAMES[r]}=cfa{o:+d}" for r, o in self.saved]
        return " ".join(parts)


UNDEFINED_RULE = CfaRule(CFA_UNDEFINED)


@dataclass(frozen=True, slots=True)
class CfaRow:
    section: str
    offset: int
    rule: CfaRule

    def text(self) -> str:
        return f"{self.section}+{self.offset:x}: {self.rule.text()}"


def rule_for(cfi: tuple[int, ...] | None) -> CfaRule:
    if cfi is None:
        return UNDEFINED_RULE
    base, off = cfi[CFA_BASE], cfi[CFA_OFF]
    if base == UNDEFINED:
        return UNDEFINED_RULE
    if base == SP_INDIRECT:
        kind, reg = CFA_DEREF, HW_TO_DWARF[d.SP]
    elif base == BP_INDIRECT:
        kind, reg = CFA_DEREF, HW_TO_DWARF[d.BP]
    elif 0 <= base < 16:
        kind, reg = CFA_REG, HW_TO_DWARF[base]
    else:
        return UNDEFINED_RULE
    saved = []
    for r in range(NREGS):
        if cfi[9 + 2 * r] == CFA:
            saved.append((HW_TO_DWARF[r], cfi[10 + 2 * r]))
    saved.sort()
    return CfaRule(kind, reg, off, tuple(saved))


@dataclass
class CfaTable:
    prog: Program
    result: WalkResult
    #: per executable section name: rows where the rule changes, by offset
    rows: dict[str, list[CfaRow]]

    def at(self, section: str, offset: int) -> CfaRule:
        """The rule in effect before the instruction at ``section+offset`` executes."""
        g = self.prog.gid(self._sec_index[section], offset)
        return rule_for(self.result.cfi[g]) if g >= 0 else UNDEFINED_RULE

    @property
    def _sec_index(self) -> dict[str, int]:
        return {self.prog.section_name(ds.index): ds.index for ds in self.prog.sections}


def cfa_table(elf: ElfObject, profile: str = "user",
              opts: WalkOptions | None = None) -> CfaTable:
    prog = build(elf, profile)
    result = walk(prog, opts)
    return table_from(prog, result)


def table_from(prog: Program, result: WalkResult) -> CfaTable:
    rows: dict[str, list[CfaRow]] = {}
    cache: dict[int, CfaRule] = {}
    for ds in prog.sections:
        name = prog.section_name(ds.index)
        if name in SKIP_ORC_SECTIONS:
            continue
        out: list[CfaRow] = []
        prev: CfaRule | None = None
        base = prog.base[ds.index]
        for i in range(len(ds)):
            c = result.cfi[base + i]
            key = id(c)
            rule = cache.get(key) if c is not None else UNDEFINED_RULE
            if rule is None:
                rule = cache[key] = rule_for(c)
            if rule != prev:
                out.append(CfaRow(name, ds.off[i], rule))
                prev = rule
        rows[name] = out
    return CfaTable(prog, result, rows)
