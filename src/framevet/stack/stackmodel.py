"""The stack model: how one stack operation changes the state (objtool's
``update_cfi_state``), kept to objtool 6.1's letter for ORC parity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.decode.state import (
    BP_INDIRECT,
    BP_SCRATCH,
    CALLEE_SAVED,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    INITIAL_REGS,
    REGS,
    SP_INDIRECT,
    STACK,
    T_REGS,
    T_REGS_PARTIAL,
    TYPE,
    UNDEFINED,
    VALS,
)
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
    from framevet.stack.walker import Walker


def update_cfi(w: Walker, g: int, s: list[int], op: d.StackOp) -> None:
    """objtool's update_cfi_state(): one stack operation applied to state ``s``."""
    dtype, dreg, doff, stype, sreg, soff = op
    if s[CFA_BASE] == UNDEFINED:
        if w.prog.func[g] >= 0:
            w.warn(g, "undefined-stack-state", "undefined stack state")
        return
    if s[TYPE] == T_REGS or s[TYPE] == T_REGS_PARTIAL:
        _update_regs_hint(s, op)
        return
    if w.prog.profile == "user" and _user_slot_frame(s, op):
        return
    if dtype == d.D_REG:
        if stype == d.S_REG:
            if w.prog.profile == "user" and (_user_restore_sp(s, dreg, sreg, 0)
                                             or _user_frame_mov(w, g, s, dreg, sreg)):
                return
            _mov_reg(s, dreg, sreg)
        elif stype == d.S_ADD:
            if w.prog.profile == "user" and (_user_restore_sp(s, dreg, sreg, soff)
                                             or _user_drap_lea(w, g, s, dreg, sreg, soff)
                                             or _user_lea_sp(s, dreg, sreg, soff)):
                return
            _add(w, g, s, dreg, sreg, soff)
        elif stype == d.S_AND:
            if w.prog.profile == "user" and _user_realign(s, dreg):
                return
            if (dreg != d.SP or (s[DRAP_REG] != UNDEFINED and s[CFA_BASE] != d.SP)
                    or (s[DRAP_REG] == UNDEFINED and s[CFA_BASE] != d.BP)):
                w.warn(g, "unsupported-stack-pointer-realignment",
                          "unsupported stack pointer realignment")
            if s[DRAP_REG] != UNDEFINED:
                s[CFA_BASE] = s[DRAP_REG]
                s[CFA_OFF] = s[STACK] = 0
                s[DRAP] = 1
        elif stype == d.S_POP or stype == d.S_POPF:
            _pop(s, dreg)
        elif stype == d.S_REG_INDIRECT:
            if w.prog.profile == "user" and _user_load_bp(s, dreg, sreg, soff):
                return
            _load(s, dreg, sreg, soff)
        elif stype == d.S_CONST and dreg == d.SP and w.prog.profile == "user":
            if s[CFA_BASE] == d.SP and copy_of_cfa(s, d.SP):
                s[STACK] = _STACK_UNKNOWN * 2                # the CFA stays on a copy
            elif s[CFA_BASE] == d.SP or s[CFA_BASE] == SP_INDIRECT:
                s[CFA_BASE] = UNDEFINED                      # rsp := something unknown
                s[CFA_OFF] = 0
        else:
            w.warn(g, "unknown-stack-related-instruction",
                      "unknown stack-related instruction")
    elif dtype == d.D_PUSH or dtype == d.D_PUSHF:
        s[STACK] += 8
        if s[CFA_BASE] == d.SP:
            s[CFA_OFF] += 8
        if stype != d.S_REG:
            return
        if s[DRAP]:
            if sreg == s[CFA_BASE] and sreg == s[DRAP_REG]:
                s[CFA_BASE] = BP_INDIRECT
                s[CFA_OFF] = -s[STACK]
                s[DRAP_OFF] = -s[STACK]
            elif sreg == d.BP and s[CFA_BASE] == s[DRAP_REG]:
                s[STACK] = 0
            else:
                _save_reg(s, sreg, d.BP, -s[STACK])
        else:
            _save_reg(s, sreg, CFA, -s[STACK])
        if (w.opts.stackval and w.prog.func[g] >= 0 and sreg == d.BP
                and s[CFA_BASE] != d.BP):
            s[BP_SCRATCH] = 1
    elif dtype == d.D_REG_INDIRECT:
        if s[DRAP]:
            if sreg == s[CFA_BASE] and sreg == s[DRAP_REG]:
                s[CFA_BASE] = BP_INDIRECT
                s[CFA_OFF] = doff
                s[DRAP_OFF] = doff
            else:
                _save_reg(s, sreg, d.BP, doff)
        elif dreg == s[CFA_BASE]:
            _save_reg(s, sreg, CFA, doff - s[CFA_OFF])
        elif dreg == d.SP:
            _save_reg(s, sreg, CFA, doff - s[STACK])
        elif sreg == d.SP and doff == 0:
            s[VALS + 2 * dreg] = SP_INDIRECT
            s[VALS + 2 * dreg + 1] = s[CFA_OFF]
    elif dtype == d.D_MEM:
        if stype != d.S_POP and stype != d.S_POPF:
            w.warn(g, "unknown-stack-memory-operation",
                      "unknown stack-related memory operation")
        s[STACK] -= 8
        if s[CFA_BASE] == d.SP:
            s[CFA_OFF] -= 8
    else:
        w.warn(g, "unknown-stack-related-instruction", "unknown stack-related instruction")

