"""objtool's special sections: ``.altinstructions``, ``__jump_table``, ``__ex_table``.

Entries are read as objtool 6.1's special.c reads them (every entry of every
section, relocations first), then turned into alternatives of the original
instruction as check.c's add_special_section_alts() does, with its checks: each
problem objtool treats as fatal is recorded as such (see :class:`cfg.Problem`)
and the entry is skipped, so the rest of the object is still analysed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from framevet.cfg.program import AltGroup, Program
from framevet.decode import insn as d
from framevet.load.elf import Reloc

X86_FEATURE_POPCNT = 4 * 32 + 23
X86_FEATURE_SMAP = 9 * 32 + 20

#: (section, entry size, is an alternatives group, is a jump label)
_SECTIONS = ((".altinstructions", 12, True, False), ("__jump_table", 16, False, True),
             ("__ex_table", 12, False, False))
#: instruction kinds apply_alternatives() relocates when first in a replacement
_RELOCATABLE_FIRST = (d.CALL, d.JUMP_COND, d.JUMP_UNCOND, d.JUMP_DYNAMIC, d.JUMP_DYNAMIC_COND)


@dataclass(slots=True)
class SpecialAlt:
    group: bool
    jump_label: bool
    orig: tuple[int, int]
    new: tuple[int, int]
    orig_len: int = 0
    new_len: int = 0
    skip_orig: bool = False
    skip_alt: bool = False


def read_special_alts(prog: Program) -> list[SpecialAlt]:
    """special_get_alts(): every usable entry, in section and entry order."""
    elf = prog.elf
    out: list[SpecialAlt] = []
    for name, size, group, jump_label in _SECTIONS:
        sec = elf.section(name)
        if sec is None:
            continue
        if sec.size % size:
            prog.problem("special-section-size", f"{name} size not a multiple of {size}",
                         fatal=True)
            continue
        data = sec.data
        rmap: dict[int, Reloc] = {}
        for r in elf.relocs.get(sec.index, ()):
            rmap.setdefault(r.offset, r)
        for e in range(0, len(data) - size + 1, size):
            alt = SpecialAlt(group, jump_label, (-1, 0), (-1, 0))
            if group:
                alt.orig_len, alt.new_len = data[e + 10], data[e + 11]
                feature = struct.unpack_from("<H", data, e + 8)[0]
                if feature == X86_FEATURE_SMAP:
                    # walk the stac/clac side only when validating uaccess
                    alt.skip_orig, alt.skip_alt = prog.uaccess, not prog.uaccess
                elif feature == X86_FEATURE_POPCNT:
                    alt.skip_orig = True
            orig = _target(prog, rmap, sec.index, e, "can't find orig reloc")
            if orig is None:
                continue
            alt.orig = orig
            if not group or alt.new_len:
                new = _target(prog, rmap, sec.index, e + 4, "can't find new reloc")
                if new is None:
                    continue
                if new[1] >= 0x7FFFFFF0:            # objtool's _ASM_EXTABLE_EX hack
                    new = (new[0], new[1] - 0x7FFFFFF0)
                alt.new = new
            if jump_label and e + 8 not in rmap:
                prog.problem("special-reloc-missing", "can't find key reloc",
                             at=(sec.index, e + 8), fatal=True)
                continue
            if orig[0] < 0 or (alt.new[0] < 0 and (not group or alt.new_len)):
                continue        # against an undefined symbol: nothing objtool can use either
            out.append(alt)
    return out


def _target(prog: Program, rmap: dict[int, Reloc], sec: int, off: int,
            missing: str) -> tuple[int, int] | None:
    r = rmap.get(off)
    if r is None:
        prog.problem("special-reloc-missing", missing, at=(sec, off), fatal=True)
        return None
    sym = prog.elf.symbols[r.sym]
    return (sym.shndx, sym.offset + r.addend) if sym.defined else (-1, 0)


def add_special_alts(prog: Program, target: list[int]) -> None:
    """add_special_section_alts(): alternatives, jump labels and exception fixups."""
    for alt in read_special_alts(prog):
        og = prog.gid(*alt.orig)
        if og < 0:
            prog.problem("alternative-orig-missing", "special: can't find orig instruction",
                         at=alt.orig, fatal=True)
            continue
        ng = -1
        if not alt.group or alt.new_len:
            ng = prog.gid(*alt.new)
            if ng < 0:
                prog.problem("alternative-new-missing", "special: can't find new instruction",
                             at=alt.new, fatal=True)
                continue
        if alt.group:
            if not alt.orig_len:
                prog.problem("empty-alternative-entry", "empty alternative entry", og)
                continue
            ng = _group_alt(prog, alt, og, ng, target)
        elif alt.jump_label:
            k = prog.kind[og]
            if k != d.JUMP_UNCOND and k != d.NOP:
                prog.problem("unsupported-instruction-at-jump-label",
                             "unsupported instruction at jump label", og, fatal=True)
                continue
            if k == d.JUMP_UNCOND:
                ng = prog.next_same_sec(og)
                if ng < 0:
                    continue
        prog.alts.setdefault(og, []).append((ng, alt.skip_orig))
        if alt.skip_alt:
            prog.ignore_alts[og] = 1


def _group_alt(prog: Program, alt: SpecialAlt, og: int, ng: int, target: list[int]) -> int:
    """handle_group_alt(): one ``.altinstructions`` entry.  Like objtool, every entry
    gets a fresh group for the original instructions: with ALTERNATIVE_2 only the last
    replacement shares the per-byte state array that ORC is generated from.  Returns
    what the walk follows: the replacement's first instruction, or for an empty
    replacement a virtual NOP encoded as -1 - group."""
    orig_end = alt.orig[1] + alt.orig_len
    last = g = og
    while g >= 0 and prog.off[g] < orig_end:
        last = g
        g = prog.next_same_sec(g)
    ogroup = len(prog.groups)
    prog.groups.append(AltGroup(og, last, -1, alt.orig_len, [None] * alt.orig_len))
    for g in range(og, last + 1):
        prog.alt_group[g] = ogroup
    func = prog.func[og]
    ngroup = len(prog.groups)
    if not alt.new_len:
        prog.groups.append(AltGroup(-1, -1, ogroup, 0, prog.groups[ogroup].cfi))
        return -1 - ngroup
    new_off = alt.new[1]
    new_end = new_off + alt.new_len
    ignore = prog.ignore_alts[og]
    nlast = g = ng
    reloc_in = prog.elf.reloc_in
    while g >= 0 and prog.off[g] < new_end:
        nlast = g
        prog.alt_group[g] = ngroup
        prog.func[g] = func
        if ignore:
            prog.ignored.add(g)
        off, k = prog.off[g], prog.kind[g]
        if (reloc_in(prog.sec_of[g], off, off + prog.length[g]) is not None
                and not (off == new_off and k in _RELOCATABLE_FIRST)):
            prog.problem("unsupported-relocation-in-alternatives",
                         "unsupported relocation in alternatives section", g, fatal=True)
        elif ((k == d.JUMP_COND or k == d.JUMP_UNCOND) and target[g] == new_end
              and target[g] != off + prog.length[g]):
            # a jump to the end of the replacement continues after the original
            prog.jump_dest[g] = prog.next_same_sec(last)
            if prog.jump_dest[g] < 0:
                prog.problem("alternative-jump-dest-missing",
                             "can't find alternative jump destination", g, fatal=True)
        g = prog.next_same_sec(g)
    prog.groups.append(AltGroup(ng, nlast, ogroup, alt.new_len, prog.groups[ogroup].cfi))
    return ng
