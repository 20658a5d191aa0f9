"""Control flow: functions, branch and call destinations, alternatives, jump tables.

All instructions of an object get one global number (``gid``); a section's
instructions are contiguous.  Per-instruction facts live in parallel lists on
:class:`Program`, so the CFA walk works on integers.

What objtool learns from ``.discard.*`` annotations that a linked ``.ko`` no
longer has is inferred here from what the link keeps:

* WARN()'s ``ud2`` is reachable when ``__bug_table`` flags it BUGFLAG_WARNING;
* a ``call`` to a local label (RSB stuffing) is an intra-function call: a jump
  that keeps its push;
* a ``.cold`` part's parent is looked up in the same source file first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from framevet import decode as d
from framevet.decode import DecodedSection, decode_section
from framevet.load.elf import (
    R_X86_64_PC32,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Symbol,
)
from framevet.noreturn import GLOBAL_NORETURNS as GLOBAL_NORETURNS
from framevet.noreturn import USER_NORETURNS as USER_NORETURNS
from framevet.noreturn import is_noreturn as is_noreturn
from framevet.noreturn import is_sibling_call as is_sibling_call

SKIP_ORC_SECTIONS = (".altinstr_replacement", ".altinstr_aux")
X86_FEATURE_POPCNT = 4 * 32 + 23
X86_FEATURE_SMAP = 9 * 32 + 20
BUGFLAG_WARNING = 1


@dataclass
class Function:
    sym: Symbol
    sec: int
    start: int
    end: int
    name: str
    #: index of the parent function for ``X.cold`` parts (itself otherwise)
    parent: int = -1
    #: index of the ``.cold`` child, if any
    child: int = -1
    #: canonical alias (objtool walks only the canonical one)
    canonical: bool = True
    file_group: int = 0


@dataclass
class AltGroup:
    first: int
    last: int
    #: the original group for a replacement group (-1 for an original group)
    orig: int = -1
    size: int = 0
    #: per byte offset: interned CFA state of the instruction starting there
    cfi: list[object] = field(default_factory=list)


@dataclass
class Program:
    """An object's instructions with everything the walk needs, as gid-indexed lists."""

    elf: ElfObject
    sections: list[DecodedSection]
    base: dict[int, int]
    sec_of: list[int]
    off: list[int]
    length: list[int]
    kind: list[int]
    ops: list[tuple[d.StackOp, ...] | None]
    func: list[int]
    jump_dest: list[int]
    call_dest: list[Symbol | None]
    dead_end: bytearray
    alts: dict[int, list[tuple[int, bool]]]
    ignore_alts: bytearray
    alt_group: dict[int, int]
    groups: list[AltGroup]
    functions: list[Function]
    jump_table_insn: set[int]
    intra_calls: set[int]
    retpoline: set[int]
    notes: list[tuple[int, str]]
    #: jumps to __x86_return_thunk (returns, but retpoline-safe ones)
    return_thunks: set[int] = field(default_factory=set)
    #: functions declared noreturn (framevet.toml)
    declared_noreturn: set[str] = field(default_factory=set)
    #: gid -> callee-saved registers the instruction may write (see decode)
    cs_writes: dict[int, int] = field(default_factory=dict)
    #: gids that may store through an rsp/rbp-based memory operand (see decode)
    stack_stores: list[int] = field(default_factory=list)
    #: 1 for the last instruction of each section
    sec_last: bytearray = field(default_factory=bytearray)
    profile: str = "kernel"
    ignore_unreachables: bool = False
    secmap: dict[int, DecodedSection] = field(default_factory=dict)
    noreturn_cache: dict[int, bool] = field(default_factory=dict)

    def gid(self, sec: int, off: int) -> int:
        ds = self.secmap.get(sec)
        if ds is None:
            return -1
        i = ds.at.get(off)
        return -1 if i is None else self.base[sec] + i

    def next_same_sec(self, g: int) -> int:
        return -1 if self.sec_last[g] else g + 1

    def prev_same_sec(self, g: int) -> int:
        p = g - 1
        if p >= 0 and self.sec_of[p] == self.sec_of[g]:
            return p
        return -1

    def section_name(self, sec: int) -> str:
        return self.elf.sections[sec].name

    def func_insns(self, fi: int) -> list[int]:
        """objtool's func_for_each_insn: the function, then its ``.cold`` part."""
        out: list[int] = []
        seen: set[int] = set()
        while fi >= 0 and fi not in seen:
            seen.add(fi)
            f = self.functions[fi]
            g = self.gid(f.sec, f.start)
            while g >= 0 and self.func[g] == fi:
                out.append(g)
                g = self.next_same_sec(g)
            fi = f.child if f.child != fi else -1
        return out


