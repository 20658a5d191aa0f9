"""The stack model: how one stack operation changes the state (objtool's
``update_cfi_state``), kept to objtool 6.1's letter for ORC parity.  In profile
``user`` the frames objtool does not model are handed to :mod:`framevet.stack.usermodel`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.decode.state import (
    BP_INDIRECT,
    BP_SCRATCH,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    REGS,
    SP_INDIRECT,
    STACK,
    STACK_UNKNOWN,
    STALE,
    T_REGS,
    T_REGS_PARTIAL,
    TYPE,
    UNDEFINED,
    VALS,
    restore_reg,
    save_reg,
)
from framevet.stack.rspcopies import on_new_stack, switch_to_new_stack
from framevet.stack.userframe import copy_of_cfa
from framevet.stack.usermodel import (
    user_drap_lea,
    user_frame_mov,
    user_lea_sp,
    user_load_bp,
    user_realign,
    user_restore_sp,
    user_slot_frame,
)

if TYPE_CHECKING:
    from framevet.stack.walker import Walker


def update_cfi(w: Walker, g: int, s: list[int], op: d.StackOp) -> None:
    """objtool's update_cfi_state(): one stack operation applied to state ``s``."""
    dtype, dreg, doff, stype, sreg, soff = op
    if s[CFA_BASE] == UNDEFINED:
        if w.prog.func[g] >= 0 and not on_new_stack(s):
            w.warn(g, "undefined-stack-state", "undefined stack state")
        return
    if s[TYPE] == T_REGS or s[TYPE] == T_REGS_PARTIAL:
        _update_regs_hint(s, op)
        return
    if w.prog.profile == "user" and user_slot_frame(s, op):
        return
    if dtype == d.D_REG:
        if stype == d.S_REG:
            if w.prog.profile == "user" and (user_restore_sp(s, dreg, sreg, 0)
                                             or user_frame_mov(w, g, s, dreg, sreg)):
                return
            _mov_reg(s, dreg, sreg)
        elif stype == d.S_ADD:
            if w.prog.profile == "user" and (user_restore_sp(s, dreg, sreg, soff)
                                             or user_drap_lea(w, g, s, dreg, sreg, soff)
                                             or user_lea_sp(s, dreg, sreg, soff)):
                return
            _add(w, g, s, dreg, sreg, soff)
        elif stype == d.S_AND:
            if w.prog.profile == "user" and user_realign(s, dreg):
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
            if w.prog.profile == "user" and user_load_bp(s, dreg, sreg, soff):
                return
            _load(s, dreg, sreg, soff)
        elif stype == d.S_CONST and dreg == d.SP and w.prog.profile == "user":
            if s[CFA_BASE] == d.SP and copy_of_cfa(s, d.SP):
                s[STACK] = STACK_UNKNOWN * 2                # the CFA stays on a copy
            elif s[CFA_BASE] == d.SP or s[CFA_BASE] == SP_INDIRECT:
                s[CFA_BASE] = UNDEFINED                      # rsp := something unknown
                s[CFA_OFF] = 0
        else:
            w.warn(g, "unknown-stack-related-instruction",
                      "unknown stack-related instruction")
    elif dtype == d.D_PUSH or dtype == d.D_PUSHF:
        _push(w, g, s, stype, sreg)
    elif dtype == d.D_REG_INDIRECT:
        _store(s, dreg, doff, sreg)
    elif dtype == d.D_MEM:
        if stype != d.S_POP and stype != d.S_POPF:
            w.warn(g, "unknown-stack-memory-operation",
                      "unknown stack-related memory operation")
        s[STACK] -= 8
        if s[CFA_BASE] == d.SP:
            s[CFA_OFF] -= 8
    else:
        w.warn(g, "unknown-stack-related-instruction", "unknown stack-related instruction")

def _push(w: Walker, g: int, s: list[int], stype: int, sreg: int) -> None:
    """``push``: rsp moves, and a pushed register is saved (rbp-relative in a DRAP frame)."""
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
            save_reg(s, sreg, d.BP, -s[STACK])
    else:
        save_reg(s, sreg, CFA, -s[STACK])
    if (w.opts.stackval and w.prog.func[g] >= 0 and sreg == d.BP
            and s[CFA_BASE] != d.BP):
        s[BP_SCRATCH] = 1


def _store(s: list[int], dreg: int, doff: int, sreg: int) -> None:
    """``mov %sreg, doff(%dreg)``: a register saved in the frame, or a copy of rsp."""
    if s[DRAP]:
        if sreg == s[CFA_BASE] and sreg == s[DRAP_REG]:
            s[CFA_BASE] = BP_INDIRECT
            s[CFA_OFF] = doff
            s[DRAP_OFF] = doff
        else:
            save_reg(s, sreg, d.BP, doff)
    elif dreg == s[CFA_BASE]:
        save_reg(s, sreg, CFA, doff - s[CFA_OFF])
    elif dreg == d.SP:
        save_reg(s, sreg, CFA, doff - s[STACK])
    elif sreg == d.SP and doff == 0:
        s[VALS + 2 * dreg] = SP_INDIRECT
        s[VALS + 2 * dreg + 1] = s[CFA_OFF]


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
        elif s[VALS + 2 * sreg] == STALE:
            switch_to_new_stack(s)                           # mov %reg, %rsp (new stack)
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
                s[STACK] = STACK_UNKNOWN * 2
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
        restore_reg(s, dreg)                                # pop %reg
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
        restore_reg(s, dreg)
    elif sreg == s[CFA_BASE] and soff == s[REGS + 2 * dreg + 1] + s[CFA_OFF]:
        restore_reg(s, dreg)
    elif sreg == d.SP and soff == s[REGS + 2 * dreg + 1] + s[STACK]:
        restore_reg(s, dreg)


# -- profile user: realignment through any register, as glibc's assembly does ----

#: registers preferred as the frame register of a realignment (callee-saved first)
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
