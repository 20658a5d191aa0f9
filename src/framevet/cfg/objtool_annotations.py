"""objtool's ``.discard.*`` annotations, read with objtool 6.1's checks.

Each reader is one of check.c's (add_ignores, add_ignore_alternatives,
read_noendbr_hints, read_intra_function_calls, add_dead_ends, read_unwind_hints,
read_retpoline_hints, read_instr_hints) and is called by :func:`cfg.build` at
the point objtool's ``decode_sections()`` calls it.  A malformed annotation is
a :class:`cfg.Problem` (fatal where objtool abandons the file); the reader
skips that entry and goes on.  The relocation list is
``.rela.discard.<name>`` in offset order, which is how the assembler emits it.

A linked module has none of these sections (its linker script discards them);
:mod:`framevet.cfg.program` infers what it can instead.
"""

from __future__ import annotations

import struct

from framevet.cfg.program import (
    P_DEAD_ENDS,
    P_HINTS,
    P_IGNORE_ALTS,
    P_IGNORES,
    P_INSTR,
    P_INTRA,
    P_NOENDBR,
    P_RETPOLINE,
    Program,
)
from framevet.decode import insn as d
from framevet.decode.state import (
    CFA_BASE,
    CFA_OFF,
    END,
    REGS,
    STATE_LEN,
    T_CALL,
    T_ENTRY,
    T_FUNC,
    T_REGS_PARTIAL,
    T_RESTORE,
    T_SAVE,
    TYPE,
    UNDEFINED,
    blank_state,
    func_entry_state,
)
from framevet.load.elf import (
    SHT_REL,
    SHT_RELA,
    STB_GLOBAL,
    STT_FUNC,
    STT_SECTION,
    Reloc,
    Symbol,
)

#: ORC register numbers in unwind hints -> CFA base (objtool's arch_decode_hint_reg)
HINT_REG = {0: UNDEFINED, 5: d.SP, 4: d.BP, 9: -3, 6: d.R10, 7: d.R13, 3: d.DI, 2: d.DX}
HINT_SIZE = 12
_BAD_TYPE = "bad-annotation-reloc"
_MISSING = "annotation-target-missing"


def _relocs(prog: Program, name: str) -> tuple[str, list[tuple[Reloc, Symbol]]] | None:
    """``.rela<name>``'s name and its relocations with their symbols, or None."""
    elf = prog.elf
    sec = elf.section(name)
    if sec is None or sec.index not in elf.relocs:
        return None
    rname = next((s.name for s in elf.sections
                  if s.type in (SHT_RELA, SHT_REL) and s.info == sec.index), ".rela" + name)
    return rname, [(r, elf.symbols[r.sym]) for r in elf.relocs[sec.index]]


def _section_insns(prog: Program, name: str, bad: str) -> list[int]:
    """The instruction each relocation of ``name`` points at (section symbol + addend),
    reporting non-section symbols and misses as objtool does (both fatal)."""
    found = _relocs(prog, name)
    if found is None:
        return []
    rname, rels = found
    out = []
    for r, sym in rels:
        if sym.type != STT_SECTION:
            prog.problem(_BAD_TYPE, f"unexpected relocation symbol type in {rname}", fatal=True)
            continue
        g = prog.gid(sym.shndx, r.addend)
        if g < 0:
            prog.problem(_MISSING, bad, fatal=True)
            continue
        out.append(g)
    return out


def read_ignores(prog: Program) -> None:
    """STACK_FRAME_NON_STANDARD: the function (and its .cold part) is not validated."""
    prog.phase = P_IGNORES
    found = _relocs(prog, ".discard.func_stack_frame_non_standard")
    if found is None:
        return
    rname, rels = found
    starts = {(f.sec, f.start): fi for fi, f in enumerate(prog.functions) if f.canonical}
    for r, sym in rels:
        if sym.type == STT_FUNC:
            g = prog.gid(sym.shndx, sym.offset)
            fi = prog.func[g] if g >= 0 else -1
        elif sym.type == STT_SECTION:
            fi = starts.get((sym.shndx, r.addend), -1)
        else:
            prog.problem(_BAD_TYPE, f"unexpected relocation symbol type in {rname}: {sym.type}")
            continue
        if fi >= 0:
            prog.ignored.update(prog.func_insns(fi))