def build(elf: ElfObject, profile: str = "kernel") -> Program:
    """Decode every executable section of ``elf`` and resolve its control flow."""
    syms_by_sec = elf.symbols_by_section()
    decoded: list[DecodedSection] = []
    for sec in elf.sections:
        if not sec.executable or sec.name.startswith(".discard.") or not sec.data:
            continue
        funcs = [s for s in syms_by_sec.get(sec.index, ()) if s.type == STT_FUNC]
        decoded.append(decode_section(sec.index, sec.name, sec.data, _iret_probe(funcs)))

    base: dict[int, int] = {}
    sec_of: list[int] = []
    off: list[int] = []
    length: list[int] = []
    kind: list[int] = []
    ops: list[tuple[d.StackOp, ...] | None] = []
    target: list[int] = []
    for ds in decoded:
        base[ds.index] = len(off)
        sec_of.extend([ds.index] * len(ds))
        off.extend(ds.off)
        length.extend(ds.length)
        kind.extend(ds.kind)
        ops.extend(ds.ops)
        target.extend(ds.target)
    n = len(off)
    prog = Program(elf, decoded, base, sec_of, off, length, kind, ops, [-1] * n, [-1] * n,
                   [None] * n, bytearray(n), {}, bytearray(n), {}, [], [], set(), set(), set(),
                   [], profile=profile)
    prog.secmap = {ds.index: ds for ds in decoded}
    prog.sec_last = bytearray(n)
    for ds in decoded:
        b = base[ds.index]
        if len(ds):
            prog.sec_last[b + len(ds) - 1] = 1
        prog.cs_writes.update({b + i: m for i, m in ds.cs_writes.items()})
        prog.stack_stores.extend(b + i for i in ds.stack_stores)
    _functions(prog, syms_by_sec)
    _special_sections(prog)
    _jump_destinations(prog, target)
    _call_destinations(prog, target)
    _dead_ends(prog)
    if profile == "user":
        _user_fixups(prog)
    from framevet.jumptable import add_jump_tables

    add_jump_tables(prog)
    return prog


#: profile user: an instruction that sets rsp to a value the model cannot follow
USER_SP_WRITE: tuple[d.StackOp, ...] = ((d.D_REG, d.SP, 0, d.S_CONST, 0, 0),)


def _user_sizes(prog: Program, funcs: list[Function],
                syms_by_sec: dict[int, list[Symbol]]) -> None:
    """Profile user: an STT_FUNC without a size (assembly without ``.size``) runs up
    to the next symbol of its section, or the section's end."""
    for f in funcs:
        if f.end > f.start:
            continue
        nxt = [s.offset for s in syms_by_sec.get(f.sec, ()) if s.offset > f.start]
        f.end = min(nxt) if nxt else prog.elf.sections[f.sec].size


def _user_fixups(prog: Program) -> None:
    """Profile user: ``syscall`` returns to the next instruction; a call followed by
    nothing but padding up to its function's end (or the next function) cannot
    return, so it is a dead end even when framevet does not know the callee."""
    kind, func = prog.kind, prog.func
    data = {ds.index: prog.elf.sections[ds.index].data for ds in prog.sections}
    for g, k in enumerate(kind):
        if k == d.CONTEXT_SWITCH and prog.length[g] == 2 and \
                data[prog.sec_of[g]][prog.off[g]:prog.off[g] + 2] == b"\x0f\x05":
            kind[g] = d.OTHER
    # any other write to rsp (mov 0xa0(%rdx),%rsp in setcontext, add $8,%esp, ...)
    for ds in prog.sections:
        for i in ds.sp_writes:
            g = prog.base[ds.index] + i
            if prog.ops[g] is None and kind[g] == d.OTHER:
                prog.ops[g] = USER_SP_WRITE
    for g, k in enumerate(kind):
        if (k != d.CALL and k != d.CALL_DYNAMIC) or func[g] < 0:
            continue
        n = prog.next_same_sec(g)
        while n >= 0 and func[n] == func[g] and kind[n] in (d.NOP, d.TRAP):
            n = prog.next_same_sec(n)
        if n < 0 or func[n] != func[g]:
            prog.dead_end[g] = 1


