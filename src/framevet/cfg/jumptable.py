"""Switch jump tables: which indirect jumps dispatch through a table, and where to.

objtool 6.1's search, kept exactly for kernel parity: walk back from the
indirect jump to an instruction with a relocation into anonymous ``.rodata``
(or ``.rodata..c_jump_table``); the table is the run of consecutive 8-byte
relocations there that land in the same function.

Profile ``user`` first resolves what GCC and hand-written user assembly emit,
by following the table's base register back to the ``lea`` that loads it:

    lea    .L4(%rip), %rdx          # R_X86_64_PC32 .rodata+X-4 (often in the prologue,
    ...                             #  into a callee-saved register, for a loop)
    movslq (%rdx,%rax,4), %rax      # 4-byte entries relative to the table
    add    %rdx, %rax
    jmp    *%rax

and the absolute forms ``jmp *(%rsi,%rax,8)`` / ``jmp *TABLE(,%rax,8)`` (GCC's
computed-goto tables such as vfprintf's ``step0_jumps``, named objects in
``.data.rel.ro``).  In a relocatable object each 4-byte entry ``.long .Lcase -
.L4`` is an ``R_X86_64_PC32`` relocation whose addend is the case label plus the
entry's distance from the table start; in a linked image the entries are read
from the section.  A table ends at the ``cmp $N, %idx`` guard's bound, the end
of the named object holding it, the next table, or the first entry that does
not land in the same function.  Jumps this does not resolve fall back to
objtool's search.
"""

from __future__ import annotations

import struct

import iced_x86

from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.load.elf import (
    R_X86_64_64,
    R_X86_64_PC32,
    SHT_RELA,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Reloc,
    Symbol,
)

#: the most entries one table may have
MAX_ENTRIES = 4096
#: how many instructions back from the jump the entry load and bound check may be
NEAR_LOOKBACK = 16


def add_jump_tables(prog: Program) -> None:
    elf = prog.elf
    if prog.profile == "user":
        _user_jump_tables(prog)
        return
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
    # only functions with an indirect jump can dispatch through a table
    dispatching = {prog.functions[prog.func[g]].parent for g, k in enumerate(prog.kind)
                   if k == d.JUMP_DYNAMIC and prog.func[g] >= 0}
    for fi, f in enumerate(prog.functions):
        if not f.canonical or f.parent != fi or fi not in dispatching:
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
    prev = 0        # objtool's prev_offset: 0 also means "nothing yet", hence its quirk
    added = 0
    for r in rels[i:]:
        if r.offset != toff and (tsec, r.offset) in starts:
            break
        if prev and r.offset != prev + 8:
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
    if not prev:    # (a one-entry table at offset 0 counts as empty)
        prog.notes.append((g, "can't find switch jump table"))


# ---------------------------------------------------------------------------
# profile user
# ---------------------------------------------------------------------------

_REL4, _ABS8 = 4, 8
_R_X86_64_RELATIVE = 8
_CALLER_SAVED = frozenset(int(r) for r in (
    iced_x86.Register.RAX, iced_x86.Register.RCX, iced_x86.Register.RDX,
    iced_x86.Register.RSI, iced_x86.Register.RDI, iced_x86.Register.R8,
    iced_x86.Register.R9, iced_x86.Register.R10, iced_x86.Register.R11))
_Table = tuple[int, int, int, int, int]   # jump gid, table section, table offset, form, bound


def _user_jump_tables(prog: Program) -> None:
    dec = _Decoder(prog)
    found: list[_Table] = []
    for g, k in enumerate(prog.kind):
        if k == d.JUMP_DYNAMIC and prog.func[g] >= 0:
            t = _user_find(prog, dec, g)
            if t is not None:
                found.append(t)
    starts = {(t[1], t[2]) for t in found}
    for g, tsec, toff, form, bound in found:
        dests = _user_entries(prog, g, tsec, toff, form, bound, starts)
        if dests:
            alts = prog.alts.setdefault(g, [])
            seen: set[int] = set()
            for dg in dests:
                if dg not in seen:
                    seen.add(dg)
                    alts.append((dg, False))
            prog.jump_table_insn.add(g)
        elif not _function_pointers(prog, tsec, toff, form):
            prog.notes.append((g, "can't find switch jump table"))


