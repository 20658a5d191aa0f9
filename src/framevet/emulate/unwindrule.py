"""An unwind rule as the emulator applies it to live registers and memory: where the
CFA is, and where each register's caller value is; made from framevet's or DWARF's
:class:`~framevet.unwind.cfarule.CfaRule`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from framevet.emulate.spec import CALLEE_SAVED, REG_NAMES
from framevet.unwind.cfarule import CfaRule

if TYPE_CHECKING:
    from framevet.emulate.records import Frame

CFA_UNDEFINED, CFA_REG, CFA_DEREF, CFA_UNSUPPORTED = 0, 1, 2, 3
#: where a register's caller value is: at CFA+arg / is CFA+arg / in register arg /
#: lost / not interpretable here / at register base + arg
HOW_AT, HOW_VAL, HOW_REG, HOW_UNDEFINED, HOW_UNSUPPORTED, HOW_ATREG = 1, 2, 3, 4, 5, 6
RA = 16


@dataclass(frozen=True, slots=True)
class Rule:
    """CFA rule plus where each register's caller value is (unlisted: same value)."""

    cfa_kind: int
    cfa_reg: int = -1
    cfa_off: int = 0
    #: (DWARF reg, HOW_*, offset or register, base register for HOW_ATREG else -1)
    regs: tuple[tuple[int, int, int, int], ...] = ()
    #: CFA_DEREF: added after the load (OpenSSL's ``breg7 88; deref; plus_uconst 8``)
    cfa_post: int = 0

    def text(self) -> str:
        if self.cfa_kind == CFA_UNDEFINED:
            return "cfa=undefined"
        if self.cfa_kind == CFA_UNSUPPORTED:
            return "cfa=<expression>"
        base = f"{REG_NAMES[self.cfa_reg]}{self.cfa_off:+d}" if 0 <= self.cfa_reg < 17 else "?"
        post = f"{self.cfa_post:+d}" if self.cfa_post else ""
        parts = [f"cfa={base}" if self.cfa_kind == CFA_REG else f"cfa=[{base}]{post}"]
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
    return Rule(kind, c.reg, c.off, tuple(regs), getattr(c, "post", 0))


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
        cfa = (cfa + rule.cfa_post) & (1 << 64) - 1
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
