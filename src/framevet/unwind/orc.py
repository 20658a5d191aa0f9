"""Kernel ORC: entries from the stack states, objtool's dump text, ELF output.

``struct orc_entry`` (6 bytes, little endian): s16 sp_offset, s16 bp_offset,
byte 4 = sp_reg | bp_reg << 4, byte 5 = type | end << 2.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from framevet.cfg.program import SKIP_ORC_SECTIONS, Program
from framevet.decode import insn as d
from framevet.decode.state import (
    BP_INDIRECT,
    CFA,
    CFA_BASE,
    CFA_OFF,
    END,
    SP_INDIRECT,
    TYPE,
    UNDEFINED,
)
from framevet.stack.walker import WalkResult

ORC_REG_UNDEFINED, ORC_REG_PREV_SP, ORC_REG_DX, ORC_REG_DI = 0, 1, 2, 3
ORC_REG_BP, ORC_REG_SP, ORC_REG_R10, ORC_REG_R13 = 4, 5, 6, 7
ORC_REG_BP_INDIRECT, ORC_REG_SP_INDIRECT = 8, 9

_CFA_TO_ORC = {
    d.SP: ORC_REG_SP, SP_INDIRECT: ORC_REG_SP_INDIRECT, d.BP: ORC_REG_BP,
    BP_INDIRECT: ORC_REG_BP_INDIRECT, d.R10: ORC_REG_R10, d.R13: ORC_REG_R13,
    d.DI: ORC_REG_DI, d.DX: ORC_REG_DX,
}
_REG_NAME = {ORC_REG_PREV_SP: "prevsp", ORC_REG_DX: "dx", ORC_REG_DI: "di", ORC_REG_BP: "bp",
             ORC_REG_SP: "sp", ORC_REG_R10: "r10", ORC_REG_R13: "r13"}
_TYPE_NAME = {0: "call", 1: "regs", 2: "regs (partial)"}

#: (sp_offset, bp_offset, sp_reg, bp_reg, type, end)
OrcEntry = tuple[int, int, int, int, int, int]
NULL_ENTRY: OrcEntry = (0, 0, ORC_REG_UNDEFINED, ORC_REG_UNDEFINED, 0, 0)
BP_BASE_INDEX = 9 + 2 * d.BP


@dataclass(slots=True)
class OrcRow:
    section: int
    offset: int
    entry: OrcEntry


def _s16(v: int) -> int:
    v &= 0xFFFF
    return v - 0x10000 if v & 0x8000 else v


def entry_for(cfi: tuple[int, ...] | None, problems: list[str] | None = None) -> OrcEntry:
    if cfi is None:
        return NULL_ENTRY
    end = cfi[END]
    base = cfi[CFA_BASE]
    if base == UNDEFINED:
        return (0, 0, ORC_REG_UNDEFINED, ORC_REG_UNDEFINED, 0, end)
    sp_reg = _CFA_TO_ORC.get(base)
    if sp_reg is None:
        if problems is not None:
            problems.append(f"unknown CFA base reg {base}")
        return (0, 0, ORC_REG_UNDEFINED, ORC_REG_UNDEFINED, 0, end)
    bp_base, bp_off = cfi[BP_BASE_INDEX], cfi[BP_BASE_INDEX + 1]
    if bp_base == UNDEFINED:
        bp_reg = ORC_REG_UNDEFINED
    elif bp_base == CFA:
        bp_reg = ORC_REG_PREV_SP
    elif bp_base == d.BP:
        bp_reg = ORC_REG_BP
    else:
        if problems is not None:
            problems.append(f"unknown BP base reg {bp_base}")
        bp_reg = ORC_REG_UNDEFINED
    return (_s16(cfi[CFA_OFF]), _s16(bp_off), sp_reg, bp_reg, cfi[TYPE], end)


def generate(prog: Program, result: WalkResult) -> list[OrcRow]:
    """ORC rows in objtool's order: sections in ELF order, entries where the state changes.

    None when objtool would write none: it abandoned the file (a fatal decode or
    annotation problem), a CFA base cannot be encoded, or an unlinked object already
    has an ``.orc_unwind`` section."""
    if prog.aborted is not None or unknown_cfa_base(prog, result) is not None:
        return []
    rows = orc_rows(prog, result)
    if rows and already_has_orc(prog):
        return []
    return rows


def already_has_orc(prog: Program) -> bool:
    """objtool refuses to add ORC twice ("file already has .orc_unwind section");
    a linked module's own ORC is what framevet regenerates, so only unlinked ones."""
    return prog.strict and prog.elf.section(".orc_unwind") is not None