def _mov_reg(s: list[int], dreg: int, sreg: int) -> None:
    if (sreg == d.SP and dreg == d.BP and s[CFA_BASE] == d.SP
            and s[REGS + 2 * d.BP] == CFA and s[REGS + 2 * d.BP + 1] == -s[CFA_OFF]):
        s[CFA_BASE] = d.BP                                   # mov %rsp, %rbp
        s[BP_SCRATCH] = 0
    elif sreg == d.SP and dreg == d.BP and s[DRAP]:
        s[REGS + 2 * d.BP] = d.BP                            # drap: mov %rsp, %rbp
        s[REGS + 2 * d.BP + 1] = -s[STACK]
        s[BP_SCRATCH] = 0
    elif sreg == d.SP and s[CFA_BASE] == d.SP:
        s[VALS + 2 * dreg] = CFA                             # mov %rsp, %reg
        s[VALS + 2 * dreg + 1] = -s[STACK]
    elif (sreg == d.BP and dreg == d.SP
          and (s[CFA_BASE] == d.BP or s[CFA_BASE] == s[DRAP_REG])):
        s[STACK] = -s[REGS + 2 * d.BP + 1]                   # mov %rbp, %rsp
    elif dreg == s[CFA_BASE]:
        if s[CFA_BASE] == d.SP and s[VALS + 2 * sreg] == CFA:
            s[CFA_OFF] = -s[VALS + 2 * sreg + 1]             # mov %reg, %rsp (saved rsp)
            s[STACK] = s[CFA_OFF]
        elif (s[CFA_BASE] == d.SP and s[VALS + 2 * sreg] == SP_INDIRECT
              and s[VALS + 2 * sreg + 1] == s[CFA_OFF]):
            s[CFA_BASE] = SP_INDIRECT                        # stack swizzle
        else:
            s[CFA_BASE] = UNDEFINED
            s[CFA_OFF] = 0
    elif (dreg == d.SP and s[VALS + 2 * sreg] == SP_INDIRECT
          and s[VALS + 2 * sreg + 1] == s[CFA_OFF]):
        s[STACK] += 8