def _iret_probe(funcs: list[Symbol]) -> object:
    spans = [(s.offset, s.offset + s.size) for s in funcs]

    def inside(o: int) -> bool:
        return any(a <= o < b for a, b in spans)

    return inside


def _functions(prog: Program, syms_by_sec: dict[int, list[Symbol]]) -> None:
    elf = prog.elf
    file_group: dict[int, int] = {}
    group = 0
    for s in elf.symbols:
        if s.type == STT_FILE:
            group += 1
        file_group[s.index] = group
    funcs: list[Function] = []
    for sec_index in prog.base:
        for s in syms_by_sec.get(sec_index, ()):
            if s.type != STT_FUNC:
                continue
            funcs.append(Function(s, sec_index, s.offset, s.offset + s.size, s.name,
                                  file_group=file_group.get(s.index, 0)))
    # Aliases: of the STT_FUNC symbols at one address, objtool keeps the last in
    # symbol-table order that has a size.
    by_addr: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(funcs):
        by_addr.setdefault((f.sec, f.start), []).append(i)
    for idxs in by_addr.values():
        if len(idxs) > 1:
            idxs.sort(key=lambda i: funcs[i].sym.index)
            sized = [i for i in idxs if funcs[i].sym.size] or idxs
            keep = sized[-1]
            for i in idxs:
                funcs[i].canonical = i == keep
    for i, f in enumerate(funcs):
        f.parent = i
        f.child = i
    by_name: dict[str, list[int]] = {}
    for i, f in enumerate(funcs):
        by_name.setdefault(f.name, []).append(i)
    for i, f in enumerate(funcs):
        cut = f.name.find(".cold")
        if cut <= 0:
            continue
        cands = by_name.get(f.name[:cut], [])
        if not cands:
            continue
        same_file = [c for c in cands if funcs[c].file_group == f.file_group]
        p = (same_file or cands)[0]
        f.parent = p
        funcs[p].child = i
        pf = funcs[p]
        if pf.sec == f.sec and f.start >= pf.start and f.end == pf.end:
            pf.end -= f.end - f.start
    if prog.profile == "user":
        _user_sizes(prog, funcs, syms_by_sec)
    prog.functions = funcs
    func = prog.func
    for i, f in enumerate(funcs):
        if not f.canonical:
            continue
        g = prog.gid(f.sec, f.start)
        if g < 0:
            if f.start < prog.elf.sections[f.sec].size:
                prog.notes.append((-1, f"{f.name}(): can't find starting instruction"))
            continue
        while g >= 0 and prog.off[g] < f.end:
            func[g] = i
            g = prog.next_same_sec(g)


def _read_s32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<i", data, off)[0])


def _reloc_target(prog: Program, sec_index: int, off: int) -> tuple[int, int] | None:
    """(section, offset) that the relocation at ``off`` of section ``sec_index`` points to."""
    r = prog.elf.reloc_at(sec_index, off)
    if r is None:
        return None
    sym = prog.elf.symbols[r.sym]
    if not sym.defined:
        return None
    return sym.shndx, sym.offset + r.addend


def _special_sections(prog: Program) -> None:
    elf = prog.elf
    for name, size in ((".altinstructions", 12), ("__jump_table", 16), ("__ex_table", 12)):
        sec = elf.section(name)
        if sec is None or not sec.data or sec.size % size:
            if sec is not None and sec.size % size:
                prog.notes.append((-1, f"{name} size not a multiple of {size}"))
            continue
        for e in range(0, sec.size, size):
            orig = _reloc_target(prog, sec.index, e)
            new = _reloc_target(prog, sec.index, e + 4)
            if orig is None or new is None:
                continue
            og = prog.gid(*orig)
            if og < 0:
                continue
            if name == ".altinstructions":
                feature = struct.unpack_from("<H", sec.data, e + 8)[0]
                orig_len, new_len = sec.data[e + 10], sec.data[e + 11]
                _group_alt(prog, og, orig, new, orig_len, new_len, feature)
            elif name == "__jump_table":
                ng = prog.gid(*new)
                if prog.kind[og] == d.JUMP_UNCOND:
                    ng = prog.next_same_sec(og)
                elif prog.kind[og] != d.NOP:
                    prog.notes.append((og, "unsupported instruction at jump label"))
                    continue
                if ng >= 0:
                    prog.alts.setdefault(og, []).append((ng, False))
            else:
                ng = prog.gid(*new)
                if ng >= 0:
                    prog.alts.setdefault(og, []).append((ng, False))


