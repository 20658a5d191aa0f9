"""The CFA walk for profile ``user``, and what static control flow cannot reach by
itself: functions known only from FDEs, exception landing pads, computed jumps and
alignment padding."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import replace

import iced_x86

from framevet.cfg.noreturn import dead_after_noreturn
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import (
    CFA_OFF,
    REGS,
    STACK,
    STATE_LEN,
    blank_state,
    func_entry_state,
)
from framevet.load.elf import STB_LOCAL, STT_FUNC, ElfObject, Section, Symbol
from framevet.load.entries import entry_points
from framevet.stack.walker import Walker, WalkOptions, WalkResult, load_cfi
from framevet.unwind.cfarule import is_entry_rule, state_for
from framevet.unwind.dwarf import call_sites, read_cfi

#: functions entered with extra words on the stack above the return address: glibc's
#: lazy-binding trampolines, jumped to by PLT0 after ``push index; push link_map``
USER_ENTRY_EXTRA_WORDS = {
    "_dl_runtime_resolve_fxsave": 2, "_dl_runtime_resolve_xsave": 2,
    "_dl_runtime_resolve_xsavec": 2, "_dl_runtime_profile_sse": 2,
    "_dl_runtime_profile_avx": 2, "_dl_runtime_profile_avx512": 2,
}


def user_walk(prog: Program, opts: WalkOptions | None = None,
              setup: Callable[[Walker], None] | None = None,
              ) -> tuple[WalkResult, set[int]]:
    """The CFA walk for profile ``user``, then what static control flow misses:

    1. every function from its start (entry hints for :data:`USER_ENTRY_EXTRA_WORDS`),
       never giving up on a function at its first warning, then the local functions
       without a symbol that only calls enter (:func:`_calls_into_other_functions`);
    2. exception landing pads (the LSDA call-site tables of ``.gcc_except_table``),
       entered with the state of the call that throws -- how ``foo.cold`` cleanup
       code is reached;
    3. code reached only through an indirect jump that is not a switch table
       (``memmove-ssse3``'s computed jumps into 64-byte blocks): still unvisited
       instructions of a function whose unresolved indirect jumps all have one
       state get that state.  These gids are returned as *inferred*;
    4. cold parts no jump of their parent reached, from their FDE's first row;
    5. alignment padding (:func:`fill_padding`).
    """
    local_entries = _calls_into_other_functions(prog)
    opts = opts or WalkOptions(all_warnings=True)
    w = Walker(prog, opts, _entry_hints(prog))
    if setup is not None:
        setup(w)  # declarations: hints, ignored functions, entry stubs
    result = w.run()
    for g in local_entries:         # local functions entered only by a call
        if not w.visited[g]:
            w._walk_from(prog.func[g], g, func_entry_state())
    _walk_landing_pads(w)
    inferred = _walk_computed_targets(w)
    _walk_unreached_cold_parts(w)
    fill_padding(prog, result)
    return result, inferred


#: functions not entered by a call: the kernel "returns" into a signal trampoline with
#: rsp on the signal frame.  Their CFA is not rsp-based (their CFI says where the
#: signal frame is); framevet leaves it undefined.
USER_ENTRY_UNKNOWN = frozenset({"__restore_rt"})


def with_fde_functions(elf: ElfObject, skip_plt: bool = False) -> ElfObject:
    """A linked image whose symbol table leaves code out (stripped: only .dynsym):
    a copy with one local STT_FUNC per FDE that starts where no function does, so
    that local functions are walked from their entry, and calls to them are calls."""
    starts = {(s.shndx, s.offset) for s in elf.symbols if s.type == STT_FUNC and s.defined}
    extra: list[Symbol] = []
    n = len(elf.symbols)
    for fde in read_cfi(elf).fdes:
        if fde.section < 0 or (fde.section, fde.start) in starts or fde.end <= fde.start:
            continue
        sec = elf.sections[fde.section]
        if skip_plt and sec.name.startswith(".plt"):
            continue  # lazy-binding stubs: entered through the GOT, not called
        starts.add((fde.section, fde.start))
        # an FDE that starts inside a frame is GCC's cold partition of the function
        # that jumps there (a ``.cold`` name makes cfg link it to that function, as
        # for ``foo.cold``); one that starts at a function entry is a function, called
        # directly or through a pointer (a PLT's CFI is an expression of rip)
        plt = sec.name.startswith(".plt")
        cold = "" if plt or is_entry_rule(fde.rule_at(_past_nops(sec, fde.start))) else ".cold"
        extra.append(Symbol(n + len(extra), f"{sec.name}+0x{fde.start:x}{cold}",
                            sec.addr + fde.start, fde.end - fde.start, STT_FUNC, STB_LOCAL,
                            0, fde.section, fde.start))
    extra += _entry_functions(elf, starts, n + len(extra))
    if not extra:
        return elf
    return replace(elf, symbols=elf.symbols + extra, _by_name={})


def _past_nops(sec: Section, off: int) -> int:
    """The offset of the first instruction at or after ``off`` that is not a nop: GCC
    starts a cold part that holds a landing pad with one (a landing pad at offset 0
    would read as "none"), still under the CIE's rule ``cfa=rsp+8``."""
    decoder = iced_x86.Decoder(64, sec.data[off:off + 64], ip=off)
    for insn in decoder:
        if insn.mnemonic != iced_x86.Mnemonic.NOP or insn.is_invalid:
            return insn.ip
    return off


def _entry_functions(elf: ElfObject, starts: set[tuple[int, int]],
                     first_index: int) -> list[Symbol]:
    """One local STT_FUNC for each place the image's tables enter (``_start``, ``_init``,
    ``_fini``, what ``.init_array``/``.fini_array`` list: the CRT's ``frame_dummy``
    and ``__do_global_dtors_aux`` have no FDE) where no function starts; it runs up
    to the next function or the end of its section."""
    new: list[tuple[Section, int]] = []
    for addr in sorted(set(entry_points(elf))):
        sec = next((s for s in elf.sections if s.executable and s.addr <= addr < s.addr + s.size),
                   None)
        if sec is not None and (sec.index, addr - sec.addr) not in starts:
            starts.add((sec.index, addr - sec.addr))
            new.append((sec, addr - sec.addr))
    by_sec: dict[int, list[int]] = {}
    for index, start in starts:
        by_sec.setdefault(index, []).append(start)
    out: list[Symbol] = []
    for sec, off in new:
        end = min((o for o in by_sec[sec.index] if o > off), default=sec.size)
        name = sec.name if off == 0 and sec.name in (".init", ".fini") else f"{sec.name}+0x{off:x}"
        out.append(Symbol(first_index + len(out), name, sec.addr + off, end - off, STT_FUNC,
                          STB_LOCAL, 0, sec.index, off))
    return out


def _calls_into_other_functions(prog: Program) -> list[int]:
    """objtool takes a ``call`` to a label that starts no function for an
    intra-function call (a jump that keeps its push: kernel RSB stuffing).  In user
    code a call to a label inside *another* function is a call to a second entry
    point (OpenSSL's ``call _vpaes_schedule_low_round``): it returns.  So is a call
    to a label of the same function that nothing falls or jumps into, placed after
    an instruction that does not go on (``ret``; OpenSSL's ``call
    .Lkey_expansion_128`` in ``aesni_set_encrypt_key``): a local function with a
    frame of its own.  The entry is kept in ``prog._user_call_entry`` (what the
    callee may clobber); the local functions' entries are returned."""
    entries: dict[int, int] = {}
    prog._user_call_entry = entries  # type: ignore[attr-defined]
    local: list[int] = []
    jumped = {prog.jump_dest[g] for g in range(len(prog.kind))
              if prog.kind[g] in (d.JUMP_COND, d.JUMP_UNCOND) and g not in prog.intra_calls}
    for g in sorted(prog.intra_calls):
        dg = prog.jump_dest[g]
        fg, fd = prog.func[g], prog.func[dg] if dg >= 0 else -1
        other = fg < 0 or fd < 0 or prog.functions[fg].parent != prog.functions[fd].parent
        if other or (dg not in jumped and _after_dead_end(prog, dg)):
            if dg >= 0:
                entries[g] = dg
                if not other:
                    local.append(dg)
            prog.kind[g] = d.CALL
            prog.jump_dest[g] = -1
            prog.ops[g] = None
            prog.intra_calls.discard(g)
    return local


def _after_dead_end(prog: Program, g: int) -> bool:
    """Only a call enters the code at ``g``: walking back over straight-line code
    (``.Lkey_expansion_128`` falls into ``.Lkey_expansion_128_cold``, both called),
    an instruction that does not go on (``ret``, ``jmp``) comes before any other
    transfer of control."""
    p = prog.prev_same_sec(g)
    for _ in range(64):
        if p < 0:
            return False
        k = prog.kind[p]
        if k in (d.RETURN, d.JUMP_UNCOND, d.JUMP_DYNAMIC) or prog.dead_end[p]:
            return True
        if k not in (d.OTHER, d.NOP) and k not in _PADDING:
            return False
        p = prog.prev_same_sec(p)
    return False


def _entry_hints(prog: Program) -> dict[int, tuple[int, ...]]:
    out: dict[int, tuple[int, ...]] = {}
    for f in prog.functions:
        words = USER_ENTRY_EXTRA_WORDS.get(f.name)
        g = prog.gid(f.sec, f.start)
        if g >= 0 and f.name in USER_ENTRY_UNKNOWN:
            st = blank_state()
            out[g] = tuple(st[0:9]) + tuple(st[REGS:STATE_LEN])
        if words and g >= 0:
            st = func_entry_state()
            st[CFA_OFF] += 8 * words
            st[STACK] += 8 * words
            out[g] = tuple(st[0:9]) + tuple(st[REGS:STATE_LEN])
    return out


def _resume(w: Walker, g: int, cfi: tuple[int, ...]) -> None:
    """Walk from ``g`` with the (interned) state ``cfi``."""

    st = blank_state()
    load_cfi(st, cfi)
    w._walk_from(w.prog.func[g], g, st)


def _walk_landing_pads(w: Walker) -> None:

    prog = w.prog
    if prog.elf.section(".gcc_except_table") is None:
        return
    pads: list[tuple[int, int, int, int]] = []      # section, start, end, landing pad
    for fde in read_cfi(prog.elf).fdes:
        if fde.section in prog.secmap:
            pads += [(fde.section, a, b, lp) for a, b, lp in call_sites(prog.elf, fde)]
    # per pad: its gid, and the calls of its call-site range in address order
    todo: list[tuple[int, list[int]]] = []
    for sec, a, b, lp in pads:
        ds = prog.secmap[sec]
        base = prog.base[sec]
        calls = [base + i for i in range(bisect_left(ds.off, a), bisect_left(ds.off, b))
                 if prog.kind[base + i] in (d.CALL, d.CALL_DYNAMIC)]
        todo.append((prog.gid(sec, lp), calls))
    progress = True
    while progress:
        progress = False
        for lg, calls in todo:
            if lg < 0 or w.visited[lg]:
                continue
            for g in calls:
                if w.cfi[g] is not None:
                    _resume(w, lg, w.cfi[g])   # type: ignore[arg-type]
                    progress = True
                    break


def _walk_unreached_cold_parts(w: Walker) -> None:
    """A cold part no jump of its parent reached (a switch table's case, a parent
    framevet could not name, a nameless part a table tied to its parent) is walked
    from the first row of its own FDE: it is entered with its parent's frame, which
    only that row describes."""
    prog = w.prog
    todo = [(fi, g) for fi, f in enumerate(prog.functions)
            if (".cold" in f.name or f.parent != fi) and f.canonical
            and (g := prog.gid(f.sec, f.start)) >= 0
            and not w.visited[g]]
    if not todo:
        return
    fdes = {(fde.section, fde.start): fde for fde in read_cfi(prog.elf).fdes if fde.rows}
    for fi, g in todo:
        while prog.kind[g] == d.NOP and (n := prog.next_same_sec(g)) >= 0 and prog.func[n] == fi:
            g = n                   # (GCC's nop before a landing pad at the part's start)
        if w.visited[g]:
            continue
        f = prog.functions[fi]
        fde = fdes.get((f.sec, f.start))
        state = state_for(fde.rule_at(prog.off[g])) if fde is not None else None
        w._walk_from(f.parent, g, state if state is not None else func_entry_state())


def _walk_computed_targets(w: Walker) -> set[int]:
    prog = w.prog
    before = bytearray(w.visited)
    by_func: dict[int, set[tuple[int, ...]]] = {}
    for g, k in enumerate(prog.kind):
        if k == d.JUMP_DYNAMIC and prog.func[g] >= 0 and g not in prog.jump_table_insn:
            c = w.cfi[g]
            if c is not None:
                by_func.setdefault(prog.functions[prog.func[g]].parent, set()).add(c)
    if not by_func:
        return set()
    # code only a call that never returns leads to is dead, not a jump target
    dead = dead_after_noreturn(prog, w.visited)
    for fi, states in by_func.items():
        if len(states) != 1:
            continue
        state = next(iter(states))
        for g in prog.func_insns(fi):
            if not w.visited[g] and g not in dead and prog.kind[g] not in _PADDING:
                _resume(w, g, state)
    return {g for g in range(len(before)) if w.visited[g] and not before[g]}


_PADDING = (d.NOP, d.TRAP)


def fill_padding(prog: Program, result: WalkResult) -> None:
    """Unreachable alignment padding (nops, int3) inside a function gets the state of
    the instruction before it, as the assembler's CFI does: a ``.cfi_*`` directive
    takes effect at the next label, after the padding.  Never executed, so any rule
    unwinds equally well; this one keeps ``framevet cfa`` and ``readelf -wF`` aligned."""
    cfi, kind, func = result.cfi, prog.kind, prog.func
    for ds in prog.sections:
        base = prog.base[ds.index]
        for g in range(base + 1, base + len(ds)):
            if cfi[g] is None and kind[g] in _PADDING and func[g] >= 0 \
                    and func[g - 1] == func[g]:
                cfi[g] = cfi[g - 1]