def _add(w: Walker, g: int, s: list[int], dreg: int, sreg: int, soff: int) -> None:
    if dreg == d.SP and sreg == d.SP:
        s[STACK] -= soff                                      # add imm, %rsp
        if s[CFA_BASE] == d.SP:
            s[CFA_OFF] -= soff
    elif dreg == d.SP and sreg == d.BP:
        s[STACK] = -(soff + s[REGS + 2 * d.BP + 1])          # lea disp(%rbp), %rsp
    elif (not s[DRAP] and sreg == d.SP and dreg == d.BP and s[CFA_BASE] == d.SP
          and s[REGS + 2 * d.BP] == CFA
          and s[REGS + 2 * d.BP + 1] == -s[CFA_OFF] + soff):
        s[CFA_BASE] = d.BP                                   # lea disp(%rsp), %rbp
        s[CFA_OFF] -= soff
        s[BP_SCRATCH] = 0
    elif sreg == d.SP and s[CFA_BASE] == d.SP:
        s[DRAP_REG] = dreg                                   # drap: lea disp(%rsp), %drap
        s[VALS + 2 * dreg] = CFA
        s[VALS + 2 * dreg + 1] = -s[STACK] + soff
    elif s[DRAP] and dreg == d.SP and sreg == s[DRAP_REG]:
        s[CFA_BASE] = d.SP                                   # drap: lea disp(%drap), %rsp
        s[CFA_OFF] = s[STACK] = -soff
        s[DRAP_REG] = UNDEFINED
        s[DRAP] = 0
    elif dreg == s[CFA_BASE] and not w._next_is_hint(g):
        w.warn(g, "unsupported-stack-register-modification",
                  "unsupported stack register modification")
        if w.prog.profile == "user":                          # the walk goes on: CFA lost
            if dreg == d.SP and copy_of_cfa(s, d.SP):        # ... unless rbp & co. hold it
                s[STACK] = _STACK_UNKNOWN * 2
                return
            s[CFA_BASE] = UNDEFINED
            s[CFA_OFF] = 0

def _pop(s: list[int], dreg: int) -> None:
    if dreg == d.SP and s[CFA_BASE] == SP_INDIRECT:
        s[CFA_BASE] = d.SP                                   # pop %rsp (swizzle)
        return
    if not s[DRAP] and dreg == s[CFA_BASE]:
        s[CFA_BASE] = d.SP                                   # pop %rbp
    if (s[DRAP] and s[CFA_BASE] == BP_INDIRECT and dreg == s[DRAP_REG]
            and s[DRAP_OFF] == -s[STACK]):
        s[CFA_BASE] = s[DRAP_REG]                            # drap: pop %drap
        s[CFA_OFF] = 0
        s[DRAP_OFF] = -1
    elif s[STACK] == -s[REGS + 2 * dreg + 1]:
        _restore_reg(s, dreg)                                # pop %reg
    s[STACK] -= 8
    if s[CFA_BASE] == d.SP:
        s[CFA_OFF] -= 8

def _load(s: list[int], dreg: int, sreg: int, soff: int) -> None:
    if not s[DRAP] and dreg == s[CFA_BASE] and dreg == d.BP:
        s[CFA_BASE] = d.SP                                   # mov disp(%rsp), %rbp
        s[CFA_OFF] = s[STACK]
    if s[DRAP] and sreg == d.BP and soff == s[DRAP_OFF]:
        s[CFA_BASE] = s[DRAP_REG]                            # drap: mov disp(%rbp), %drap
        s[CFA_OFF] = 0
        s[DRAP_OFF] = -1
    if s[DRAP] and sreg == d.BP and soff == s[REGS + 2 * dreg + 1]:
        _restore_reg(s, dreg)
    elif sreg == s[CFA_BASE] and soff == s[REGS + 2 * dreg + 1] + s[CFA_OFF]:
        _restore_reg(s, dreg)
    elif sreg == d.SP and soff == s[REGS + 2 * dreg + 1] + s[STACK]:
        _restore_reg(s, dreg)


# -- profile user: realignment through any register, as glibc's assembly does ----

#: registers preferred as the frame register of a realignment (callee-saved first)
_FRAME_REG_ORDER = (d.BP, d.BX, d.R12, d.R13, d.R14, d.R15, d.R10, d.R11, d.R8, d.R9,
                    d.AX, d.CX, d.DX, d.SI, d.DI)


