"""The user-space stack model: frames that compilers and hand-written assembly build
outside objtool's rules (realignment through a frame or DRAP register, the CFA in a
stack slot, frames built with register moves), applied on top of objtool's
``update_cfi_state`` (:mod:`framevet.stack.effects`) in profile ``user``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.decode.state import (
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    REGS,
    STACK,
    STACK_UNKNOWN,
    UNDEFINED,
    USER_SP_DEREF,
    VALS,
    cfa_back_to_rsp,
    restore_reg,
)
from framevet.stack.cfacopies import track
from framevet.stack.userframe import (
    copy_of_cfa,
    forget_overwritten,
    restore_through_base,
    store_through_sp_copy,
    user_lea_handoff,
    user_reg_move,
    user_xchg_sp,
)

if TYPE_CHECKING:
    from framevet.cfg.program import Program
    from framevet.stack.walker import Walker


_CALLER_SAVED = (d.AX, d.CX, d.DX, d.SI, d.DI, d.R8, d.R9, d.R10, d.R11)

_FRAME_REG_ORDER = (d.BP, d.BX, d.R12, d.R13, d.R14, d.R15, d.R10, d.R11, d.R8, d.R9,
                    d.AX, d.CX, d.DX, d.SI, d.DI)


def user_realign(s: list[int], dreg: int) -> bool:
    """``and $-N, %rsp`` with the CFA on rsp: the CFA moves to the DRAP register when
    :func:`user_drap_lea` already put it there, else to a register that holds a
    copy of rsp (``mov %rsp, %rbx; and $-64, %rsp`` in ``_dl_runtime_resolve``)."""
    if dreg != d.SP:
        return False
    if s[DRAP_REG] != UNDEFINED and s[CFA_BASE] == s[DRAP_REG] and not s[DRAP]:
        s[STACK] = 0                                         # GCC's DRAP
        s[DRAP] = 1
        return True
    if s[CFA_BASE] != d.SP:
        # already on a frame register (:func:`user_frame_mov`, or rbp): unaffected,
        # but rsp's distance to the CFA is no longer known
        if 0 <= s[CFA_BASE] < 16 and s[CFA_BASE] != s[DRAP_REG]:
            s[STACK] = STACK_UNKNOWN * 2
            return True
        return False
    for r in _FRAME_REG_ORDER:
        # (a DRAP-like ``lea -8(%rsp),%r11`` a few instructions earlier: poly1305's
        # frame register, not objtool's DRAP, which assumes %r11 == CFA)
        if s[VALS + 2 * r] == CFA:
            if r == s[DRAP_REG]:
                s[DRAP_REG] = UNDEFINED
            s[CFA_BASE] = r                                  # r = CFA + vals_off
            s[CFA_OFF] = -s[VALS + 2 * r + 1]
            s[STACK] = STACK_UNKNOWN * 2                    # rsp is realigned
            return True
    return False


def user_drap_lea(w: Walker, g: int, s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``lea 8(%rsp), %r10`` right before ``and $-N, %rsp``: GCC's DRAP, and GCC's
    CFI moves the CFA to %r10 at once (objtool waits for the ``and``)."""
    if sreg != d.SP or s[CFA_BASE] != d.SP or dreg == d.SP or s[DRAP] \
            or not next_is_realign(w, g):
        return False
    s[DRAP_REG] = dreg
    s[VALS + 2 * dreg] = CFA
    s[VALS + 2 * dreg + 1] = -s[STACK] + soff
    s[CFA_BASE] = dreg
    s[CFA_OFF] = s[STACK] - soff
    return True


#: how far ahead a realignment may follow ``mov %rsp, %reg`` for the CFA to move at once
_REALIGN_WINDOW = 16


def next_is_realign(w: Walker, g: int, reg: int = -1) -> bool:
    """``and $-N, %rsp`` follows ``g`` on a straight line (within a few instructions
    that neither branch nor write ``reg``, when ``reg`` is given)."""
    prog = w.prog
    n = prog.next_same_sec(g)
    for _ in range(_REALIGN_WINDOW if reg >= 0 else 1):
        if n < 0:
            return False
        nops = prog.ops[n]
        if nops and nops[0][0] == d.D_REG and nops[0][1] == d.SP and nops[0][3] == d.S_AND:
            return True
        if reg < 0 or prog.kind[n] not in (d.OTHER, d.NOP) or prog.writes(n, reg):
            return False
        n = prog.next_same_sec(n)
    return False


