"""Where the caller's callee-saved registers live, per instruction (framevet's own).

objtool tracks only *saves to the stack*; it never asks whether rbx still
holds the caller's value at a return.  This is a must-analysis over a
function's instructions: for each of rbx, rbp, r12-r15, the set of places
(registers, CFA-relative stack slots) that certainly hold the caller's value.
A move copies, a write kills, a push/store saves, a pop/load restores; joins
intersect.  At every return and tail call the register itself must be in its
own set.

Register effects come from iced-x86's instruction info (every implicit write:
cpuid's rbx, xchg, cmpxchg, ...), decoded again only for the functions checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86
from iced_x86 import OpAccess, OpKind, Register

from framevet.cfg.noreturn import is_noreturn, is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import (
    CALLEE_SAVED,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_REG,
    STACK,
    UNDEFINED,
)
from framevet.stack.rspcopies import on_new_stack

#: where rbp's save rule sits in an interned CFI tuple
REGS_BP = 9 + 2 * d.BP

TRACKED = (d.BX, d.BP, d.R12, d.R13, d.R14, d.R15)
_HW64 = {getattr(Register, n): i for i, n in enumerate(
    ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [f"R{k}" for k in range(8, 16)])}


@dataclass(slots=True)
class Effect:
    """What one instruction does to registers and stack memory."""

    writes: int = 0            # bit mask of hardware registers written
    move: tuple[int, int] | None = None          # mov %src64, %dst64
    store: tuple[int, int, int, int] | None = None  # (src reg or -1, base, disp, size)
    load: tuple[int, int, int] | None = None     # (dst reg, base, disp), 64-bit loads
    mem_read: tuple[int, int] | None = None      # (base, disp) of any rsp/rbp-based read




def effects(prog: Program, gids: list[int]) -> dict[int, Effect]:
    """Decode ``gids`` again with full operand information."""
    out: dict[int, Effect] = {}
    for g in gids:
        out[g] = _effect(prog.instruction(g))
    return out


def _effect(ins: iced_x86.Instruction) -> Effect:
    e = Effect()
    info = d.INFO.info(ins)
    e.writes = d.gprs_written(info)
    mn = ins.mnemonic
    if (mn == iced_x86.Mnemonic.MOV and ins.op_count == 2 and ins.op0_kind == OpKind.REGISTER
            and ins.op1_kind == OpKind.REGISTER):
        dst, src = _HW64.get(ins.op0_register), _HW64.get(ins.op1_register)
        if dst is not None and src is not None:
            e.move = (src, dst)
    for um in info.used_memory():
        base = _HW64.get(um.base)
        if base not in (d.SP, d.BP) or um.index != Register.NONE:
            continue
        disp = um.displacement - (1 << 64) if um.displacement >= 1 << 63 else um.displacement
        if um.access in d.WRITE_ACCESS and mn != iced_x86.Mnemonic.PUSH and \
                mn != iced_x86.Mnemonic.CALL:
            src = -1
            if mn == iced_x86.Mnemonic.MOV and ins.op1_kind == OpKind.REGISTER:
                src = _HW64.get(ins.op1_register, -1)
            size = iced_x86.MemorySizeExt.size(um.memory_size) if hasattr(
                iced_x86, "MemorySizeExt") else 8
            e.store = (src, base, disp, size or 8)
        if um.access in (OpAccess.READ, OpAccess.READ_WRITE, OpAccess.COND_READ):
            e.mem_read = (base, disp)
        if (um.access == OpAccess.READ and mn == iced_x86.Mnemonic.MOV
                and ins.op0_kind == OpKind.REGISTER):
            dst = _HW64.get(ins.op0_register)
            if dst is not None:
                e.load = (dst, base, disp)
    return e


def slot_of(cfi: tuple[int, ...] | None, base: int, disp: int) -> int | None:
    """CFA-relative offset of ``disp(%base)`` given the CFA state before the instruction
    (None when unknown, or inside a realigned DRAP frame)."""
    if cfi is None or cfi[CFA_BASE] == UNDEFINED or cfi[DRAP]:
        return None
    # only while the CFA is the addressing register itself: once rsp is realigned
    # (and $-N) its distance to the CFA is unknown
    if base == cfi[CFA_BASE] and base in (d.SP, d.BP):
        return disp - cfi[CFA_OFF]
    return None


SLOT = 1 << 20
FRAME = 1 << 18


def _slot(k: int, cfi: tuple[int, ...] | None = None) -> int:
    """A stack slot's key.  Inside a DRAP-realigned frame objtool's stack size counts from
    the new frame base, so those slots get a numbering space of their own."""
    return SLOT + k + (FRAME if cfi is not None and cfi[DRAP] else 0)


def _frame_slot(cfi: tuple[int, ...] | None, base: int, disp: int) -> int | None:
    """Key of ``disp(%base)`` inside a DRAP frame (rbp = frame base after push %rbp)."""
    if cfi is None or not cfi[DRAP]:
        return None
    if base == d.BP:
        return _slot(disp, cfi)
    if base == d.SP:
        return _slot(disp - cfi[STACK], cfi)
    return None


def _key(cfi: tuple[int, ...] | None, base: int, disp: int) -> int | None:
    k = slot_of(cfi, base, disp)
    if k is not None:
        return _slot(k)
    return _frame_slot(cfi, base, disp)


@dataclass(slots=True)
class Clobber:
    gid: int          # the return / tail call
    regs: tuple[int, ...]


def callee_saved_clobbers(prog: Program, cfi: list[tuple[int, ...] | None], fi: int,
                          allowed: frozenset[int] = frozenset(),
                          summaries: dict[int, frozenset[int]] | None = None) -> list[Clobber]:
    """Returns and tail calls of function ``fi`` where a callee-saved register does
    not hold the caller's value (registers in ``allowed`` are declared clobbers).
    ``summaries`` maps a callee's symbol index to the callee-saved registers it is
    known not to preserve (local helpers with their own convention)."""
    state_in, _ = _flow(prog, cfi, fi, summaries or {})
    out = []
    for g, st in sorted(state_in.items()):
        c = cfi[g]
        if c is not None and on_new_stack(c):
            continue            # (nothing of the caller's frame is on a new stack)
        if prog.kind[g] == d.RETURN or (is_sibling_call(prog, g)
                                        and not _noreturn_tail_call(prog, g)):
            bad = tuple(r for i, r in enumerate(TRACKED)
                        if not st[i] >> r & 1 and r not in allowed)
            if bad:
                out.append(Clobber(g, bad))
    return out


def _noreturn_tail_call(prog: Program, g: int) -> bool:
    """A tail call into a function that never returns: nothing goes back to the
    caller on this path, so it owes the caller no register."""
    jd = prog.jump_dest[g]
    if jd >= 0 and prog.func[jd] >= 0:
        return is_noreturn(prog, prog.functions[prog.func[jd]].sym)
    return is_noreturn(prog, prog.call_dest[g])


def places(prog: Program, cfi: list[tuple[int, ...] | None],
           fi: int) -> dict[int, tuple[frozenset[int], ...]]:
    """Per instruction of function ``fi`` (before it executes): for each of
    :data:`TRACKED`, the places certainly holding the caller's value -- registers as
    their numbers, stack slots as their :func:`_slot` keys."""
    state_in, slots = _flow(prog, cfi, fi, {})
    by_bit = {bit: key for key, bit in slots.items()}

    def decode(mask: int) -> frozenset[int]:
        out = {r for r in range(16) if mask >> r & 1}
        out.update(key for bit, key in by_bit.items() if mask & bit)
        return frozenset(out)

    return {g: tuple(decode(m) for m in st) for g, st in state_in.items()}


def _flow(prog: Program, cfi: list[tuple[int, ...] | None], fi: int,
          summaries: dict[int, frozenset[int]],
          ) -> tuple[dict[int, tuple[int, ...]], _SlotBits]:
    """The must-analysis to its fixpoint: per instruction, one places mask per caller
    value (bits 0-15 the registers, higher bits the stack slots met, numbered as met)."""
    slots = _SlotBits()
    gids = [g for g in prog.func_insns(fi) if cfi[g] is not None]
    if not gids:
        return {}, slots
    eff = effects(prog, gids)
    member = set(gids)
    start = gids[0]
    state_in: dict[int, tuple[int, ...]] = {start: tuple(1 << r for r in TRACKED)}
    work = [start]
    while work:
        g = work.pop()
        k = prog.kind[g]
        if k == d.RETURN:
            continue
        nst = _apply(state_in[g], eff.get(g), cfi[g], prog, g, slots)
        cd = prog.call_dest[g]
        if cd is not None and k == d.CALL and cd.index in summaries:
            kill = sum(1 << r for r in summaries[cd.index])
            nst = tuple(p & ~kill for p in nst)
        for succ in successors(prog, g):
            if succ not in member:
                continue
            old = state_in.get(succ)
            new = nst if old is None else tuple(x & y for x, y in zip(old, nst, strict=True))
            if old != new:
                state_in[succ] = new
                work.append(succ)
    return state_in, slots


#: the bit of the first stack slot met (bits 0-15 are the registers).  A module global
#: on purpose: Cython computes ``1 << (16 + len(self))`` in C, where it overflows past
#: 63 slots, but shifts a Python object as Python does
_FIRST_SLOT_BIT = 1 << 16


class _SlotBits(dict[int, int]):
    """Stack slot key -> its bit in a places mask."""

    def bit(self, key: int) -> int:
        b = self.get(key)
        if b is None:
            b = self[key] = _FIRST_SLOT_BIT << len(self)
        return b


def successors(prog: Program, g: int) -> list[int]:
    """Where control goes after instruction ``g`` inside its function."""
    k = prog.kind[g]
    out = [a for a, _ in prog.alts.get(g, ()) if a >= 0]
    if k in (d.RETURN, d.JUMP_DYNAMIC, d.CONTEXT_SWITCH) or prog.dead_end[g]:
        return out
    if k == d.JUMP_COND or k == d.JUMP_UNCOND:
        if prog.jump_dest[g] >= 0 and prog.call_dest[g] is None:
            out.append(prog.jump_dest[g])
        if k == d.JUMP_UNCOND:
            return out
    if k in (d.CALL, d.CALL_DYNAMIC) and is_noreturn(prog, prog.call_dest[g]):
        return out
    n = prog.next_same_sec(g)
    if n >= 0:
        out.append(n)
    return out


_CALLER_SAVED = sum(1 << r for r in range(16) if r not in CALLEE_SAVED)


def _copy(places: list[int], src_bit: int, dst_bit: int) -> None:
    """dst now holds what src holds (and nothing else)."""
    for i, p in enumerate(places):
        p &= ~dst_bit
        if p & src_bit:
            p |= dst_bit
        places[i] = p


def _apply(st: tuple[int, ...], e: Effect | None, cfi: tuple[int, ...] | None,
           prog: Program, g: int, slots: _SlotBits) -> tuple[int, ...]:
    places = list(st)
    ops = prog.ops[g]
    k = prog.kind[g]
    if ops:
        for op in ops:
            dtype, dreg, _, stype, sreg, _ = op
            if dtype == d.D_PUSH and stype == d.S_REG and cfi is not None:
                drap_bp = cfi[DRAP] and sreg == d.BP and cfi[CFA_BASE] == cfi[DRAP_REG]
                _copy(places, 1 << sreg,
                      slots.bit(_slot(0 if drap_bp else -(cfi[STACK] + 8), cfi)))
            elif stype == d.S_POP and dtype == d.D_REG and cfi is not None:
                stack = cfi[STACK]
                if len(ops) == 2:
                    # leave: rsp = rbp first, so the pop reads rbp's own save slot --
                    # CFA-relative, or the DRAP frame's base (rbp = frame offset 0)
                    if cfi[REGS_BP] == CFA:
                        stack = -cfi[REGS_BP + 1]
                    elif cfi[DRAP] and cfi[REGS_BP] == d.BP:
                        stack = -cfi[REGS_BP + 1]
                    else:
                        continue
                _copy(places, slots.bit(_slot(-stack, cfi)), 1 << dreg)
    if e is not None:
        if e.store is not None:
            src, base, disp, _ = e.store
            key = _key(cfi, base, disp)
            if key is not None:
                _copy(places, 1 << src if src >= 0 else 0, slots.bit(key))
        written = e.writes
        if ops and any(op[3] == d.S_POP for op in ops):
            written &= ~(1 << d.SP)
            for op in ops:
                if op[3] == d.S_POP and op[0] == d.D_REG:
                    written &= ~(1 << op[1])
        loaded = 0
        loaded_to = 0
        if e.load is not None:
            dst, base, disp = e.load
            key = _key(cfi, base, disp)
            if key is not None:
                loaded, loaded_to = slots.bit(key), 1 << dst
        moved_from = 1 << e.move[0] if e.move is not None else 0
        moved_to = 1 << e.move[1] if e.move is not None else 0
        for i, p in enumerate(places):
            q = p & ~written
            if p & moved_from:
                q |= moved_to
            if p & loaded:
                q |= loaded_to
            places[i] = q
    if k == d.CALL or k == d.CALL_DYNAMIC:
        places = [p & ~_CALLER_SAVED for p in places]
    return tuple(places)