def _user_realign(s: list[int], dreg: int) -> bool:
    """``and $-N, %rsp`` with the CFA on rsp: the CFA moves to the DRAP register when
    :func:`_user_drap_lea` already put it there, else to a register that holds a
    copy of rsp (``mov %rsp, %rbx; and $-64, %rsp`` in ``_dl_runtime_resolve``)."""
    if dreg != d.SP:
        return False
    if s[DRAP_REG] != UNDEFINED and s[CFA_BASE] == s[DRAP_REG] and not s[DRAP]:
        s[STACK] = 0                                         # GCC's DRAP
        s[DRAP] = 1
        return True
    if s[CFA_BASE] != d.SP:
        # already on a frame register (:func:`_user_frame_mov`, or rbp): unaffected,
        # but rsp's distance to the CFA is no longer known
        if 0 <= s[CFA_BASE] < 16 and s[CFA_BASE] != s[DRAP_REG]:
            s[STACK] = _STACK_UNKNOWN * 2
            return True
        return False
    for r in _FRAME_REG_ORDER:
        if s[VALS + 2 * r] == CFA and r != s[DRAP_REG]:
            s[CFA_BASE] = r                                  # r = CFA + vals_off
            s[CFA_OFF] = -s[VALS + 2 * r + 1]
            s[STACK] = _STACK_UNKNOWN * 2                    # rsp is realigned
            return True
    return False


