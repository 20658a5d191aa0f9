"""DWARF call frame information (``.eh_frame``, ``.debug_frame``) as per-FDE row tables.

Each FDE becomes an :class:`FdeTable`: the code section it covers, the
section-relative range, and the rows of its decoded table as
:class:`framevet.unwind.cfatable.CfaRule` values, so they compare directly with
framevet's own table (:mod:`framevet.unwind.cfatable`).

pyelftools parses the entries (CIE/FDE headers, augmentation, the instruction
stream); the table is interpreted here, because pyelftools' own interpreter
does not know ``DW_CFA_GNU_args_size`` and scales ``DW_CFA_def_cfa_sf`` by the
wrong factor.  Where an FDE points is taken from the relocation on its
``initial_location`` field in a relocatable object (``R_X86_64_PC32`` in
``.eh_frame``, ``R_X86_64_64`` in ``.debug_frame``, usually against a section
symbol), and from the section addresses in an executable or shared object.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from elftools.dwarf.callframe import FDE, CallFrameInfo
from elftools.dwarf.structs import DWARFStructs

from framevet.load.elf import ElfObject
from framevet.unwind.cfarule import CFA_DEREF, CFA_EXPR, CFA_REG, CFA_UNDEFINED, CfaRule, reg_name

FRAME_SECTIONS = (".eh_frame", ".debug_frame")

# DW_CFA opcodes (primary opcodes with the low six bits masked out)
_ADVANCE_LOC, _OFFSET, _RESTORE = 0x40, 0x80, 0xC0
_NOP, _SET_LOC, _ADV1, _ADV2, _ADV4 = 0x00, 0x01, 0x02, 0x03, 0x04
_OFFSET_EXT, _RESTORE_EXT, _UNDEF, _SAME, _REGISTER = 0x05, 0x06, 0x07, 0x08, 0x09
_REMEMBER, _RESTORE_STATE = 0x0A, 0x0B
_DEF_CFA, _DEF_CFA_REG, _DEF_CFA_OFF, _DEF_CFA_EXPR = 0x0C, 0x0D, 0x0E, 0x0F
_EXPRESSION, _OFFSET_EXT_SF, _DEF_CFA_SF, _DEF_CFA_OFF_SF = 0x10, 0x11, 0x12, 0x13
_VAL_OFFSET, _VAL_OFFSET_SF, _VAL_EXPRESSION = 0x14, 0x15, 0x16
_GNU_ARGS_SIZE, _GNU_NEG_OFFSET_EXT = 0x2E, 0x2F

# register rule kinds inside the interpreter
_R_UNDEF, _R_SAME, _R_OFFSET, _R_VAL_OFFSET, _R_REGISTER, _R_EXPR, _R_VAL_EXPR = range(7)

_Cfa = tuple[int, int, int, str, int]     # kind, reg, off, expr text, post-deref offset
_RegRule = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class FdeTable:
    """One FDE's decoded table, located in the code it describes."""

    frame_section: str
    #: offset of the FDE in ``frame_section``
    fde_offset: int
    #: index of the code section covered (-1: the FDE points nowhere known)
    section: int
    section_name: str
    #: section-relative [start, end)
    start: int
    end: int
    #: (section offset, rule in effect from there on), ascending
    rows: tuple[tuple[int, CfaRule], ...]
    #: return-address column of the CIE
    ra_reg: int = 16
    #: (section, offset) of the FDE's LSDA (``.gcc_except_table``), if it has one
    lsda: tuple[int, int] | None = None

    def rule_at(self, offset: int) -> CfaRule:
        i = bisect_right([o for o, _ in self.rows], offset) - 1
        return self.rows[max(i, 0)][1]

    def covers(self, offset: int) -> bool:
        return self.start <= offset < self.end


