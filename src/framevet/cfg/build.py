"""Building the control-flow graph: decode every executable section, find the
functions, resolve branch and call destinations, and read objtool's annotations,
alternatives and jump tables in objtool's order (see :mod:`framevet.cfg.program`
for what is inferred from a linked module)."""

from __future__ import annotations

import struct
from bisect import bisect_left

import iced_x86

from framevet.cfg import objtool_annotations as ann
from framevet.cfg.alternatives import add_special_alts
from framevet.cfg.coderanges import LeftOut, decode_linked
from framevet.cfg.jumptable import add_jump_tables
from framevet.cfg.noreturn import runtime_name
from framevet.cfg.program import (
    BUGFLAG_WARNING,
    P_CALLS,
    P_DECODE,
    P_JUMP_TABLES,
    P_JUMPS,
    P_SPECIAL,
    Function,
    Program,
)
from framevet.decode import insn as d
from framevet.decode.insn import DecodedSection, decode_section
from framevet.load.elf import (
    R_X86_64_PC32,
    STB_GLOBAL,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Symbol,
)


def build(elf: ElfObject, profile: str = "kernel", uaccess: bool = False,
          ibt: bool = False) -> Program:
    """Decode every executable section of ``elf`` and resolve its control flow, reading
    objtool's annotations in objtool's order."""
    syms_by_sec = elf.symbols_by_section()
    decoded: list[DecodedSection] = []
    left_out: list[LeftOut] = []
    not_code = 0
    for sec in elf.sections:
        if not sec.executable or sec.name.startswith(".discard.") or not sec.data:
            continue
        syms = syms_by_sec.get(sec.index, [])
        funcs = [s for s in syms if s.type == STT_FUNC]
        if elf.relocatable:
            decoded.append(decode_section(sec.index, sec.name, sec.data, _iret_probe(funcs)))
            continue
        ds, left, skipped = decode_linked(sec, syms, _iret_probe(funcs))
        decoded.append(ds)
        left_out.extend(left)
        not_code += skipped

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
    prog.strict = (profile == "kernel" and elf.relocatable
                   and elf.section(".gnu.linkonce.this_module") is None)
    prog.uaccess, prog.ibt = uaccess, ibt
    prog.left_out, prog.not_code_bytes = left_out, not_code
    for ds in decoded:
        b = base[ds.index]
        if len(ds):
            prog.sec_last[b + len(ds) - 1] = 1
        prog.cs_writes.update({b + i: m for i, m in ds.cs_writes.items()})
        prog.stack_stores.extend(b + i for i in ds.stack_stores)
    missing_start = _functions(prog, syms_by_sec)
    prog.phase = P_DECODE
    for ds in decoded:      # objtool decodes a section, then finds its functions' starts
        for _, rule, msg, fatal in ds.problems:
            prog.problem(rule, msg, fatal=fatal)
        for name in missing_start.get(ds.index, ()):
            prog.problem("missing-function-start", f"{name}(): can't find starting instruction",
                         fatal=True)
    for x in left_out:
        name = elf.sections[x.sec].name
        what = x.symbol or f"{name}+0x{x.start:x}"
        prog.problem("code-left-out", f"{what}: {x.end - x.start} bytes left out, no x86-64 "
                     f"code: can't decode instruction at {name}:0x{x.invalid:x}",
                     at=(x.sec, x.start))
    ann.read_ignores(prog)
    ann.read_ignore_alts(prog)
    ann.read_noendbr(prog)
    prog.phase = P_SPECIAL
    add_special_alts(prog, target)
    prog.phase = P_JUMPS
    _jump_destinations(prog, target)
    ann.read_intra_function_calls(prog, target)
    prog.phase = P_CALLS
    _call_destinations(prog, target)
    _retpolines(prog)
    _dead_ends(prog)
    ann.read_dead_ends(prog)
    if profile == "user":
        _user_fixups(prog)
    prog.phase = P_JUMP_TABLES
    add_jump_tables(prog)
    for g, msg in prog.notes:       # jumptable.py reports in the legacy form
        prog.problem("switch-jump-table-missing" if "jump table" in msg else "decode-problem",
                     msg, g, fatal=True)
    ann.read_unwind_hints(prog)
    ann.read_retpoline_hints(prog)
    ann.read_instr_hints(prog)
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
    nothing but padding up to its function's end (or the next function), or up to an
    aligned label only forward jumps lead to, cannot return, so it is a dead end even
    when framevet does not know the callee: a compiler aligns such a label (GCC's
    ``-falign-jumps``) only when nothing falls into it, and it pads loop heads, which
    backward jumps lead to, whatever precedes them."""
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
    if prog.elf.got:
        _got_calls(prog)
    _exiting_error_calls(prog)
    forward, backward = _jump_directions(prog)
    for g, k in enumerate(kind):
        if (k != d.CALL and k != d.CALL_DYNAMIC) or func[g] < 0:
            continue
        n = prog.next_same_sec(g)
        padded = False
        while n >= 0 and func[n] == func[g] and kind[n] in (d.NOP, d.TRAP):
            n, padded = prog.next_same_sec(n), True
        if n < 0 or func[n] != func[g]:
            prog.dead_end[g] = 1
        elif (padded and n in forward and n not in backward and not prog.elf.relocatable
              and (prog.elf.sections[prog.sec_of[n]].addr + prog.off[n]) % 8 == 0):
            prog.dead_end[g] = 1


def _jump_directions(prog: Program) -> tuple[set[int], set[int]]:
    """Instructions some jump leads to from before them, and from after them."""
    forward: set[int] = set()
    backward: set[int] = set()
    for g, jd in enumerate(prog.jump_dest):
        if jd >= 0:
            (forward if jd > g else backward).add(jd)
    return forward, backward


#: C library functions that return only when their first argument (the exit status)
#: is zero: ``error(status, errnum, format, ...)``, ``error_at_line(status, ...)``
_EXIT_UNLESS_ZERO = frozenset({"error", "error_at_line"})


def _exiting_error_calls(prog: Program) -> None:
    """Profile user: ``error(1, ...)`` exits.  A call of ``error``/``error_at_line``
    whose status register was last set to a non-zero constant (``mov $1,%edi``, a few
    instructions before, in the same function) is a dead end."""
    for g, k in enumerate(prog.kind):
        cd = prog.call_dest[g]
        if k != d.CALL or cd is None or runtime_name(cd.name) not in _EXIT_UNLESS_ZERO:
            continue
        p = g
        for _ in range(8):
            p = prog.prev_same_sec(p)
            if p < 0 or prog.func[p] != prog.func[g] or prog.kind[p] not in (d.OTHER, d.NOP):
                break
            insn = prog.instruction(p)
            if not d.gprs_written(d.INFO.info(insn)) & (1 << d.DI):
                continue
            if (insn.mnemonic == iced_x86.Mnemonic.MOV and insn.op1_kind in _IMMEDIATES
                    and insn.op0_kind == iced_x86.OpKind.REGISTER and insn.immediate(1) != 0):
                prog.dead_end[g] = 1
            break


_IMMEDIATES = (iced_x86.OpKind.IMMEDIATE32, iced_x86.OpKind.IMMEDIATE32TO64,
               iced_x86.OpKind.IMMEDIATE64)


def _got_calls(prog: Program) -> None:
    """``call *slot(%rip)`` / ``jmp *slot(%rip)`` through a GOT slot the dynamic linker
    fills with a named function (``-fno-plt``, ``_start``'s ``__libc_start_main``):
    a call of that function, ``NAME@got``."""
    got = prog.elf.got
    named: dict[str, Symbol] = {}
    for g, k in enumerate(prog.kind):
        if k not in (d.CALL_DYNAMIC, d.JUMP_DYNAMIC) or prog.call_dest[g] is not None:
            continue
        insn = prog.instruction(g, address=True)
        if not insn.is_ip_rel_memory_operand:
            continue
        name = got.get(insn.ip_rel_memory_address)
        if name is None:
            continue
        sym = named.get(name)
        if sym is None:
            sym = named[name] = Symbol(len(prog.elf.symbols) + len(named), f"{name}@got", 0, 0,
                                       STT_FUNC, STB_GLOBAL, 0, 0)
        prog.call_dest[g] = sym


def _iret_probe(funcs: list[Symbol]) -> object:
    spans = [(s.offset, s.offset + s.size) for s in funcs]

    def inside(o: int) -> bool:
        return any(a <= o < b for a, b in spans)

    return inside


def _functions(prog: Program, syms_by_sec: dict[int, list[Symbol]]) -> dict[int, list[str]]:
    """Function symbols, aliases and ``.cold`` links; returns, per section, the functions
    that do not start at an instruction."""
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
            if prog.profile == "kernel" and not any(s.name == f.name[:cut] for s in elf.symbols):
                prog.problem("cold-without-parent", f"{f.name}(): can't find parent function",
                             fatal=True)
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
    missing: dict[int, list[str]] = {}
    for i, f in enumerate(funcs):
        if not f.canonical:
            continue
        g = prog.gid(f.sec, f.start)
        if g < 0:
            if f.start < prog.elf.sections[f.sec].size and not _left_out(prog, f.sec, f.start):
                missing.setdefault(f.sec, []).append(f.name)
            continue
        ds = prog.secmap[f.sec]
        base = prog.base[f.sec]
        end = base + bisect_left(ds.off, f.end)
        if end > g:
            func[g:end] = [i] * (end - g)
    return missing


def _left_out(prog: Program, sec: int, off: int) -> bool:
    return any(x.sec == sec and x.start <= off < x.end for x in prog.left_out)


def _reloc_target(prog: Program, sec_index: int, off: int) -> tuple[int, int] | None:
    """(section, offset) that the relocation at ``off`` of section ``sec_index`` points to."""
    r = prog.elf.reloc_at(sec_index, off)
    if r is None:
        return None
    sym = prog.elf.symbols[r.sym]
    if not sym.defined:
        return None
    return sym.shndx, sym.offset + r.addend


def _jump_destinations(prog: Program, target: list[int]) -> None:
    elf = prog.elf
    syms = elf.symbols
    kind = prog.kind
    # (linked: where a named function or label starts, for jumps to return thunks)
    starts = set() if elf.relocatable else {
        (s.shndx, s.offset) for s in syms if s.defined and s.name and s.type != STT_SECTION}
    for g, k in enumerate(kind):
        if k != d.JUMP_COND and k != d.JUMP_UNCOND or prog.jump_dest[g] >= 0:
            continue        # (a replacement's jump to its end already points past the original)
        sec = prog.sec_of[g]
        r = elf.reloc_in(sec, prog.off[g], prog.off[g] + prog.length[g])
        if r is None:
            dest_sec, dest_off = _direct_target(prog, sec, target[g])
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
            dg = _past_prefixes(prog, dest_sec, dest_off)
        if dg < 0:
            prog.problem("jump-dest-missing", f"can't find jump dest instruction at "
                         f"{prog.section_name(dest_sec)}+0x{dest_off:x}", g, fatal=True)
            continue
        fi, fd = prog.func[g], prog.func[dg]
        if (kind[dg] == d.RETURN and (dest_sec, prog.off[dg]) in starts and fd != fi
                and (kind[g] == d.JUMP_UNCOND or prog.profile == "kernel")):
            # a linked image has no relocation naming __x86_return_thunk: a jump to a
            # symbol whose first instruction is ret returns, whatever the name (profile
            # user: a conditional one also falls through -- GCC's one-byte cold part
            # `ret`, readelf; it stays a sibling call)
            kind[g] = d.RETURN
            prog.return_thunks.add(g)
            continue
        if fi >= 0 and fd >= 0 and fi != fd:
            fn, fdn = prog.functions[fi], prog.functions[fd]
            if ".cold" not in fn.name and ".cold" in fdn.name:
                fn.child = fd
                fdn.parent = fi
            elif fn.parent != fdn.parent and prog.off[dg] == fdn.start:
                prog.call_dest[g] = fdn.sym
                continue
        prog.jump_dest[g] = dg


def _retpolines(prog: Program) -> None:
    """A retpoline's shape, ``call 1f; (speculation trap); 1: mov %reg,(%rsp); ret``:
    the ret jumps to ``*%reg`` and drops the word the call pushed.  It is meant to be
    return-oriented; a ret to an address pushed any other way is still a finding."""
    for g in prog.intra_calls:
        t = prog.jump_dest[g]
        ops = prog.ops[t] if t >= 0 else None
        if not ops or len(ops) != 1:
            continue
        dtype, dreg, doff, stype, _, _ = ops[0]
        r = prog.next_same_sec(t)
        if (dtype == d.D_REG_INDIRECT and dreg == d.SP and doff == 0 and stype == d.S_REG
                and r >= 0 and prog.kind[r] == d.RETURN and prog.length[r] == 1):
            prog.kind[r] = d.JUMP_DYNAMIC
            prog.ops[r] = ((d.D_REG, d.SP, 0, d.S_ADD, d.SP, 8),)
            prog.ops[t] = None      # (the store is the jump's target, not a save)
            prog.retpoline.update((t, r))


def _call_destinations(prog: Program, target: list[int]) -> None:
    """objtool's add_call_destinations().  In a strict (unlinked kernel) object a call
    to no sized symbol is an unannotated intra-function call and a call from a function
    to a non-function symbol is refused, both fatal; framevet then goes on treating the
    first as a call to the unsized symbol (or a jump that keeps its push, for a label)."""
    elf = prog.elf
    syms = elf.symbols
    kind = prog.kind
    strict, ignored = prog.strict, prog.ignored
    func_at: dict[tuple[int, int], Symbol] = {}
    any_at: dict[tuple[int, int], Symbol] = {}
    named_at: dict[tuple[int, int], Symbol] = {}
    for f in prog.functions:
        if f.canonical:
            func_at.setdefault((f.sec, f.start), f.sym)
    for s in syms:
        if s.defined and s.type not in (STT_SECTION, STT_FILE):
            if s.size:
                any_at.setdefault((s.shndx, s.offset), s)
            elif strict or not elf.relocatable:
                named_at.setdefault((s.shndx, s.offset), s)
    for g, k in enumerate(kind):
        if k != d.CALL:
            continue
        sec = prog.sec_of[g]
        r = elf.reloc_in(sec, prog.off[g], prog.off[g] + prog.length[g])
        dest: Symbol | None
        if r is None:
            key = _direct_target(prog, sec, target[g])
            dest = func_at.get(key) or any_at.get(key)
            checked = strict and g not in ignored
            if dest is None:
                if checked:
                    prog.problem("unannotated-intra-function-call",
                                 "unannotated intra-function call", g, fatal=True)
                if checked or not elf.relocatable:
                    # (linked: a call to an assembly label such as Xen's
                    # create_bounce_frame is a call, as the linker's symbol says)
                    dest = named_at.get(key)
                if dest is None and key[0] != sec and not prog.elf.relocatable:
                    # a linked image's call into the PLT (or another section with no
                    # symbol there): an ordinary call to code framevet cannot name
                    prog.ops[g] = None
                    continue
                if dest is None:
                    _intra_function_call(prog, g, *key)
                    continue
            elif checked and prog.func[g] >= 0 and dest.type != STT_FUNC:
                prog.problem("unsupported-call-to-non-function",
                             "unsupported call to non-function", g, fatal=True)
        else:
            sym = syms[r.sym]
            if sym.type == STT_SECTION:
                key = (sym.shndx, r.addend + 4)
                dest = func_at.get(key) or any_at.get(key)
                if dest is None:
                    if not strict and sym.shndx == sec and prog.gid(sec, r.addend + 4) >= 0:
                        _intra_function_call(prog, g, sec, r.addend + 4)
                        continue
                    prog.problem("call-dest-missing", f"can't find call dest symbol at "
                                 f"{prog.section_name(sym.shndx)}+0x{r.addend + 4:x}", g,
                                 fatal=True)
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


_PREFIXES = frozenset(b"\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65\x66\x67")


def _past_prefixes(prog: Program, sec: int, off: int) -> int:
    """glibc's single-thread fast path (``je 1f; lock; 1: cmpxchg``) and Xen's
    emulator (``jrcxz 1f; lock; 1: xor``) jump over a ``lock`` prefix into the middle
    of the instruction: the target is that instruction, minus its prefixes."""
    g = prog.containing(sec, off)
    if g < 0 or prog.off[g] == off:
        return -1
    start = prog.off[g]
    data = prog.elf.sections[sec].data
    return g if all(b in _PREFIXES for b in data[start:off]) else -1


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
        if not prog.strict:     # (strict: already reported)
            prog.problem("unannotated-intra-function-call", "unannotated intra-function call", g,
                         fatal=True)
        return
    prog.kind[g] = d.JUMP_UNCOND
    prog.jump_dest[g] = dg
    prog.intra_calls.add(g)


def _dead_ends(prog: Program) -> None:
    kind = prog.kind
    for g, k in enumerate(kind):
        if k == d.BUG:
            prog.dead_end[g] = 1
    if prog.profile == "user":
        # hlt faults in user space (_start ends with it after __libc_start_main)
        for ds in prog.sections:
            data = prog.elf.sections[ds.index].data
            base = prog.base[ds.index]
            for i, (o, n) in enumerate(zip(ds.off, ds.length, strict=True)):
                if n == 1 and data[o] == 0xF4:
                    prog.dead_end[base + i] = 1
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