def read_ignore_alts(prog: Program) -> None:
    """ANNOTATE_IGNORE_ALTERNATIVE: the alternatives of that instruction are not walked."""
    prog.phase = P_IGNORE_ALTS
    for g in _section_insns(prog, ".discard.ignore_alts", "bad .discard.ignore_alts entry"):
        prog.ignore_alts[g] = 1


def read_noendbr(prog: Program) -> None:
    """ANNOTATE_NOENDBR (used by --ibt only): the target must be an instruction."""
    prog.phase = P_NOENDBR
    found = _relocs(prog, ".discard.noendbr")
    for r, sym in found[1] if found else ():
        g = prog.gid(sym.shndx, sym.offset + r.addend)
        if g < 0:
            prog.problem(_MISSING, "bad .discard.noendbr entry", fatal=True)
        else:
            prog.noendbr.add(g)


def read_intra_function_calls(prog: Program, target: list[int]) -> None:
    """ANNOTATE_INTRA_FUNCTION_CALL: the call is a jump that keeps its push."""
    prog.phase = P_INTRA
    for g in _section_insns(prog, ".discard.intra_function_calls",
                            "bad .discard.intra_function_call entry"):
        if prog.kind[g] != d.CALL:
            prog.problem("intra-function-call-not-direct", "intra_function_call not a direct call",
                         g, fatal=True)
            continue
        prog.kind[g] = d.JUMP_UNCOND
        prog.call_dest[g] = None
        prog.ops[g] = ((d.D_PUSH, 0, 0, d.S_CONST, 0, 0),)
        prog.intra_calls.add(g)
        dest = prog.gid(prog.sec_of[g], target[g])
        if dest < 0:
            prog.problem("intra-function-call-dest-missing", f"can't find call dest at "
                         f"{prog.section_name(prog.sec_of[g])}+0x{target[g]:x}", g, fatal=True)
            continue
        prog.jump_dest[g] = dest


def read_dead_ends(prog: Program) -> None:
    """ANNOTATE_UNREACHABLE / ANNOTATE_REACHABLE: the label follows the instruction
    they mark (objtool takes the previous instruction in its global list)."""
    prog.phase = P_DEAD_ENDS
    for name, what, value in ((".discard.unreachable", "unreachable", 1),
                              (".discard.reachable", "reachable", 0)):
        found = _relocs(prog, name)
        if found is None:
            continue
        rname, rels = found
        for r, sym in rels:
            if sym.type != STT_SECTION:
                prog.problem(_BAD_TYPE, f"unexpected relocation symbol type in {rname}",
                             fatal=True)
                continue
            g = prog.gid(sym.shndx, r.addend)
            if g >= 0:
                g -= 1
            elif r.addend == prog.elf.sections[sym.shndx].size:
                ds = prog.secmap.get(sym.shndx)
                g = prog.base[sym.shndx] + len(ds) - 1 if ds is not None and len(ds) else -1
            if g < 0:
                prog.problem(_MISSING, f"can't find {what} insn at "
                             f"{prog.section_name(sym.shndx)}+0x{r.addend:x}", fatal=True)
                continue
            prog.dead_end[g] = value


