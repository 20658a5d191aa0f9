"""A CFA rule in DWARF terms: how to find the CFA and where each saved register's
caller value lives, CFA-relative, registers in DWARF order -- and how a stack state
(:mod:`framevet.decode.state`) reads as one."""

from __future__ import annotations

from dataclasses import dataclass

from framevet.decode import insn as d
from framevet.decode.state import (
    BP_INDIRECT,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP_OFF,
    NREGS,
    REGS,
    SP_INDIRECT,
    STACK,
    STACK_UNKNOWN,
    UNDEFINED,
    USER_SP_DEREF,
    VALS,
    blank_state,
)

#: hardware register number -> DWARF register number (x86-64 SysV psABI)
HW_TO_DWARF = {d.AX: 0, d.DX: 1, d.CX: 2, d.BX: 3, d.SI: 4, d.DI: 5, d.BP: 6, d.SP: 7,
               **{r: r for r in range(8, 16)}, 16: 16}
DWARF_NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "ra"]

#: CFA kinds: unknown / ``reg + off`` / ``*(reg + off)`` / another DWARF expression
CFA_UNDEFINED, CFA_REG, CFA_DEREF, CFA_EXPR = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class CfaRule:
    """The unwind rule in effect at one address, in DWARF terms."""

    kind: int            # CFA_UNDEFINED / CFA_REG / CFA_DEREF / CFA_EXPR
    reg: int = -1        # DWARF register number
    off: int = 0
    #: (DWARF register, CFA-relative offset) of saved registers, DWARF order, ra included
    saved: tuple[tuple[int, int], ...] = ()
    #: registers whose caller value is not in a CFA-relative slot, DWARF order:
    #: ``"undefined"``, a register name (DW_CFA_register: the value is in that
    #: register), ``"at(rbp+0)"`` (saved at an address given by a register,
    #: DW_CFA_expression ``DW_OP_bregN``), ``"val(cfa+16)"`` (DW_CFA_val_offset),
    #: ``"exp"`` / ``"vexp"`` (other expressions)
    other: tuple[tuple[int, str], ...] = ()
    #: CFA_EXPR: the expression, spelled like readelf
    expr: str = ""
    #: CFA_DEREF: added after the load, CFA = *(reg + off) + post (OpenSSL's frames)
    post: int = 0

    def cfa_text(self) -> str:
        if self.kind == CFA_UNDEFINED:
            return "undefined"
        if self.kind == CFA_REG:
            return f"{DWARF_NAMES[self.reg]}{self.off:+d}"
        if self.kind == CFA_DEREF:
            return f"[{DWARF_NAMES[self.reg]}{self.off:+d}]" + (f"{self.post:+d}" if self.post
                                                                else "")
        return f"exp({self.expr})" if self.expr else "exp"

    def reg_rules(self) -> list[tuple[int, str]]:
        """Every register's rule, DWARF order, as ``(register, text)``."""
        out = [(r, f"cfa{o:+d}") for r, o in self.saved] + list(self.other)
        out.sort(key=lambda t: t[0])
        return out

    def text(self) -> str:
        parts = [f"cfa={self.cfa_text()}"]
        parts += [f"{reg_name(r)}={t}" for r, t in self.reg_rules()]
        return " ".join(parts)

    def same_cfa(self, other: CfaRule) -> bool:
        return (self.kind, self.reg, self.off, self.expr, self.post) == \
            (other.kind, other.reg, other.off, other.expr, other.post)


def reg_name(r: int) -> str:
    return DWARF_NAMES[r] if 0 <= r < len(DWARF_NAMES) else f"r{r}"


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
    post = 0
    if base == USER_SP_DEREF:
        kind, reg, post = CFA_DEREF, HW_TO_DWARF[d.SP], cfi[DRAP_OFF]
    elif base == SP_INDIRECT:
        kind, reg = CFA_DEREF, HW_TO_DWARF[d.SP]
    elif base == BP_INDIRECT:
        kind, reg = CFA_DEREF, HW_TO_DWARF[d.BP]
    elif 0 <= base < 16:
        kind, reg = CFA_REG, HW_TO_DWARF[base]
    else:
        return UNDEFINED_RULE
    saved = []
    other = []
    for r in range(NREGS):
        rb = cfi[9 + 2 * r]
        if rb == CFA:
            saved.append((HW_TO_DWARF[r], cfi[10 + 2 * r]))
        elif 0 <= rb < 16:
            # saved at an address given by a register (DRAP: ``rbp``-relative)
            other.append((HW_TO_DWARF[r], f"at({DWARF_NAMES[HW_TO_DWARF[rb]]}"
                                          f"{cfi[10 + 2 * r]:+d})"))
    saved.sort()
    other.sort()
    return CfaRule(kind, reg, off, tuple(saved), tuple(other), post=post)


def is_entry_rule(rule: CfaRule) -> bool:
    """The unwind rule of a function's first instruction: ``cfa=rsp+8``, the return
    address at ``cfa-8`` (or undefined: the outermost frame, ``_start``), no other
    register saved."""
    return (rule.kind == CFA_REG and rule.reg == HW_TO_DWARF[d.SP] and rule.off == 8
            and all(r == 16 and o == -8 for r, o in rule.saved)
            and all(t == "undefined" for _, t in rule.other))


def state_for(rule: CfaRule) -> list[int] | None:
    """The stack state a DWARF row describes when it puts the CFA on rsp or rbp and
    saves registers in CFA-relative slots (None for any other row)."""
    base = {HW_TO_DWARF[d.SP]: d.SP, HW_TO_DWARF[d.BP]: d.BP}.get(rule.reg, -1)
    if rule.kind != CFA_REG or base < 0 or any(t != "undefined" for _, t in rule.other):
        return None
    st = blank_state()
    st[CFA_BASE], st[CFA_OFF] = base, rule.off
    st[STACK] = rule.off if base == d.SP else STACK_UNKNOWN * 2
    if base == d.BP:
        st[VALS + 2 * d.BP], st[VALS + 2 * d.BP + 1] = CFA, -rule.off
    dwarf_to_hw = {dw: hw for hw, dw in HW_TO_DWARF.items()}
    for r, o in rule.saved:
        hw = dwarf_to_hw[r]
        st[REGS + 2 * hw], st[REGS + 2 * hw + 1] = CFA, o
    return st