@dataclass
class CfiInfo:
    """All FDEs of an object, and what could not be read."""

    fdes: list[FdeTable] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def by_section(self) -> dict[int, list[FdeTable]]:
        out: dict[int, list[FdeTable]] = {}
        for f in self.fdes:
            out.setdefault(f.section, []).append(f)
        for lst in out.values():
            lst.sort(key=lambda f: (f.start, f.end))
        return out


# ---------------------------------------------------------------------------
# expressions
# ---------------------------------------------------------------------------

def _uleb(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _sleb(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            if c & 0x40:
                v -= 1 << shift
            return v, i


def expr_text(expr: bytes) -> str:
    """A DWARF expression, spelled roughly as readelf spells it."""
    out: list[str] = []
    i = 0
    try:
        while i < len(expr):
            op = expr[i]
            i += 1
            if 0x70 <= op <= 0x8F:
                v, i = _sleb(expr, i)
                out.append(f"DW_OP_breg{op - 0x70} ({reg_name(op - 0x70)}): {v}")
            elif 0x50 <= op <= 0x6F:
                out.append(f"DW_OP_reg{op - 0x50} ({reg_name(op - 0x50)})")
            elif 0x30 <= op <= 0x4F:
                out.append(f"DW_OP_lit{op - 0x30}")
            elif op == 0x06:
                out.append("DW_OP_deref")
            elif op == 0x23:
                v, i = _uleb(expr, i)
                out.append(f"DW_OP_plus_uconst: {v}")
            elif op == 0x11:
                v, i = _sleb(expr, i)
                out.append(f"DW_OP_consts: {v}")
            elif op == 0x10:
                v, i = _uleb(expr, i)
                out.append(f"DW_OP_constu: {v}")
            else:
                names = {0x22: "plus", 0x1C: "minus", 0x1A: "and", 0x2A: "ge", 0x24: "shl",
                         0x12: "dup", 0x13: "drop", 0x16: "swap", 0x21: "or"}
                if op not in names:
                    out.append(f"DW_OP_0x{op:02x}")
                    break
                out.append(f"DW_OP_{names[op]}")
    except IndexError:
        out.append("<truncated>")
    return "; ".join(out)


def _address_expr(expr: bytes) -> tuple[int, int, int, int] | None:
    """``DW_OP_bregN off [DW_OP_plus_uconst k] [DW_OP_deref [DW_OP_plus_uconst p]]``
    -> (reg, off, derefs, p)."""
    try:
        if not expr or not 0x70 <= expr[0] <= 0x8F:
            return None
        reg = expr[0] - 0x70
        off, i = _sleb(expr, 1)
        derefs = post = 0
        while i < len(expr):
            op = expr[i]
            i += 1
            if op == 0x23:
                k, i = _uleb(expr, i)
                if derefs:
                    post += k
                else:
                    off += k
            elif op == 0x06 and not derefs:
                derefs = 1
            else:
                return None
        return reg, off, derefs, post
    except IndexError:
        return None


def cfa_from_expr(expr: bytes) -> _Cfa:
    a = _address_expr(expr)
    if a is not None and a[2] == 1:
        return (CFA_DEREF, a[0], a[1], "", a[3])
    if a is not None and a[2] == 0:
        return (CFA_REG, a[0], a[1], "", 0)
    return (CFA_EXPR, -1, 0, expr_text(expr), 0)


def _reg_text(kind: int, arg: Any) -> str | None:
    if kind == _R_SAME:
        return None
    if kind == _R_UNDEF:
        return "undefined"
    if kind == _R_REGISTER:
        return reg_name(int(arg))
    if kind == _R_VAL_OFFSET:
        return f"val(cfa{int(arg):+d})"
    if kind == _R_EXPR:
        a = _address_expr(bytes(arg))
        if a is not None and not a[2] and not a[3]:
            return f"at({reg_name(a[0])}{a[1]:+d})"
        return "exp"
    if kind == _R_VAL_EXPR:
        return "vexp"
    return None


def make_rule(cfa: _Cfa, regs: dict[int, _RegRule]) -> CfaRule:
    saved: list[tuple[int, int]] = []
    other: list[tuple[int, str]] = []
    for r in sorted(regs):
        kind, arg = regs[r]
        if kind == _R_OFFSET:
            saved.append((r, int(arg)))
        else:
            t = _reg_text(kind, arg)
            if t is not None:
                other.append((r, t))
    kind, reg, off, expr, post = cfa
    if kind == CFA_UNDEFINED:
        return CfaRule(CFA_UNDEFINED, saved=tuple(saved), other=tuple(other))
    return CfaRule(kind, reg, off, tuple(saved), tuple(other), expr, post)


# ---------------------------------------------------------------------------
# the interpreter
# ---------------------------------------------------------------------------

class CfiError(Exception):
    pass


def _interpret(instructions: list[Any], caf: int, daf: int, loc: int,
               cfa: _Cfa, regs: dict[int, _RegRule], initial: dict[int, _RegRule] | None,
               rows: list[tuple[int, _Cfa, dict[int, _RegRule]]] | None,
               ) -> tuple[int, _Cfa, dict[int, _RegRule]]:
    """Run CFA instructions from state (loc, cfa, regs); append a row to ``rows``
    each time the location advances.  ``initial`` is the CIE's register state
    (for DW_CFA_restore); None while running the CIE itself."""
    stack: list[tuple[_Cfa, dict[int, _RegRule]]] = []
    regs = dict(regs)
    for ins in instructions:
        op = int(ins.opcode)
        a = ins.args
        if op in (_ADVANCE_LOC, _ADV1, _ADV2, _ADV4, _SET_LOC):
            if rows is not None:
                rows.append((loc, cfa, dict(regs)))
            loc = int(a[0]) if op == _SET_LOC else loc + int(a[-1]) * caf
        elif op == _OFFSET or op in (_OFFSET_EXT, _OFFSET_EXT_SF):
            regs[int(a[0])] = (_R_OFFSET, int(a[1]) * daf)
        elif op == _GNU_NEG_OFFSET_EXT:
            regs[int(a[0])] = (_R_OFFSET, -int(a[1]) * daf)
        elif op in (_RESTORE, _RESTORE_EXT):
            r = int(a[0])
            if initial is not None and r in initial:
                regs[r] = initial[r]
            else:
                regs.pop(r, None)
        elif op == _UNDEF:
            regs[int(a[0])] = (_R_UNDEF, None)
        elif op == _SAME:
            regs[int(a[0])] = (_R_SAME, None)
        elif op == _REGISTER:
            regs[int(a[0])] = (_R_REGISTER, int(a[1]))
        elif op == _REMEMBER:
            stack.append((cfa, dict(regs)))
        elif op == _RESTORE_STATE:
            if not stack:
                raise CfiError("DW_CFA_restore_state without DW_CFA_remember_state")
            cfa, regs = stack.pop()
        elif op == _DEF_CFA:
            cfa = (CFA_REG, int(a[0]), int(a[1]), "", 0)
        elif op == _DEF_CFA_SF:
            cfa = (CFA_REG, int(a[0]), int(a[1]) * daf, "", 0)
        elif op == _DEF_CFA_REG:
            if cfa[0] not in (CFA_REG, CFA_UNDEFINED):
                raise CfiError("DW_CFA_def_cfa_register after a CFA expression")
            cfa = (CFA_REG, int(a[0]), cfa[2], "", 0)
        elif op == _DEF_CFA_OFF:
            if cfa[0] != CFA_REG:
                raise CfiError("DW_CFA_def_cfa_offset without a register CFA")
            cfa = (CFA_REG, cfa[1], int(a[0]), "", 0)
        elif op == _DEF_CFA_OFF_SF:
            if cfa[0] != CFA_REG:
                raise CfiError("DW_CFA_def_cfa_offset_sf without a register CFA")
            cfa = (CFA_REG, cfa[1], int(a[0]) * daf, "", 0)
        elif op == _DEF_CFA_EXPR:
            cfa = cfa_from_expr(bytes(a[0]))
        elif op == _EXPRESSION:
            regs[int(a[0])] = (_R_EXPR, bytes(a[1]))
        elif op == _VAL_EXPRESSION:
            regs[int(a[0])] = (_R_VAL_EXPR, bytes(a[1]))
        elif op in (_VAL_OFFSET, _VAL_OFFSET_SF):
            regs[int(a[0])] = (_R_VAL_OFFSET, int(a[1]) * daf)
        elif op in (_NOP, _GNU_ARGS_SIZE):
            pass
        else:
            raise CfiError(f"unknown CFA instruction 0x{op:02x}")
    return loc, cfa, regs


# ---------------------------------------------------------------------------
# reading a section
# ---------------------------------------------------------------------------

def read_cfi(elf: ElfObject) -> CfiInfo:
    """Every FDE of ``.eh_frame`` and ``.debug_frame``, located in its code section
    (read once per image: callers share it and must not modify it)."""
    info = elf.derived.get("cfi")
    if not isinstance(info, CfiInfo):
        info = elf.derived["cfi"] = _read_cfi(elf)
    return info


def _read_cfi(elf: ElfObject) -> CfiInfo:
    info = CfiInfo()
    for name in FRAME_SECTIONS:
        sec = elf.section(name)
        if sec is None or not sec.data:
            continue
        try:
            _read_section(elf, sec.index, name, info)
        except Exception as exc:  # noqa: BLE001 - malformed CFI is a finding, not a crash
            info.errors.append(f"{name}: can't parse: {type(exc).__name__}: {exc}")
    return info


def _exec_section_at(elf: ElfObject, addr: int) -> tuple[int, int] | None:
    for s in elf.sections:
        if s.executable and s.addr <= addr < s.addr + s.size:
            return s.index, addr - s.addr
    return None


def _read_section(elf: ElfObject, sec_index: int, name: str, info: CfiInfo) -> None:
    sec = elf.sections[sec_index]
    data = sec.data
    structs = DWARFStructs(little_endian=True, dwarf_format=32, address_size=8)
    cfi = CallFrameInfo(io.BytesIO(data), len(data), sec.addr, structs,
                        for_eh_frame=name == ".eh_frame")
    entries = cfi.get_entries()
    cie_state: dict[int, tuple[_Cfa, dict[int, _RegRule]]] = {}
    for e in entries:
        if not isinstance(e, FDE):
            continue
        cie = e.cie
        assert cie is not None
        caf = int(cie["code_alignment_factor"])
        daf = int(cie["data_alignment_factor"])
        ra = int(cie["return_address_register"])
        if cie.offset not in cie_state:
            _, ccfa, cregs = _interpret(cie.instructions, caf, daf, 0,
                                        (CFA_UNDEFINED, -1, 0, "", 0), {}, None, None)
            cie_state[cie.offset] = (ccfa, cregs)
        ccfa, cregs = cie_state[cie.offset]
        fmt_bytes = 4 if e.structs.dwarf_format == 32 else 12
        field_off = e.offset + fmt_bytes + (4 if e.structs.dwarf_format == 32 else 8)
        length = int(e["address_range"])
        loc: tuple[int, int] | None
        lsda: tuple[int, int] | None = None
        if elf.relocatable:
            loc = _reloc_target(elf, sec_index, field_off)
            if e.lsda_pointer is not None:
                # the LSDA pointer: the next relocated field, in the augmentation data
                r = elf.reloc_in(sec_index, field_off + 1, field_off + 24)
                if r is not None:
                    lsda = _reloc_target(elf, sec_index, r.offset)
        else:
            loc = _exec_section_at(elf, int(e["initial_location"]))
            if e.lsda_pointer is not None:
                lsda = _data_section_at(elf, int(e.lsda_pointer))
        pc0 = int(e["initial_location"])
        raw: list[tuple[int, _Cfa, dict[int, _RegRule]]] = []
        try:
            end_loc, cfa, regs = _interpret(e.instructions, caf, daf, pc0, ccfa, cregs, cregs,
                                            raw)
        except (CfiError, IndexError, TypeError, ValueError) as exc:
            info.errors.append(f"{name}+0x{e.offset:x}: FDE: {exc}")
            continue
        raw.append((end_loc, cfa, regs))
        secidx, start = loc if loc is not None else (-1, pc0)
        rows: list[tuple[int, CfaRule]] = []
        for pc, c, rg in raw:
            o = start + (pc - pc0)
            if rows and o >= start + length:
                break
            rule = make_rule(c, rg)
            if rows and rows[-1][0] == o:
                rows[-1] = (o, rule)
            elif not rows or rows[-1][1] != rule:
                if rows and o < rows[-1][0]:
                    continue          # DW_CFA_set_loc backwards: keep the first
                rows.append((o, rule))
        if not rows:
            rows.append((start, make_rule(ccfa, cregs)))
        secname = elf.sections[secidx].name if 0 <= secidx < len(elf.sections) else "?"
        info.fdes.append(FdeTable(name, e.offset, secidx, secname, start, start + length,
                                  tuple(rows), ra, lsda))


def _reloc_target(elf: ElfObject, sec_index: int, off: int) -> tuple[int, int] | None:
    """(section, offset) a PC32/64 relocation at ``off`` points to (S + A)."""
    r = elf.reloc_at(sec_index, off)
    if r is None:
        return None
    sym = elf.symbols[r.sym]
    return (sym.shndx, sym.offset + r.addend) if sym.defined else None


def _data_section_at(elf: ElfObject, addr: int) -> tuple[int, int] | None:
    for s in elf.sections:
        if s.data and s.addr and s.addr <= addr < s.addr + len(s.data):
            return s.index, addr - s.addr
    return None


# ---------------------------------------------------------------------------
# LSDA (.gcc_except_table): where exceptions land
# ---------------------------------------------------------------------------

_DW_EH_PE_OMIT = 0xFF


def _read_encoded(data: bytes, i: int, enc: int) -> tuple[int, int]:
    fmt = enc & 0x0F
    if fmt == 0x01:
        return _uleb(data, i)
    if fmt == 0x09:
        return _sleb(data, i)
    size, signed = {0x00: (8, False), 0x02: (2, False), 0x03: (4, False), 0x04: (8, False),
                    0x0A: (2, True), 0x0B: (4, True), 0x0C: (8, True)}[fmt]
    if i + size > len(data):
        raise CfiError("LSDA truncated")
    return int.from_bytes(data[i:i + size], "little", signed=signed), i + size


def call_sites(elf: ElfObject, fde: FdeTable) -> list[tuple[int, int, int]]:
    """The FDE's LSDA call-site table as section offsets in the FDE's section:
    ``(start, end, landing pad)`` for every call-site entry that has a landing pad.

    Landing pads are relative to LPStart, which GCC omits (the function's start).
    An LSDA that names its own LPStart or is unreadable yields nothing."""
    if fde.lsda is None:
        return []
    sec = elf.sections[fde.lsda[0]]
    data, i = sec.data, fde.lsda[1]
    out: list[tuple[int, int, int]] = []
    try:
        if data[i] != _DW_EH_PE_OMIT:
            return []
        i += 1
        ttype_enc = data[i]
        i += 1
        if ttype_enc != _DW_EH_PE_OMIT:
            _, i = _uleb(data, i)
        cs_enc = data[i]
        i += 1
        cs_len, i = _uleb(data, i)
        end = i + cs_len
        while i < end:
            start, i = _read_encoded(data, i, cs_enc)
            length, i = _read_encoded(data, i, cs_enc)
            lp, i = _read_encoded(data, i, cs_enc)
            _, i = _uleb(data, i)
            if lp:
                out.append((fde.start + start, fde.start + start + length, fde.start + lp))
    except (IndexError, KeyError, CfiError):
        return out
    return out