_ENCODABLE = frozenset(_CFA_TO_ORC) | {UNDEFINED}


def unknown_cfa_base(prog: Program, result: WalkResult) -> tuple[int, int] | None:
    """objtool's "unknown CFA base reg": (gid, base) of the first instruction in ORC
    order whose CFA is based on a register ORC cannot name (e.g. DRAP in %rcx)."""
    if all(c[CFA_BASE] in _ENCODABLE for c in result.states):
        return None
    cfi_l = result.cfi
    for ds in prog.sections:
        if ds.name in SKIP_ORC_SECTIONS or ds.name.startswith(".discard."):
            continue
        g = prog.base[ds.index]
        stop = g + len(ds)
        while g < stop:
            grp = prog.alt_group.get(g)
            if grp is None:
                c = cfi_l[g]
                if c is not None and c[CFA_BASE] not in _ENCODABLE:
                    return g, c[CFA_BASE]
                g += 1
                continue
            ag = prog.groups[grp]
            arr: list[Any] = ag.cfi
            for ac in arr:
                if ac is not None and ac[CFA_BASE] not in _ENCODABLE:
                    return g, int(ac[CFA_BASE])
            g = ag.last + 1
    return None


def orc_rows(prog: Program, result: WalkResult) -> list[OrcRow]:
    """The ORC rows of the walk, whether or not objtool would write them."""
    rows: list[OrcRow] = []
    cfi_l = result.cfi
    groups, alt_group = prog.groups, prog.alt_group
    for ds in prog.sections:
        sec = prog.elf.sections[ds.index]
        if sec.name in SKIP_ORC_SECTIONS or sec.name.startswith(".discard."):
            continue
        prev: OrcEntry = NULL_ENTRY
        empty = True
        base = prog.base[ds.index]
        g = base
        stop = base + len(ds)
        last_cfi: object = object()
        while g < stop:
            grp = alt_group.get(g)
            if grp is None:
                c = cfi_l[g]
                if c is not last_cfi:
                    last_cfi = c
                    e = entry_for(c)
                    if e != prev:
                        rows.append(OrcRow(ds.index, prog.off[g], e))
                        prev = e
                        empty = False
                g += 1
                continue
            ag = groups[grp]
            first_off = prog.off[ag.first]
            span = prog.off[ag.last] + prog.length[ag.last] - first_off
            arr: list[Any] = ag.cfi
            for i in range(min(span, len(arr))):
                ac = arr[i]
                if ac is None:
                    continue
                e = entry_for(ac)
                if e != prev:
                    rows.append(OrcRow(ds.index, first_off + i, e))
                    prev = e
                    empty = False
            last_cfi = object()
            g = ag.last + 1
        if not empty:
            rows.append(OrcRow(ds.index, sec.size, NULL_ENTRY))
    return rows


def format_reg(reg: int, off: int) -> str:
    if reg == ORC_REG_BP_INDIRECT:
        return f"(bp{off:+d})"
    if reg == ORC_REG_SP_INDIRECT:
        return f"(sp){off:+d}"
    if reg == ORC_REG_UNDEFINED:
        return "(und)"
    return f"{_REG_NAME.get(reg, '?')}{off:+d}"


def format_entry(e: OrcEntry) -> str:
    sp_off, bp_off, sp_reg, bp_reg, typ, end = e
    return (f" sp:{format_reg(sp_reg, sp_off)} bp:{format_reg(bp_reg, bp_off)}"
            f" type:{_TYPE_NAME.get(typ, '?')} end:{end}")


def dump_text(prog: Program, rows: list[OrcRow]) -> str:
    """Exactly what ``objtool --dump=orc`` prints for these rows."""
    names = {i: s.name for i, s in enumerate(prog.elf.sections)}
    return "".join(f"{names[r.section]}+{r.offset:x}:{format_entry(r.entry)}\n" for r in rows)


def pack_entry(e: OrcEntry) -> bytes:
    sp_off, bp_off, sp_reg, bp_reg, typ, end = e
    return struct.pack("<hhBB", sp_off, bp_off, (sp_reg & 0xF) | (bp_reg & 0xF) << 4,
                       (typ & 3) | (end & 1) << 2)


def unpack_entry(b: bytes) -> OrcEntry:
    sp_off, bp_off, regs, flags = struct.unpack("<hhBB", b)
    return (sp_off, bp_off, regs & 0xF, regs >> 4, flags & 3, (flags >> 2) & 1)