def _user_drap_lea(w: Walker, g: int, s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``lea 8(%rsp), %r10`` right before ``and $-N, %rsp``: GCC's DRAP, and GCC's
    CFI moves the CFA to %r10 at once (objtool waits for the ``and``)."""
    if sreg != d.SP or s[CFA_BASE] != d.SP or dreg == d.SP or s[DRAP] \
            or not _next_is_realign(w, g):
        return False
    s[DRAP_REG] = dreg
    s[VALS + 2 * dreg] = CFA
    s[VALS + 2 * dreg + 1] = -s[STACK] + soff
    s[CFA_BASE] = dreg
    s[CFA_OFF] = s[STACK] - soff
    return True


#: profile user: CFA = *(rsp + CFA_OFF) + post, post kept in DRAP_OFF (DRAP is off).
#: OpenSSL's perlasm saves the pre-realignment rsp in a stack slot
#: (``mov %rax, 88(%rsp)``; ``.cfi_cfa_expression %rsp+88,deref,+8``).
USER_SP_DEREF = -5

#: how far ahead a realignment may follow ``mov %rsp, %reg`` for the CFA to move at once
_REALIGN_WINDOW = 16


def _next_is_realign(w: Walker, g: int, reg: int = -1) -> bool:
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
        if reg < 0 or prog.kind[n] not in (d.OTHER, d.NOP) or _writes(prog, n, reg):
            return False
        n = prog.next_same_sec(n)
    return False


def _writes(prog: object, g: int, reg: int) -> bool:
    """Instruction ``g`` may write hardware register ``reg`` (iced, decoded again)."""
    from framevet.cfg.program import Program

    assert isinstance(prog, Program)
    ops = prog.ops[g]
    if ops and any(op[0] == d.D_REG and op[1] == reg for op in ops):
        return True
    return bool(d.gprs_written(d.INFO.info(prog.instruction(g))) >> reg & 1)


_CALLER_SAVED = (d.AX, d.CX, d.DX, d.SI, d.DI, d.R8, d.R9, d.R10, d.R11)
#: STACK below this: rsp's distance to the CFA is unknown (after a realignment)
_STACK_UNKNOWN = -(1 << 29)


def user_after(w: Walker, g: int, s: list[int], base_before: int) -> bool:
    """Profile user, after instruction ``g``: what it overwrote that the state relies
    on.  A call clobbers the caller-saved registers' copies of rsp; an instruction that
    overwrites the register the CFA is computed from (not DRAP, not rbp) moves the CFA
    back to rsp when rsp's distance to it is known, else loses it.  True when the
    state changed."""
    prog = w.prog
    k = prog.kind[g]
    call = k == d.CALL or k == d.CALL_DYNAMIC
    clobbered: frozenset[int] = frozenset()
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
        clobbered = _call_clobbers(prog, g)
        for r in clobbered:
            if s[VALS + 2 * r] == CFA:
                s[VALS + 2 * r] = UNDEFINED
                changed = True
    b = s[CFA_BASE]
    if b < 0 or b >= 16 or b == d.SP or b == d.BP or b != base_before or s[DRAP]:
        return changed
    if (call and b in clobbered) or (not call and _writes(prog, g, b)):
        s[VALS + 2 * b] = UNDEFINED
        if not copy_of_cfa(s, b):
            _cfa_back_to_rsp(s)
        return True
    return changed


def _call_clobbers(prog: object, g: int) -> frozenset[int]:
    """Registers a call may clobber: the ABI's caller-saved ones, or -- for a local
    helper that calls nothing itself (OpenSSL's ``_aesni_ctr32_6x``, or a second
    entry point inside one: ``call .L_aesni_encrypt6_enter``) -- only those its
    instructions write."""
    from framevet.cfg.program import Program

    assert isinstance(prog, Program)
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
            got = frozenset(r for r in _CALLER_SAVED if any(_writes(prog, i, r) for i in insns))
        cache[fi] = got
    return got


def _user_slot_frame(s: list[int], op: d.StackOp) -> bool:
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
            and (base != d.BP or s[STACK] <= _STACK_UNKNOWN):
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


def _user_frame_mov(w: Walker, g: int, s: list[int], dreg: int, sreg: int) -> bool:
    """``mov %rsp, %rbx`` right before ``and $-N, %rsp``: the CFA moves to %rbx at
    once, as hand-written CFI (``cfi_def_cfa_register``) says."""
    if sreg != d.SP or dreg in (d.SP, d.BP) or s[CFA_BASE] != d.SP or s[DRAP] \
            or not _next_is_realign(w, g, dreg):
        return False
    s[VALS + 2 * dreg] = CFA
    s[VALS + 2 * dreg + 1] = -s[STACK]
    s[CFA_BASE] = dreg
    s[CFA_OFF] = s[STACK]
    return True


def _user_restore_sp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
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


def _user_lea_sp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``lea disp(%reg), %rsp`` with the CFA on rbp: ``lea disp(%rbp)`` puts rsp at
    ``CFA - CFA_OFF + disp`` (objtool assumes rbp points at its own save slot, not
    true of frames built elsewhere, :mod:`framevet.stack.userframe`); through another
    register rsp's distance to the CFA is no longer known."""
    if dreg != d.SP or s[CFA_BASE] != d.BP or s[DRAP] or sreg == d.SP:
        return False
    s[STACK] = s[CFA_OFF] - soff if sreg == d.BP else _STACK_UNKNOWN * 2
    return True


def _user_load_bp(s: list[int], dreg: int, sreg: int, soff: int) -> bool:
    """``mov disp(%rbp), %rbp`` from rbp's save slot with the CFA on rbp: rbp is
    restored and the CFA goes to rsp (when rsp's distance to it is known)."""
    if (dreg != d.BP or sreg != d.BP or s[CFA_BASE] != d.BP or s[DRAP]
            or s[REGS + 2 * d.BP] != CFA or soff != s[REGS + 2 * d.BP + 1] + s[CFA_OFF]):
        return False
    _restore_reg(s, d.BP)
    _cfa_back_to_rsp(s)
    return True


def _save_reg(s: list[int], reg: int, base: int, off: int) -> None:
    if reg in CALLEE_SAVED and s[REGS + 2 * reg] == UNDEFINED:
        s[REGS + 2 * reg] = base
        s[REGS + 2 * reg + 1] = off


def _restore_reg(s: list[int], reg: int) -> None:
    s[REGS + 2 * reg] = INITIAL_REGS[2 * reg]
    s[REGS + 2 * reg + 1] = INITIAL_REGS[2 * reg + 1]


def _update_regs_hint(s: list[int], op: d.StackOp) -> None:
    """Inside an UNWIND_HINT_REGS/IRET_REGS frame only push/pop/add imm are tracked."""
    if s[CFA_BASE] != d.SP and s[CFA_BASE] != SP_INDIRECT:
        return
    dtype, dreg, _, stype, sreg, soff = op
    if dtype == d.D_PUSH or dtype == d.D_PUSHF:
        s[CFA_OFF] += 8
    if stype == d.S_POP or stype == d.S_POPF:
        s[CFA_OFF] -= 8
    if dtype == d.D_REG and stype == d.S_ADD and dreg == d.SP and sreg == d.SP:
        s[CFA_OFF] -= soff


def _cfa_back_to_rsp(s: list[int]) -> None:
    """The CFA's register is gone: express it from rsp when rsp's distance to it is
    known, else it is lost."""
    if s[STACK] > _STACK_UNKNOWN:
        s[CFA_BASE] = d.SP
        s[CFA_OFF] = s[STACK]
    else:
        s[CFA_BASE] = UNDEFINED
        s[CFA_OFF] = 0