def user_after(w: Walker, g: int, s: list[int], pre: list[int]) -> bool:
    """Profile user, after instruction ``g`` (``pre``: the state before it): the
    idioms of :func:`_user_idioms`, then the exact copies of the CFA
    (:mod:`framevet.stack.cfacopies`).  True when the state changed."""
    prog = w.prog
    call = prog.kind[g] == d.CALL or prog.kind[g] == d.CALL_DYNAMIC
    clobbered = _call_clobbers(prog, g) if call else frozenset()
    changed = _user_idioms(w, g, s, pre[CFA_BASE], clobbered)
    return track(prog, g, pre, s, sum(1 << r for r in clobbered)) or changed


def _user_idioms(w: Walker, g: int, s: list[int], base_before: int,
                 clobbered: frozenset[int]) -> bool:
    """What instruction ``g`` overwrote that the state relies on.  A call clobbers the
    caller-saved registers' copies of rsp; an instruction that overwrites the register
    the CFA is computed from (not DRAP, not rbp) moves the CFA back to rsp when rsp's
    distance to it is known, else loses it.  True when the state changed."""
    prog = w.prog
    k = prog.kind[g]
    call = k == d.CALL or k == d.CALL_DYNAMIC
    forget_overwritten(prog, g, s)
    changed = k == d.OTHER and prog.length[g] == 3 and user_reg_move(w, g, s)
    if k == d.OTHER and prog.ops[g] is not None and 0 <= s[CFA_BASE] < 16 \
            and s[CFA_BASE] != d.SP and user_lea_handoff(w, g, s):
        return True
    if k == d.OTHER and prog.ops[g] is None:
        if store_through_sp_copy(w, g, s) or user_xchg_sp(w, g, s):
            return True
        changed = restore_through_base(w, g, s) or changed
    if call:
        for r in clobbered:
            if s[VALS + 2 * r] == CFA:
                s[VALS + 2 * r] = UNDEFINED
                changed = True
    b = s[CFA_BASE]
    if b < 0 or b >= 16 or b == d.SP or b == d.BP or b != base_before or s[DRAP]:
        return changed
    if (call and b in clobbered) or (not call and prog.writes(g, b)):
        s[VALS + 2 * b] = UNDEFINED
        if not copy_of_cfa(s, b):
            cfa_back_to_rsp(s)
        return True
    return changed


def _call_clobbers(prog: Program, g: int) -> frozenset[int]:
    """Registers a call may clobber: the ABI's caller-saved ones, or -- for a local
    helper that calls nothing itself (OpenSSL's ``_aesni_ctr32_6x``, or a second
    entry point inside one: ``call .L_aesni_encrypt6_enter``) -- only those its
    instructions write."""
    abi = frozenset(_CALLER_SAVED)
    sym = prog.call_dest[g]
    if prog.kind[g] != d.CALL:
        return abi
    if sym is None:                 # a second entry point inside another function
        start = getattr(prog, "_user_call_entry", {}).get(g, -1)
    elif sym.defined:
        start = prog.gid(sym.shndx, sym.offset)
    else:
        return abi
    if start < 0 or prog.func[start] < 0:
        return abi
    fi = prog.func[start]
    cache: dict[int, frozenset[int]] | None = getattr(prog, "_user_clobbers", None)
    if cache is None:
        cache = {}
        prog._user_clobbers = cache  # type: ignore[attr-defined]
    got = cache.get(fi)
    if got is None:
        insns = prog.func_insns(fi)
        if any(prog.kind[i] in (d.CALL, d.CALL_DYNAMIC, d.JUMP_DYNAMIC) for i in insns):
            got = abi
        else:
            got = frozenset(r for r in _CALLER_SAVED if any(prog.writes(i, r) for i in insns))
        cache[fi] = got
    return got