def _group_alt(prog: Program, og: int, orig: tuple[int, int], new: tuple[int, int],
               orig_len: int, new_len: int, feature: int) -> None:
    """One ``.altinstructions`` entry.  Like objtool, every entry gets a fresh
    group for the original instructions: with ALTERNATIVE_2 only the last
    replacement shares the per-byte state array that ORC is generated from."""
    if not orig_len:
        prog.notes.append((og, "empty alternative entry"))
        return
    skip_orig = feature == X86_FEATURE_POPCNT
    skip_alt = feature == X86_FEATURE_SMAP
    last = og
    g = og
    while g >= 0 and prog.off[g] < orig[1] + orig_len:
        last = g
        g = prog.next_same_sec(g)
    ogroup = len(prog.groups)
    prog.groups.append(AltGroup(og, last, -1, orig_len, [None] * orig_len))
    for g in range(og, last + 1):
        prog.alt_group[g] = ogroup
    func = prog.func[og]
    if new_len:
        ng = prog.gid(*new)
        if ng < 0:
            prog.notes.append((og, "special: can't find new instruction"))
            return
        nlast = ng
        g = ng
        while g >= 0 and prog.off[g] < new[1] + new_len:
            nlast = g
            g = prog.next_same_sec(g)
        target = ng
    else:
        nlast = -1
        target = -1
    ngroup = len(prog.groups)
    prog.groups.append(AltGroup(target, nlast, ogroup, new_len, prog.groups[ogroup].cfi))
    for g in range(target, nlast + 1) if target >= 0 else ():
        prog.alt_group[g] = ngroup
        prog.func[g] = func
    if skip_alt:
        prog.ignore_alts[og] = 1
    # an empty replacement is a virtual NOP: encoded as -1 - group
    prog.alts.setdefault(og, []).append((target if target >= 0 else -1 - ngroup, skip_orig))


def _jump_destinations(prog: Program, target: list[int]) -> None:
    elf = prog.elf
    syms = elf.symbols
    kind = prog.kind
    for g, k in enumerate(kind):
        if k != d.JUMP_COND and k != d.JUMP_UNCOND:
            continue
        sec = prog.sec_of[g]
        r = elf.reloc_in(sec, prog.off[g], prog.off[g] + prog.length[g])
        if r is None:
            dest_sec, dest_off = _direct_target(prog, sec, target[g])
            grp = prog.alt_group.get(g)
            if grp is not None and prog.groups[grp].orig >= 0:
                ng = prog.groups[grp]
                if dest_off == prog.off[ng.first] + ng.size:
                    og = prog.groups[ng.orig]
                    prog.jump_dest[g] = prog.next_same_sec(og.last)
                    continue
        else:
            sym = syms[r.sym]
            if sym.type == STT_SECTION:
                dest_sec, dest_off = sym.shndx, r.addend + 4
            elif sym.name.startswith("__x86_indirect_"):
                kind[g] = d.JUMP_DYNAMIC if k == d.JUMP_UNCOND else d.JUMP_DYNAMIC_COND
                prog.ops[g] = None
                prog.retpoline.add(g)
                continue
            elif sym.name == "__x86_return_thunk":
                kind[g] = d.RETURN
                prog.return_thunks.add(g)
                continue
            elif prog.func[g] >= 0:
                prog.call_dest[g] = sym
                continue
            elif sym.defined:
                dest_sec, dest_off = sym.shndx, sym.offset + r.addend + 4
            else:
                continue
        dg = prog.gid(dest_sec, dest_off)
        if dg < 0:
            prog.notes.append((g, f"can't find jump dest instruction at "
                                  f"{prog.section_name(dest_sec)}+0x{dest_off:x}"))
            continue
        fi, fd = prog.func[g], prog.func[dg]
        if fi >= 0 and fd >= 0 and fi != fd:
            fn, fdn = prog.functions[fi], prog.functions[fd]
            if ".cold" not in fn.name and ".cold" in fdn.name:
                fn.child = fd
                fdn.parent = fi
            elif fn.parent != fdn.parent and prog.off[dg] == fdn.start:
                prog.call_dest[g] = fdn.sym
                continue
        prog.jump_dest[g] = dg