def read_unwind_hints(prog: Program) -> None:
    """UNWIND_HINT_*: 12-byte records {u32 ip; s16 sp_offset; u8 sp_reg; u8 type; u8 end}."""
    prog.phase = P_HINTS
    elf = prog.elf
    sec = elf.section(".discard.unwind_hints")
    if sec is None:
        return
    if sec.index not in elf.relocs:
        prog.problem("unwind-hints-without-rela", "missing .rela.discard.unwind_hints section",
                     fatal=True)
        return
    if sec.size % HINT_SIZE:
        prog.problem("unwind-hints-size-mismatch", "struct unwind_hint size mismatch",
                     fatal=True)
    func_cfi = _key(func_entry_state())
    cfi = blank_state()
    for i in range(len(sec.data) // HINT_SIZE):
        r = elf.reloc_at(sec.index, HINT_SIZE * i)
        if r is None:
            prog.problem("unwind-hint-reloc-missing", f"can't find reloc for unwind_hints[{i}]",
                         fatal=True)
            continue
        g = prog.gid(elf.symbols[r.sym].shndx, r.addend)
        if g < 0:
            prog.problem("unwind-hint-insn-missing", f"can't find insn for unwind_hints[{i}]",
                         fatal=True)
            continue
        sp_off, sp_reg, typ, end = struct.unpack_from("<hBBB", sec.data, HINT_SIZE * i + 4)
        if typ == T_SAVE:
            prog.hint_save.add(g)
            continue
        if typ == T_RESTORE:
            prog.hint_restore.add(g)
            continue
        if typ == T_REGS_PARTIAL and _global_at(prog, g):
            if prog.ibt and prog.kind[g] != d.ENDBR and g not in prog.noendbr:
                prog.problem("iret-regs-hint-without-endbr",
                             "UNWIND_HINT_IRET_REGS without ENDBR", g)
            prog.entry.add(g)
        if typ == T_ENTRY:
            typ = T_CALL
            prog.entry.add(g)
        if typ == T_FUNC:
            prog.hint_cfi[g] = func_cfi
            continue
        base = HINT_REG.get(sp_reg)
        if base is None:
            prog.problem("unsupported-unwind-hint-sp-reg",
                         f"unsupported unwind_hint sp base reg {sp_reg}", g, fatal=True)
            continue
        old = prog.hint_cfi.get(g)
        if old is not None:         # a second hint for the instruction starts from the first
            cfi[0:9] = old[0:9]
            cfi[REGS:STATE_LEN] = old[9:]
        cfi[CFA_BASE] = base
        cfi[CFA_OFF] = sp_off
        cfi[TYPE] = typ
        cfi[END] = end
        prog.hint_cfi[g] = _key(cfi)


def _global_at(prog: Program, g: int) -> bool:
    """objtool's find_symbol_by_offset() at the instruction is a global symbol."""
    sec, off = prog.sec_of[g], prog.off[g]
    for s in prog.elf.symbols:
        if s.shndx == sec and s.offset == off and s.type != STT_SECTION and s.defined:
            return s.bind == STB_GLOBAL
    return False


def _key(state: list[int]) -> tuple[int, ...]:
    return tuple(state[0:9]) + tuple(state[REGS:STATE_LEN])


def read_retpoline_hints(prog: Program) -> None:
    """ANNOTATE_RETPOLINE_SAFE (and ANNOTATE_UNRET_SAFE)."""
    prog.phase = P_RETPOLINE
    safe_kinds = (d.JUMP_DYNAMIC, d.CALL_DYNAMIC, d.RETURN, d.NOP)
    for g in _section_insns(prog, ".discard.retpoline_safe", "bad .discard.retpoline_safe entry"):
        if prog.kind[g] not in safe_kinds:
            prog.problem("retpoline-safe-not-indirect",
                         "retpoline_safe hint not an indirect jump/call/ret/nop", g, fatal=True)
            continue
        prog.retpoline_safe.add(g)


def read_instr_hints(prog: Program) -> None:
    """instrumentation_begin()/end() marks (noinstr validation); instr_begin is read only
    when instr_end exists, as objtool does."""
    prog.phase = P_INSTR
    if _relocs(prog, ".discard.instr_end") is None:
        return
    for step, name in ((-1, "instr_end"), (1, "instr_begin")):
        for g in _section_insns(prog, f".discard.{name}", f"bad .discard.{name} entry"):
            prog.instr[g] = prog.instr.get(g, 0) + step