def _function_pointers(prog: Program, tsec: int, toff: int, form: int) -> bool:
    """The "table" holds the address of a function's first instruction: the jump is a
    tail call through an array of function pointers (nm's choice of comparison
    function, ``jmp *(%rdx,%rax,8)``), not a switch.  In a position-independent
    image the slot is filled at load time by an ``R_X86_64_RELATIVE`` relocation."""
    if form != _ABS8 or prog.elf.relocatable:
        return False
    elf = prog.elf
    sec = elf.sections[tsec]
    where = sec.addr + toff
    addr = int.from_bytes(sec.data[toff:toff + 8], "little") if toff + 8 <= len(sec.data) else 0
    if not addr:
        for rs in elf.sections:
            if rs.type == SHT_RELA and rs.entsize == 24:
                for off, info, addend in struct.iter_unpack("<QQq", rs.data[:len(rs.data) // 24
                                                                             * 24]):
                    if off == where and info & 0xFFFFFFFF == _R_X86_64_RELATIVE:
                        addr = addend
    return any(s.defined and s.type == STT_FUNC and s.value == addr for s in elf.symbols)


class _Decoder:
    """iced instructions decoded again on demand (only near indirect jumps)."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.cache: dict[int, iced_x86.Instruction] = {}

    def __call__(self, g: int) -> iced_x86.Instruction:
        ins = self.cache.get(g)
        if ins is None:
            ins = self.prog.instruction(g, address=True)
            self.cache[g] = ins
        return ins

    def writes(self, g: int, full_reg: int) -> bool:
        hw = d.hw_register(full_reg)
        return hw >= 0 and bool(d.gprs_written(d.INFO.info(self(g))) >> hw & 1)


def _full(r: int) -> int:
    return int(iced_x86.RegisterExt.full_register(r))  # type: ignore[arg-type]


def _same_func_back(prog: Program, g: int, limit: int) -> list[int]:
    """Up to ``limit`` instructions before ``g`` in the same section and function."""
    out: list[int] = []
    fi = prog.func[g]
    p = g - 1
    while p >= 0 and len(out) < limit and prog.sec_of[p] == prog.sec_of[g] and prog.func[p] == fi:
        out.append(p)
        p -= 1
    return out


def _user_find(prog: Program, dec: _Decoder, g: int) -> _Table | None:
    """The table an indirect jump dispatches through: (g, section, offset, form, bound)."""
    R = iced_x86.Register
    ins = dec(g)
    near = _same_func_back(prog, g, NEAR_LOOKBACK)
    load = g
    if ins.op0_kind == iced_x86.OpKind.MEMORY:
        mem, form = ins, _ABS8                      # jmp *(%base,%idx,8) / jmp *T(,%idx,8)
    elif ins.op0_kind == iced_x86.OpKind.REGISTER:
        # follow the value back through ``add %base,%r`` / ``lea (%base,%r),%r2`` /
        # ``mov %r,%r2`` to the load of the entry
        tracked = {_full(ins.op0_register)}
        found: iced_x86.Instruction | None = None
        form = 0
        for p in near:
            hit = [t for t in tracked if dec.writes(p, t)]
            if not hit:
                continue
            pi = dec(p)
            mn = pi.mnemonic
            if mn == iced_x86.Mnemonic.ADD and pi.op1_kind == iced_x86.OpKind.REGISTER:
                tracked.add(_full(pi.op1_register))
            elif mn == iced_x86.Mnemonic.LEA and pi.memory_base not in (R.NONE, R.RIP) \
                    and pi.memory_index != R.NONE and pi.memory_displacement == 0:
                tracked.discard(_full(pi.op0_register))
                tracked |= {_full(pi.memory_base), _full(pi.memory_index)}
            elif mn == iced_x86.Mnemonic.MOV and pi.op1_kind == iced_x86.OpKind.REGISTER:
                tracked.discard(_full(pi.op0_register))
                tracked.add(_full(pi.op1_register))
            elif mn == iced_x86.Mnemonic.MOVSXD and pi.op1_kind == iced_x86.OpKind.MEMORY \
                    and pi.memory_index_scale == 4:
                found, form, load = pi, _REL4, p
                break
            elif mn == iced_x86.Mnemonic.MOV and pi.op1_kind == iced_x86.OpKind.MEMORY \
                    and pi.memory_index_scale == 8 and pi.memory_size == iced_x86.MemorySize.UINT64:
                found, form, load = pi, _ABS8, p
                break
            else:
                return None
        if found is None:
            return None
        mem = found
    else:
        return None  # a retpoline thunk jump: the register is only in the thunk's name
    if mem.memory_index == R.NONE or mem.memory_base == R.RIP:
        return None
    idx = _full(mem.memory_index)
    bound = _guard(prog, dec, load, idx)
    if mem.memory_base == R.NONE:
        loc = _operand_target(prog, load, int(mem.memory_displacement) & 0xFFFFFFFF
                              if prog.elf.relocatable else int(mem.memory_displacement))
        return (g, *loc, form, bound) if loc is not None else None
    base = _full(mem.memory_base)
    # the ``lea TABLE(%rip), %base``: the one target all such leas in the function
    # share (GCC hoists it to the prologue, into a callee-saved register), else
    # the nearest one before the load
    leas: list[tuple[int, tuple[int, int]]] = []
    for p in prog.func_insns(prog.func[g]):
        if prog.ops[p] is None and prog.length[p] == 7 and dec.writes(p, base):
            pi = dec(p)
            if pi.code == iced_x86.Code.LEA_R64_M and pi.memory_base == R.RIP:
                loc = _rip_target(prog, p, int(pi.memory_displacement))
                if loc is not None:
                    leas.append((p, loc))
    if not leas:
        return None
    if len({loc for _, loc in leas}) == 1:
        return (g, *leas[0][1], form, bound)
    reaching = _reaching_writes(prog, dec, load, base)
    by_gid = dict(leas)
    if reaching and all(p in by_gid for p in reaching) \
            and len({by_gid[p] for p in reaching}) == 1:
        return (g, *by_gid[next(iter(reaching))], form, bound)
    before = [(p, loc) for p, loc in leas if prog.sec_of[p] == prog.sec_of[load] and p < load]
    if not before:
        return None
    return (g, *max(before)[1], form, bound)


def _reaching_writes(prog: Program, dec: _Decoder, load: int, reg: int) -> set[int]:
    """The instructions of ``load``'s function whose write of ``reg`` may reach ``load``:
    walking back over fall-throughs and direct jumps (the tables are not known yet; a
    path through one only adds writes).  Empty when the entry is reached without a
    write; a block with no known way in (a case of a table not read yet) adds none,
    nor does a path through a call that clobbers ``reg`` (stty: a string's lea before
    a call to printf is not the table's).
    curl's printf loads one of two tables into ``%r8`` in different blocks."""
    fi = prog.func[load]
    insns = prog.func_insns(fi)
    preds: dict[int, list[int]] = {}
    for p in insns:
        k = prog.kind[p]
        jd = prog.jump_dest[p]
        if k in (d.JUMP_COND, d.JUMP_UNCOND) and jd >= 0 and prog.func[jd] == fi:
            preds.setdefault(jd, []).append(p)
        n = p + 1
        if (k not in (d.JUMP_UNCOND, d.JUMP_DYNAMIC, d.RETURN) and not prog.dead_end[p]
                and n < len(prog.kind) and prog.sec_of[n] == prog.sec_of[p]
                and prog.func[n] == fi):
            preds.setdefault(n, []).append(p)
    out: set[int] = set()
    seen: set[int] = set()
    work = list(preds.get(load, ()))
    while work:
        p = work.pop()
        if p in seen:
            continue
        seen.add(p)
        if dec.writes(p, reg):
            out.add(p)
            continue
        if prog.kind[p] in (d.CALL, d.CALL_DYNAMIC) and reg in _CALLER_SAVED:
            continue          # a call clobbers it: no value from before it gets here
        if p == insns[0]:
            return set()      # the function's entry, without a write
        work.extend(preds.get(p, ()))
    return out


def _guard(prog: Program, dec: _Decoder, load: int, idx: int) -> int:
    """Entries allowed by a ``cmp $N, %idx; ja default`` before the load (0: unknown).

    Walking back, a copy (``mov %esi, %eax``, ``movslq %esi, %rax``) makes the
    source the index; a load (``movzwl 10(%rdi), %eax``) makes the compared
    operand that memory (GCC: ``cmpw $15, 10(%rdi); ja ...; movzwl 10(%rdi), %eax``);
    any other write ends the search: a ``cmp`` before it guards another value.  A
    ``cmp`` followed by ``je``/``jne`` tests one value and bounds nothing
    (libgp-collector: ``cmp $0x67,%dil; jne``; ``movzbl %dil,%esi`` indexes a table
    of 256); a zero extension of a byte (``movzbl``) bounds the index to 256."""
    K = iced_x86.OpKind
    imms = (K.IMMEDIATE8, K.IMMEDIATE16, K.IMMEDIATE32, K.IMMEDIATE8TO16, K.IMMEDIATE8TO32,
            K.IMMEDIATE8TO64, K.IMMEDIATE32TO64)
    copies = (iced_x86.Mnemonic.MOV, iced_x86.Mnemonic.MOVZX, iced_x86.Mnemonic.MOVSXD)
    mem: tuple[int, int, int] | None = None       # (base, index, disp) of the loaded operand
    width = 0                                     # entries a zero-extended byte allows
    for p in _same_func_back(prog, load, NEAR_LOOKBACK):
        pi = dec(p)
        if pi.mnemonic == iced_x86.Mnemonic.CMP and pi.op_count == 2 and pi.op1_kind in imms:
            if mem is None and pi.op0_kind == K.REGISTER and _full(pi.op0_register) == idx:
                pass
            elif (mem is not None and pi.op0_kind == K.MEMORY
                  and (pi.memory_base, pi.memory_index, pi.memory_displacement) == mem):
                pass
            else:
                continue
            if _tests_equality(prog, dec, p):
                continue
            n = pi.immediate(1) & 0xFFFFFFFF
            return n + 1 if n < MAX_ENTRIES else width
        if mem is not None or not dec.writes(p, idx):
            continue
        if pi.mnemonic == iced_x86.Mnemonic.MOVZX and pi.op_count == 2 and (
                (pi.op1_kind == K.MEMORY and pi.memory_size == iced_x86.MemorySize.UINT8)
                or (pi.op1_kind == K.REGISTER
                    and iced_x86.RegisterExt.size(pi.op1_register) == 1)):
            width = width or 256
        if pi.mnemonic in copies and pi.op_count == 2 and pi.op1_kind == K.REGISTER:
            idx = _full(pi.op1_register)
        elif (pi.mnemonic in copies and pi.op_count == 2 and pi.op1_kind == K.MEMORY
              and pi.memory_base != iced_x86.Register.RIP):
            mem = (pi.memory_base, pi.memory_index, pi.memory_displacement)
        else:
            return width
    return width


def _tests_equality(prog: Program, dec: _Decoder, cmp: int) -> bool:
    """The ``cmp`` at ``cmp`` is followed by ``je``/``jne``."""
    n = prog.next_same_sec(cmp)
    return n >= 0 and dec(n).mnemonic in (iced_x86.Mnemonic.JE, iced_x86.Mnemonic.JNE)


def _rip_target(prog: Program, g: int, linked_addr: int) -> tuple[int, int] | None:
    """(section, offset) a RIP-relative operand of instruction ``g`` points to."""
    elf = prog.elf
    if elf.relocatable:
        r = elf.reloc_in(prog.sec_of[g], prog.off[g], prog.off[g] + prog.length[g])
        if r is None or r.type != R_X86_64_PC32:
            return None
        sym = elf.symbols[r.sym]
        if not sym.defined:
            return None
        # disp = S + A - P, and the CPU adds the end of the instruction (P + 4)
        end = prog.off[g] + prog.length[g]
        return sym.shndx, sym.offset + r.addend + (end - r.offset)
    return _data_at(elf, linked_addr)


def _operand_target(prog: Program, g: int, linked_addr: int) -> tuple[int, int] | None:
    """(section, offset) of an absolute ``disp32`` operand (non-PIC ``jmp *T(,%idx,8)``)."""
    elf = prog.elf
    if elf.relocatable:
        r = elf.reloc_in(prog.sec_of[g], prog.off[g], prog.off[g] + prog.length[g])
        if r is None:
            return None
        sym = elf.symbols[r.sym]
        return (sym.shndx, sym.offset + r.addend) if sym.defined else None
    return _data_at(elf, linked_addr)


def _data_at(elf: ElfObject, addr: int) -> tuple[int, int] | None:
    for sec in elf.sections:
        if sec.data and sec.addr and not sec.executable and sec.flags & 2 \
                and sec.addr <= addr < sec.addr + len(sec.data):
            return sec.index, addr - sec.addr
    return None


def _user_entries(prog: Program, g: int, tsec: int, toff: int, form: int, bound: int,
                  starts: set[tuple[int, int]]) -> list[int]:
    elf = prog.elf
    fi = prog.functions[prog.func[g]].parent
    limit = _named_end(elf, tsec, toff)
    n_max = bound or MAX_ENTRIES
    sec = elf.sections[tsec]
    out: list[int] = []
    for n in range(n_max):
        pos = toff + n * form
        if (n and (tsec, pos) in starts) or (limit is not None and pos >= limit):
            break
        dest = _entry(prog, sec.index, pos, toff, form)
        if dest is None:
            break
        dg = prog.gid(*dest)
        if dg < 0 or prog.func[dg] < 0 or not _part_of(prog, prog.func[dg], fi, bool(bound)):
            if bound:
                continue        # a bounded table may point elsewhere (default case)
            break
        out.append(dg)
    return out


def _part_of(prog: Program, part: int, fi: int, bounded: bool) -> bool:
    """Function ``part`` is ``fi`` or one of its cold parts.  In a linked image, a
    part no direct jump has tied to a parent yet is tied to ``fi`` here: a cold part
    (``foo.cold``, or nameless with an FDE that starts inside a frame), or, for a
    table whose bound is known, a nameless FDE of its own (the cold part of a
    function without a frame starts with ``cfa=rsp+8``, like a function: readelf's
    switch cases in ``.text.unlikely``).  A switch never jumps into another function."""
    f = prog.functions[part]
    if f.parent == fi:
        return True
    if f.parent != part or f.child != part or prog.elf.relocatable:
        return False
    nameless = f.name.startswith(f"{prog.section_name(f.sec)}+0x")
    if not (f.name.endswith(".cold") or (bounded and nameless)):
        return False
    f.parent = fi
    prog.functions[fi].child = part
    return True


def _entry(prog: Program, tsec: int, pos: int, toff: int, form: int) -> tuple[int, int] | None:
    """(section, offset) entry ``pos`` of a table at ``toff`` points to."""
    elf = prog.elf
    sec = elf.sections[tsec]
    if elf.relocatable:
        r = elf.reloc_at(tsec, pos)
        if r is None:
            return None
        sym = elf.symbols[r.sym]
        if not sym.defined:
            return None
        if form == _REL4 and r.type == R_X86_64_PC32:
            return sym.shndx, sym.offset + r.addend - (pos - toff)
        if form == _ABS8 and r.type == R_X86_64_64:
            return sym.shndx, sym.offset + r.addend
        return None
    if pos + form > len(sec.data):
        return None
    if form == _REL4:
        addr = sec.addr + toff + struct.unpack_from("<i", sec.data, pos)[0]
    else:
        addr = struct.unpack_from("<Q", sec.data, pos)[0]
    for s in elf.sections:
        if s.executable and s.addr <= addr < s.addr + s.size:
            return s.index, addr - s.addr
    return None


def _named_end(elf: ElfObject, tsec: int, toff: int) -> int | None:
    """End of the sized data object holding ``tsec+toff``, if there is one."""
    for s in elf.symbols:
        if (s.shndx == tsec and s.size and s.type not in (STT_SECTION, STT_FILE)
                and s.offset <= toff < s.offset + s.size):
            return s.offset + s.size
    return None