def user_slot_frame(s: list[int], op: d.StackOp) -> bool:
    """Profile user: the CFA through a stack slot holding a copy of the entry rsp.

    * ``mov %reg, disp(%rsp)`` while the CFA is ``reg + k`` (a frame register, after
      a realignment; rbp only when rsp's distance to the CFA is unknown, as after
      ``xchg %rsp,%rbp``): the CFA becomes ``*(rsp + disp) + k`` and %reg is free;
    * push / pop / ``add $imm, %rsp`` move the slot's rsp offset; another write to
      rsp loses it;
    * ``mov disp(%rsp), %reg2`` from that slot: the CFA is ``reg2 + k`` again.
    Returns True when ``op`` was fully handled here."""
    dtype, dreg, doff, stype, sreg, soff = op
    base = s[CFA_BASE]
    if dtype == d.D_REG_INDIRECT and dreg == d.SP and stype == d.S_REG and not s[DRAP] \
            and 0 <= base < 16 and base != d.SP and sreg == base \
            and (base != d.BP or s[STACK] <= STACK_UNKNOWN):
        s[DRAP_OFF] = s[CFA_OFF]
        s[CFA_BASE] = USER_SP_DEREF
        s[CFA_OFF] = doff
        return True
    if base != USER_SP_DEREF:
        return False
    if dtype == d.D_PUSH or dtype == d.D_PUSHF:
        s[CFA_OFF] += 8
        return False                      # objtool's code still counts the push
    if stype == d.S_POP or stype == d.S_POPF:
        s[CFA_OFF] -= 8
        return False
    if dtype == d.D_REG and dreg == d.SP:
        if stype == d.S_ADD and sreg == d.SP:
            s[CFA_OFF] -= soff
            s[STACK] -= soff
        else:
            s[CFA_BASE] = UNDEFINED
            s[CFA_OFF] = 0
            s[DRAP_OFF] = -1
        return True
    if dtype == d.D_REG and stype == d.S_REG_INDIRECT and sreg == d.SP \
            and soff == s[CFA_OFF] and dreg != d.SP:
        s[CFA_BASE] = dreg
        s[CFA_OFF] = s[DRAP_OFF]
        s[DRAP_OFF] = -1
        return True
    return False


def user_frame_mov(w: Walker, g: int, s: list[int], dreg: int, sreg: int) -> bool:
    """``mov %rsp, %rbx`` right before ``and $-N, %rsp``: the CFA moves to %rbx at
    once, as hand-written CFI (``cfi_def_cfa_register``) says."""
    if sreg != d.SP or dreg in (d.SP, d.BP) or s[CFA_BASE] != d.SP or s[DRAP] \
            or not next_is_realign(w, g, dreg):
        return False
    s[VALS + 2 * dreg] = CFA
    s[VALS + 2 * dreg + 1] = -s[STACK]
    s[CFA_BASE] = dreg
    s[CFA_OFF] = s[STACK]
    return True


def user_restore_sp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``mov %rbx, %rsp`` / ``lea -k(%rbx), %rsp`` with the CFA on that register
    (not DRAP, not rbp: objtool's own cases): the CFA goes back to rsp."""
    base = s[CFA_BASE]
    if (dreg != d.SP or sreg != base or base in (d.SP, d.BP, UNDEFINED) or base < 0
            or s[DRAP]):
        return False
    s[CFA_BASE] = d.SP
    s[CFA_OFF] -= soff
    s[STACK] = s[CFA_OFF]
    return True


def user_lea_sp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``lea disp(%reg), %rsp`` with the CFA on rbp: ``lea disp(%rbp)`` puts rsp at
    ``CFA - CFA_OFF + disp`` (objtool assumes rbp points at its own save slot, not
    true of frames built elsewhere, :mod:`framevet.stack.userframe`); through another
    register rsp's distance to the CFA is no longer known."""
    if dreg != d.SP or s[CFA_BASE] != d.BP or s[DRAP] or sreg == d.SP:
        return False
    s[STACK] = s[CFA_OFF] - soff if sreg == d.BP else STACK_UNKNOWN * 2
    return True


def user_load_bp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``mov disp(%rbp), %rbp`` from rbp's save slot with the CFA on rbp: rbp is
    restored and the CFA goes to rsp (when rsp's distance to it is known)."""
    if (dreg != d.BP or sreg != d.BP or s[CFA_BASE] != d.BP or s[DRAP]
            or s[REGS + 2 * d.BP] != CFA or soff != s[REGS + 2 * d.BP + 1] + s[CFA_OFF]):
        return False
    restore_reg(s, d.BP)
    cfa_back_to_rsp(s)
    return True