def _call_destinations(prog: Program, target: list[int]) -> None:
    elf = prog.elf
    syms = elf.symbols
    kind = prog.kind
    func_at: dict[tuple[int, int], Symbol] = {}
    any_at: dict[tuple[int, int], Symbol] = {}
    for f in prog.functions:
        if f.canonical:
            func_at.setdefault((f.sec, f.start), f.sym)
    for s in syms:
        if s.defined and s.type not in (STT_SECTION, STT_FILE) and s.size:
            any_at.setdefault((s.shndx, s.offset), s)
    for g, k in enumerate(kind):
        if k != d.CALL:
            continue
        sec = prog.sec_of[g]
        r = elf.reloc_in(sec, prog.off[g], prog.off[g] + prog.length[g])
        dest: Symbol | None
        if r is None:
            key = _direct_target(prog, sec, target[g])
            dest = func_at.get(key) or any_at.get(key)
            if dest is None:
                _intra_function_call(prog, g, *key)
                continue
        else:
            sym = syms[r.sym]
            if sym.type == STT_SECTION:
                key = (sym.shndx, r.addend + 4)
                dest = func_at.get(key) or any_at.get(key)
                if dest is None:
                    if (sym.shndx == sec and prog.gid(sec, r.addend + 4) >= 0):
                        _intra_function_call(prog, g, sec, r.addend + 4)
                        continue
                    prog.notes.append((g, f"can't find call dest symbol at "
                                          f"{prog.section_name(sym.shndx)}+0x{r.addend + 4:x}"))
                    continue
            elif sym.name.startswith("__x86_indirect_"):
                kind[g] = d.CALL_DYNAMIC
                prog.ops[g] = None
                prog.retpoline.add(g)
                continue
            else:
                dest = sym
        prog.call_dest[g] = dest
        prog.ops[g] = None


def _direct_target(prog: Program, sec: int, off: int) -> tuple[int, int]:
    """A direct branch's destination.  Sections are decoded from offset 0, so in a
    linked image a target outside the section (the PLT, another text section) is
    found by address."""
    section = prog.elf.sections[sec]
    if 0 <= off < section.size or prog.elf.relocatable:
        return sec, off
    addr = section.addr + off
    for ds in prog.sections:
        other = prog.elf.sections[ds.index]
        if other.addr <= addr < other.addr + other.size:
            return ds.index, addr - other.addr
    return sec, off


def _intra_function_call(prog: Program, g: int, sec: int, dest_off: int) -> None:
    """A call to a local label: a jump that keeps its push (objtool needs an annotation)."""
    dg = prog.gid(sec, dest_off)
    if dg < 0:
        prog.notes.append((g, "unannotated intra-function call"))
        return
    prog.kind[g] = d.JUMP_UNCOND
    prog.jump_dest[g] = dg
    prog.intra_calls.add(g)


def _dead_ends(prog: Program) -> None:
    kind = prog.kind
    for g, k in enumerate(kind):
        if k == d.BUG:
            prog.dead_end[g] = 1
    bug = prog.elf.section("__bug_table")
    if bug is None or not bug.data:
        return
    for entry in _bug_entries(prog, bug.index, bug.data):
        addr, flags = entry
        if flags & BUGFLAG_WARNING:
            g = prog.gid(*addr)
            if g >= 0:
                prog.dead_end[g] = 0


def _bug_entries(prog: Program, sec_index: int, data: bytes) -> list[tuple[tuple[int, int], int]]:
    """``__bug_table`` entries: 12 bytes with CONFIG_DEBUG_BUGVERBOSE, else 8."""
    rels = prog.elf.relocs.get(sec_index, [])
    addr_rels = [r for r in rels if r.type == R_X86_64_PC32]
    if not addr_rels:
        return []
    size = 12
    if len(addr_rels) >= 2:
        offs = sorted({r.offset for r in addr_rels})
        gaps = {b - a for a, b in zip(offs, offs[1:], strict=False)}
        if 8 in gaps and 12 not in gaps and 4 not in gaps:
            size = 8
    out = []
    for r in addr_rels:
        if r.offset % size:
            continue
        t = _reloc_target(prog, sec_index, r.offset)
        if t is None:
            continue
        flags_off = r.offset + (10 if size == 12 else 6)
        flags = struct.unpack_from("<H", data, flags_off)[0] if flags_off + 2 <= len(data) else 0
        out.append((t, flags))
    return out
