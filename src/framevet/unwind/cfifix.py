"""The corrected ``.cfi_*`` directives framevet proposes for a ``cfi-mismatch``,
and applying them to an assembly source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.unwind.cfarule import CFA_DEREF, CFA_REG, CfaRule, reg_name

if TYPE_CHECKING:
    from framevet.unwind.cficheck import CfiFinding

#: registers whose rules are compared (DWARF numbers): rbx, rbp, r12-r15, return address
CHECKED_REGS = (3, 6, 12, 13, 14, 15, 16)
RA = 16
REG_BY_NAME = {name: hw for name, hw in
                (("rax", d.AX), ("rdx", d.DX), ("rcx", d.CX), ("rbx", d.BX), ("rsi", d.SI),
                 ("rdi", d.DI), ("rbp", d.BP), ("rsp", d.SP),
                 *((f"r{i}", i) for i in range(8, 16)))}


def apply_fixes(source: str, path: str, findings: list[CfiFinding]) -> str:
    """``source`` (the text of assembly file ``path``) with every finding's ``fix``
    inserted before the line of its instruction, and its ``fix_end`` before the line
    where the disagreement ends."""
    lines = source.splitlines(keepends=True)
    inserts: dict[int, list[str]] = {}
    for f in findings:
        if f.source is not None and f.source[0] == path and f.fix:
            inserts.setdefault(f.source[1], []).extend(f.fix)
        end, at = f.details.get("fix_end"), f.details.get("fix_end_at")
        if end and isinstance(at, str) and at.startswith(path + ":"):
            inserts.setdefault(int(at[len(path) + 1:]), [])[0:0] = list(end)
    out = []
    for i, line in enumerate(lines, 1):
        for d_ in inserts.get(i, []):
            out.append(f"\t{d_}\n")
        out.append(line)
    return "".join(out)


# ---------------------------------------------------------------------------
# the fix: .cfi_* directives taking the CFI from ``want`` to ``got``
# ---------------------------------------------------------------------------

def _gas_reg(r: int) -> str:
    return "%rip" if r == RA else f"%{reg_name(r)}"


def _sleb(v: int) -> list[int]:
    out = []
    while True:
        b = v & 0x7F
        v >>= 7
        if (v == 0 and not b & 0x40) or (v == -1 and b & 0x40):
            out.append(b)
            return out
        out.append(b | 0x80)


def _uleb(v: int) -> list[int]:
    out = []
    while True:
        b = v & 0x7F
        v >>= 7
        if not v:
            out.append(b)
            return out
        out.append(b | 0x80)


def _escape(bytes_: list[int]) -> str:
    return ".cfi_escape " + ",".join(f"0x{b:x}" for b in bytes_)


def _reg_directive(r: int, rule: CfaRule) -> str:
    """The directive that gives register ``r`` its rule in ``rule`` (absolute)."""
    saved = dict(rule.saved)
    other = dict(rule.other)
    if r in saved:
        return f".cfi_offset {_gas_reg(r)}, {saved[r]}"
    t = other.get(r)
    if t is None:
        return f".cfi_restore {_gas_reg(r)}"
    if t == "undefined":
        return f".cfi_undefined {_gas_reg(r)}"
    if t in REG_BY_NAME:
        return f".cfi_register {_gas_reg(r)}, %{t}"
    if t.startswith("at("):
        inner = t[3:-1]
        base = next(i for i in range(16) if inner.startswith(reg_name(i))
                    and inner[len(reg_name(i))] in "+-")
        off = int(inner[len(reg_name(base)):])
        expr = [0x70 + base] + _sleb(off)
        return _escape([0x10, r, len(expr)] + expr) + \
            f"  # DW_CFA_expression: {reg_name(r)} at ({reg_name(base)}{off:+d})"
    return f"# {reg_name(r)}: {t} (no directive for this rule)"


def _cfa_directive(rule: CfaRule) -> str:
    if rule.kind == CFA_REG:
        return f".cfi_def_cfa {_gas_reg(rule.reg)}, {rule.off}"
    if rule.kind == CFA_DEREF:
        expr = [0x70 + rule.reg] + _sleb(rule.off) + [0x06]
        if rule.post > 0:
            expr += [0x23] + _uleb(rule.post)
        return _escape([0x0F, len(expr)] + expr) + \
            f"  # DW_CFA_def_cfa_expression: {rule.cfa_text()}"
    return f"# cfa: {rule.cfa_text()} (no directive for this rule)"


def _reset(want: CfaRule, what: list[str]) -> list[str]:
    """Directives that put the components ``what`` ("cfa", register names) back to
    what the CFI has at this point (absolute forms)."""
    out = []
    if "cfa" in what:
        out.append(_cfa_directive(want))
    for r in CHECKED_REGS:
        if reg_name(r) in what:
            out.append(_reg_directive(r, want))
    return out


def _directives(want: CfaRule, got: CfaRule, diffs: list[str]) -> list[str]:
    """Directives that take the CFI from ``want`` to ``got`` for the components in
    ``diffs``, in GCC's forms where they are enough."""
    out: list[str] = []
    if "cfa" in diffs:
        if got.kind == CFA_REG and want.kind == CFA_REG and want.reg == got.reg:
            out.append(f".cfi_def_cfa_offset {got.off}")
        elif got.kind == CFA_REG and want.kind == CFA_REG and want.off == got.off:
            out.append(f".cfi_def_cfa_register {_gas_reg(got.reg)}")
        else:
            out.append(_cfa_directive(got))
    for r in CHECKED_REGS:
        if reg_name(r) in diffs:
            out.append(_reg_directive(r, got))
    return out
