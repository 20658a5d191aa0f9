"""Switch jump tables: which indirect jumps dispatch through a table, and where to.

objtool 6.1's search, kept exactly for kernel parity: walk back from the
indirect jump to an instruction with a relocation into anonymous ``.rodata``
(or ``.rodata..c_jump_table``); the table is the run of consecutive 8-byte
relocations there that land in the same function.
"""

from __future__ import annotations

from framevet import decode as d
from framevet.cfg import Program
from framevet.load.elf import R_X86_64_PC32, STT_FILE, STT_SECTION, Reloc, Symbol


def add_jump_tables(prog: Program) -> None:
    elf = prog.elf
    rodata = {s.index for s in elf.sections
              if s.name.startswith(".rodata") and ".str1." not in s.name}
    if not rodata:
        return
    syms = elf.symbols
    data_syms: dict[int, list[Symbol]] = {}
    for s in syms:
        if s.defined and s.shndx in rodata and s.type not in (STT_SECTION, STT_FILE):
            data_syms.setdefault(s.shndx, []).append(s)
    starts: set[tuple[int, int]] = set()
    tables: list[tuple[int, int, int]] = []
    for fi, f in enumerate(prog.functions):
        if not f.canonical or f.parent != fi:
            continue
        insns = prog.func_insns(fi)
        first_src: dict[int, int] = {}
        last = insns[0] if insns else -1
        pos = {g: i for i, g in enumerate(insns)}
        for g in insns:
            jd = prog.jump_dest[g]
            if (prog.kind[g] == d.JUMP_UNCOND and jd >= 0 and prog.off[g] > prog.off[last]
                    and prog.off[jd] > prog.off[g] and jd not in first_src):
                first_src[jd] = g
                last = jd
            if prog.kind[g] != d.JUMP_DYNAMIC:
                continue
            found = _find_jump_table(prog, fi, g, insns, pos, first_src, rodata, data_syms)
            if found is not None:
                starts.add(found[:2])
                tables.append((g, *found))
    for g, tsec, toff in tables:
        _add_jump_table(prog, g, tsec, toff, starts)


def _find_jump_table(prog: Program, fi: int, orig: int, insns: list[int], pos: dict[int, int],
                     first_src: dict[int, int], rodata: set[int],
                     data_syms: dict[int, list[Symbol]]) -> tuple[int, int] | None:
    elf = prog.elf
    g = orig
    while g >= 0 and prog.func[g] >= 0 and prog.functions[prog.func[g]].parent == fi:
        if g != orig and prog.kind[g] == d.JUMP_DYNAMIC:
            break
        jd = prog.jump_dest[g]
        if prog.kind[g] == d.JUMP_UNCOND and jd >= 0 and (
                prog.off[jd] <= prog.off[g] or prog.off[jd] > prog.off[orig]):
            break
        r = elf.reloc_in(prog.sec_of[g], prog.off[g], prog.off[g] + prog.length[g])
        if r is not None:
            sym = elf.symbols[r.sym]
            if sym.type == STT_SECTION and sym.shndx in rodata:
                toff = r.addend + (4 if r.type == R_X86_64_PC32 else 0)
                tsec = sym.shndx
                named = any(s.offset <= toff < s.offset + s.size
                            for s in data_syms.get(tsec, ()))
                tname = elf.sections[tsec].name
                entry = elf.reloc_at(tsec, toff)
                if entry is not None and (not named or tname == ".rodata..c_jump_table"):
                    esym = elf.symbols[entry.sym]
                    dg = prog.gid(esym.shndx, esym.offset + entry.addend) if esym.defined else -1
                    if (dg >= 0 and prog.func[dg] >= 0
                            and prog.functions[prog.func[dg]].parent == fi):
                        if r.type == R_X86_64_PC32:
                            prog.ignore_unreachables = True
                        return tsec, toff
        src = first_src.get(g)
        if src is not None:
            g = src
        else:
            i = pos.get(g, 0) - 1
            g = insns[i] if i >= 0 else -1
    return None


def _add_jump_table(prog: Program, g: int, tsec: int, toff: int,
                    starts: set[tuple[int, int]]) -> None:
    elf = prog.elf
    pf = prog.functions[prog.functions[prog.func[g]].parent]
    rels: list[Reloc] = elf.relocs.get(tsec, [])
    i = next((k for k, r in enumerate(rels) if r.offset == toff), None)
    if i is None:
        return
    prev = -1
    added = 0
    for r in rels[i:]:
        if r.offset != toff and (tsec, r.offset) in starts:
            break
        if prev >= 0 and r.offset != prev + 8:
            break
        sym = elf.symbols[r.sym]
        if not sym.defined:
            break
        if sym.shndx == pf.sec and sym.offset + r.addend == pf.start:
            break
        dg = prog.gid(sym.shndx, sym.offset + r.addend)
        if dg < 0 or prog.func[dg] < 0 or prog.functions[prog.func[dg]].parent != \
                prog.functions[prog.func[g]].parent:
            break
        prog.alts.setdefault(g, []).append((dg, False))
        prev = r.offset
        added += 1
    if added:
        prog.jump_table_insn.add(g)
    else:
        prog.notes.append((g, "can't find switch jump table"))
