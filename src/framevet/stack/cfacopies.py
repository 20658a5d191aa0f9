"""Profile user: every place that holds a copy of the CFA, kept exactly.

Hand-written frames (OpenSSL's perlasm, glibc's and libffi's assembly) keep the
CFA in whatever register or stack slot is handy: ``mov %rsp,%rax`` before a
realignment, ``mov %rax,16(%rsp)`` to free %rax, ``mov 16(%rsp),%rsi`` to reload
it, ``mov -48(%rsi),%r15`` to restore through it, ``lea (%rsi),%rsp`` to return.
The walk keeps one *spelling* of the CFA (the one the CFI usually uses); this
module keeps what else is known, after every instruction:

* ``VALS[r] = (CFA, k)``: register ``r`` holds ``CFA + k`` -- set by a copy
  (``mov``, ``lea k(%r2)``, a load from a slot holding a copy), forgotten by any
  other write to ``r`` (a call forgets the registers it clobbers);
* one stack slot, ``rsp + SLOT_AT`` holding ``CFA + SLOT_VAL``, besides the
  slot the CFA rule itself may name (:data:`USER_SP_DEREF`): set by a store or
  a push of a copy, moved along with rsp, forgotten when overwritten;
* rsp's own distance to the CFA (``STACK``) where an instruction computes rsp
  from a copy (``lea (%rax),%rsp``).

With that, a CFA rule whose register or slot is overwritten moves to another
copy instead of becoming ``undefined``; two spellings of one CFA compare equal
(:func:`same_cfa`); loads through any copy restore saved registers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import iced_x86
from iced_x86 import Mnemonic, OpKind, Register

from framevet.decode import insn as d
from framevet.decode.state import (
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    MAYBE,
    NO_SLOT,
    REGS,
    SLOT_AT,
    SLOT_VAL,
    SP_REL,
    STACK,
    STACK_UNKNOWN,
    UNDEFINED,
    USER_SP_DEREF,
    VALS,
    restore_reg,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from framevet.cfg.program import Program

#: index shift from a full state to an interned CFI tuple (fields from REGS on)
TUPLE_SHIFT = 9 - REGS

# what an instruction does, as far as copies of the CFA go
_OTHER, _MOV, _LEA, _LOAD, _STORE, _PUSH_REG, _PUSH_MEM, _XCHG = range(8)


class Effect(NamedTuple):
    op: int
    #: destination register (_MOV, _LEA, _LOAD), source register (_STORE, _PUSH_REG),
    #: first register (_XCHG)
    reg: int = -1
    #: source register (_MOV), address base (_LEA, _LOAD, _STORE, _PUSH_MEM),
    #: second register (_XCHG)
    base: int = -1
    disp: int = 0
    #: general-purpose registers written, as a bit mask
    writes: int = 0
    #: (base, disp, size) of every memory operand written through a register
    stores: tuple[tuple[int, int, int], ...] = ()


_HW64 = {getattr(Register, n): i for i, n in enumerate(
    ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [f"R{k}" for k in range(8, 16)])}


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def effect(prog: Program, g: int) -> Effect:
    """What instruction ``g`` does to copies of the CFA (decoded once, cached)."""
    cache: dict[int, Effect] | None = getattr(prog, "_cfa_copy_effects", None)
    if cache is None:
        cache = {}
        prog._cfa_copy_effects = cache  # type: ignore[attr-defined]
    e = cache.get(g)
    if e is None:
        e = cache[g] = _decode(prog.instruction(g))
    return e


def _decode(ins: iced_x86.Instruction) -> Effect:
    info = d.INFO.info(ins)
    writes = d.gprs_written(info)
    stores = []
    for um in info.used_memory():
        base = _HW64.get(um.base, -1)
        if um.access in d.WRITE_ACCESS and base >= 0:
            size = iced_x86.MemorySizeExt.size(um.memory_size) or 8
            stores.append((base, _signed(um.displacement) if um.index == Register.NONE
                           else 0, size if um.index == Register.NONE else 1 << 30))
    mn, k0, k1 = ins.mnemonic, ins.op0_kind, ins.op1_kind
    r0 = _HW64.get(ins.op0_register, -1) if k0 == OpKind.REGISTER else -1
    r1 = _HW64.get(ins.op1_register, -1) if k1 == OpKind.REGISTER else -1
    plain = ins.memory_index == Register.NONE and ins.memory_base != Register.RIP
    mbase = _HW64.get(ins.memory_base, -1) if plain else -1
    disp = _signed(ins.memory_displacement)
    st = tuple(stores)
    if mn == Mnemonic.MOV and r0 >= 0 and r1 >= 0:
        return Effect(_MOV, r0, r1, 0, writes, st)
    if mn == Mnemonic.LEA and r0 >= 0 and mbase >= 0:
        return Effect(_LEA, r0, mbase, disp, writes, st)
    if mn == Mnemonic.MOV and r0 >= 0 and k1 == OpKind.MEMORY and mbase >= 0:
        return Effect(_LOAD, r0, mbase, disp, writes, st)
    if mn == Mnemonic.MOV and k0 == OpKind.MEMORY and r1 >= 0 and mbase >= 0:
        return Effect(_STORE, r1, mbase, disp, writes, st)
    if mn == Mnemonic.PUSH and r0 >= 0:
        return Effect(_PUSH_REG, r0, -1, 0, writes, st)
    if mn == Mnemonic.PUSH and k0 == OpKind.MEMORY and mbase >= 0:
        return Effect(_PUSH_MEM, -1, mbase, disp, writes, st)
    if mn == Mnemonic.XCHG and r0 >= 0 and r1 >= 0:
        return Effect(_XCHG, r0, r1, 0, writes, st)
    return Effect(_OTHER, -1, -1, 0, writes, st)


# -- reading a state (a full state, or an interned tuple with ``shift``) -----------

def copy_value(s: Sequence[int], r: int, shift: int = 0) -> int | None:
    """``k`` when register ``r`` certainly holds ``CFA + k``."""
    if s[DRAP] or s[CFA_BASE] == UNDEFINED:
        return None
    if r == s[CFA_BASE]:
        return -s[CFA_OFF]
    if r == d.SP:
        st = s[STACK]
        return -st if st > STACK_UNKNOWN else None
    i = VALS + shift + 2 * r
    if s[i] == CFA:
        return s[i + 1]
    return None


def sp_rel(s: Sequence[int], r: int, shift: int = 0) -> int | None:
    """``k`` when register ``r`` certainly holds ``rsp + k``."""
    if r == d.SP:
        return 0
    i = VALS + shift + 2 * r
    return s[i + 1] if s[i] == SP_REL else None


def slot_value(s: Sequence[int], at: int, shift: int = 0) -> int | None:
    """``k`` when the 8-byte stack slot at ``rsp + at`` certainly holds ``CFA + k``."""
    if s[CFA_BASE] == USER_SP_DEREF and s[CFA_OFF] == at:
        return -s[DRAP_OFF]
    if s[SLOT_AT + shift] == at and s[CFA_BASE] != UNDEFINED:
        return s[SLOT_VAL + shift]
    return None


def same_cfa(s: Sequence[int], base: int, off: int, post: int | None, shift: int = 0) -> bool:
    """Is ``base + off`` (``*(base + off) + post`` when ``post`` is given) the CFA, by
    what state ``s`` knows?"""
    if not 0 <= base < 16:
        return False
    if post is None:
        k = copy_value(s, base, shift)
        return k is not None and k + off == 0
    at = _sp_offset(s, base, off, shift)
    k = None if at is None else slot_value(s, at, shift)
    return k is not None and k + post == 0


def same_spelled(c1: Sequence[int], state: Sequence[int]) -> bool:
    """Profile user, a join: the CFA rule recorded first (``c1``) names a copy of the
    CFA that ``state`` knows of, though ``state`` spells the CFA otherwise."""
    base = c1[CFA_BASE]
    if base == USER_SP_DEREF:
        return same_cfa(state, d.SP, c1[CFA_OFF], c1[DRAP_OFF])
    return 0 <= base < 16 and same_cfa(state, base, c1[CFA_OFF], None)


def unknowable(s: Sequence[int], base: int, off: int, post: int | None,
               shift: int = 0) -> bool:
    """The CFI names a place framevet cannot judge: a register loaded from the stack
    (:data:`MAYBE`), or a stack slot it does not track."""
    if not 0 <= base < 16 or s[CFA_BASE] == UNDEFINED or s[DRAP]:
        return False
    if post is None:      # (rsp's own entry: rsp was set from such a register)
        return s[VALS + shift + 2 * base] == MAYBE
    return s[VALS + shift + 2 * base] == MAYBE or _sp_offset(s, base, off, shift) is not None


def _rehome(s: list[int]) -> bool:
    """The CFA's rule is gone: spell it from rsp when rsp's distance is known, else
    from the known slot, else from a register known to hold a copy (callee-saved
    first).  False when nothing holds it."""
    if s[STACK] > STACK_UNKNOWN:
        s[CFA_BASE], s[CFA_OFF] = d.SP, s[STACK]
        return True
    if s[SLOT_AT] != NO_SLOT:
        s[CFA_BASE], s[CFA_OFF], s[DRAP_OFF] = USER_SP_DEREF, s[SLOT_AT], -s[SLOT_VAL]
        s[SLOT_AT] = NO_SLOT
        return True
    for r in (d.BP, d.BX, d.R12, d.R13, d.R14, d.R15, *_CALLER_SAVED):
        if s[VALS + 2 * r] == CFA:
            s[CFA_BASE], s[CFA_OFF] = r, -s[VALS + 2 * r + 1]
            s[VALS + 2 * r] = UNDEFINED
            return True
    return False


_CALLER_SAVED = (d.AX, d.CX, d.DX, d.SI, d.DI, d.R8, d.R9, d.R10, d.R11)


# -- one instruction -----------------------------------------------------------------

def _sp_delta(prog: Program, g: int, e: Effect) -> int | None:
    """How much instruction ``g`` moves rsp (0 when it does not write it), or None."""
    if not e.writes >> d.SP & 1 or prog.kind[g] in (d.CALL, d.CALL_DYNAMIC, d.RETURN):
        return 0
    delta = 0
    for dtype, dreg, _, stype, sreg, soff in prog.ops[g] or ():
        if dtype == d.D_PUSH or dtype == d.D_PUSHF:
            delta -= 8
        elif stype == d.S_POP or stype == d.S_POPF:
            delta += 8
            if dtype == d.D_REG and dreg == d.SP:
                return None
        elif dtype == d.D_REG and dreg == d.SP:
            if stype == d.S_ADD and sreg == d.SP:
                delta += soff
            else:
                return None
    return delta if prog.ops[g] else None


def _new_sp(pre: Sequence[int], e: Effect) -> int | None:
    """``k`` with rsp = CFA + k after an instruction that sets rsp from a copy."""
    if e.op == _MOV and e.reg == d.SP:
        return copy_value(pre, e.base)
    if e.op == _LEA and e.reg == d.SP and e.base != d.SP:
        k = copy_value(pre, e.base)
        return None if k is None else k + e.disp
    if e.op == _XCHG and d.SP in (e.reg, e.base):
        return copy_value(pre, e.base if e.reg == d.SP else e.reg)
    return None


def _new_value(pre: Sequence[int], e: Effect, r: int) -> tuple[int, int] | None:
    """What the instruction leaves in register ``r`` (which it writes):
    ``(CFA, k)``, ``(SP_REL, k)``, ``(MAYBE, 0)``, or None (nothing of interest)."""
    src, disp = e.base, e.disp
    if e.op == _XCHG and r in (e.reg, e.base):
        src, disp = (e.base if r == e.reg else e.reg), 0
    elif e.op == _MOV and e.reg == r:
        disp = 0
    elif e.op == _LOAD and e.reg == r:
        at = _sp_offset(pre, src, disp)
        if at is None:
            return None
        k = slot_value(pre, at)
        return (MAYBE, 0) if k is None else (CFA, k)
    elif not (e.op == _LEA and e.reg == r):
        return None
    k = copy_value(pre, src)
    if k is not None:
        return CFA, k + disp
    o = sp_rel(pre, src)
    if o is not None:
        return SP_REL, o + disp
    return (MAYBE, 0) if pre[VALS + 2 * src] == MAYBE else None


def track(prog: Program, g: int, pre: list[int], s: list[int], clobbers: int) -> bool:
    """After instruction ``g`` (``pre``: the state before it, ``s``: after the stack
    model's own update): keep the copies of the CFA exact, restore registers loaded
    through a copy, and re-home a CFA whose rule was lost.  ``clobbers``: registers a
    call clobbers.  True when ``s`` changed."""
    if pre[CFA_BASE] == UNDEFINED or pre[DRAP] or s[DRAP]:
        return False
    e = effect(prog, g)
    before = s[:]
    writes = (e.writes | clobbers) & ~(1 << d.SP) & 0xFFFF
    while writes:                       # the registers written, lowest first
        low = writes & -writes
        writes ^= low
        r = low.bit_length() - 1
        if r != s[CFA_BASE]:
            v = _new_value(pre, e, r)
            s[VALS + 2 * r], s[VALS + 2 * r + 1] = v if v is not None else (UNDEFINED, 0)
    _restore_through_copy(pre, s, e)
    _track_sp(prog, g, pre, s, e)
    delta = _rsp_moved(prog, g, pre, s, e)
    for r in range(16) if SP_REL in s[VALS:VALS + 32:2] else ():
        if s[VALS + 2 * r] == SP_REL:
            if delta is None:
                s[VALS + 2 * r] = UNDEFINED
            else:
                s[VALS + 2 * r + 1] -= delta
    _track_slot(pre, s, e, delta)
    if s[CFA_BASE] == UNDEFINED:
        _rehome(s)
    return s != before


def _rsp_moved(prog: Program, g: int, pre: Sequence[int], s: Sequence[int],
               e: Effect) -> int | None:
    """By how much instruction ``g`` moved rsp, when known."""
    delta = _sp_delta(prog, g, e)
    if delta is not None:
        return delta
    if e.op in (_MOV, _LEA) and e.reg == d.SP:
        o = sp_rel(pre, e.base)
        if o is not None:
            return o + (e.disp if e.op == _LEA else 0)
    pk, sk = copy_value(pre, d.SP), copy_value(s, d.SP)
    return None if pk is None or sk is None else sk - pk


def _restore_through_copy(pre: Sequence[int], s: list[int], e: Effect) -> None:
    """``mov disp(%copy), %reg`` from ``reg``'s save slot restores it."""
    if e.op != _LOAD:
        return
    k = copy_value(pre, e.base)
    r = e.reg
    if k is not None and s[REGS + 2 * r] == CFA and s[REGS + 2 * r + 1] == k + e.disp:
        restore_reg(s, r)


def _track_sp(prog: Program, g: int, pre: Sequence[int], s: list[int], e: Effect) -> None:
    """rsp set from a copy: its distance to the CFA is known again (and the CFA goes
    back to rsp when its own rule was lost); rsp moved by an unknown amount while the
    CFA is elsewhere: its distance is unknown."""
    if not e.writes >> d.SP & 1 or prog.kind[g] in (d.CALL, d.CALL_DYNAMIC, d.RETURN):
        return
    v = _new_value(pre, e, d.SP) if e.op in (_MOV, _LEA) else None
    s[VALS + 2 * d.SP] = MAYBE if v is not None and v[0] == MAYBE else UNDEFINED
    k = _new_sp(pre, e)
    if k is not None:
        if s[CFA_BASE] == UNDEFINED or s[CFA_BASE] == USER_SP_DEREF or s[CFA_BASE] == d.SP:
            s[CFA_BASE], s[CFA_OFF] = d.SP, -k
        s[STACK] = -k
        return
    if _sp_delta(prog, g, e) is None and s[CFA_BASE] != d.SP and s[STACK] > STACK_UNKNOWN:
        s[STACK] = STACK_UNKNOWN * 2


def _track_slot(pre: Sequence[int], s: list[int], e: Effect, delta: int | None) -> None:
    """The known slot: moved along with rsp, forgotten when written over, set by a
    store or push of a copy, or kept when the CFA rule stops naming it (a reload).
    A CFA rule naming an overwritten slot is lost."""
    at = s[SLOT_AT]
    if pre[CFA_BASE] == USER_SP_DEREF and s[CFA_BASE] != USER_SP_DEREF:
        at, s[SLOT_VAL] = pre[CFA_OFF], -pre[DRAP_OFF]
    s[SLOT_AT] = NO_SLOT if at == NO_SLOT or delta is None else at - delta
    for base, disp, size in e.stores:
        lo = _sp_offset(pre, base, disp)
        if lo is None:
            continue
        if delta is not None:
            lo -= delta                   # in terms of rsp after the instruction
        if s[SLOT_AT] != NO_SLOT and lo < s[SLOT_AT] + 8 and s[SLOT_AT] < lo + size:
            s[SLOT_AT] = NO_SLOT
        if s[CFA_BASE] == USER_SP_DEREF and lo < s[CFA_OFF] + 8 and s[CFA_OFF] < lo + size \
                and not (e.op == _STORE and copy_value(pre, e.reg) == -s[DRAP_OFF]):
            s[CFA_BASE], s[CFA_OFF], s[DRAP_OFF] = UNDEFINED, 0, -1
    k: int | None = None
    new_at: int | None = 0
    if e.op == _STORE and e.reg != d.SP:
        k = copy_value(pre, e.reg)
        lo = _sp_offset(pre, e.base, e.disp)
        new_at = lo if lo is None or delta is None else lo - delta
    elif e.op == _PUSH_REG:
        k = copy_value(pre, e.reg)
    elif e.op == _PUSH_MEM:
        lo = _sp_offset(pre, e.base, e.disp)
        k = None if lo is None else slot_value(pre, lo)
    if k is not None and new_at is not None and not (
            s[CFA_BASE] == USER_SP_DEREF and s[CFA_OFF] == new_at):
        s[SLOT_AT], s[SLOT_VAL] = new_at, k


def _sp_offset(pre: Sequence[int], base: int, disp: int, shift: int = 0) -> int | None:
    """``disp(%base)`` as an offset from rsp (before the instruction), when known."""
    o = sp_rel(pre, base, shift)
    if o is not None:
        return o + disp
    b, k = copy_value(pre, base, shift), copy_value(pre, d.SP, shift)
    return None if b is None or k is None else b + disp - k
