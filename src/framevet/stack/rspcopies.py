"""Copies of rsp that a later write makes stale.

The stack model records ``mov %rsp,%reg`` (and ``lea disp(%rsp),%reg``) as "reg
holds CFA-k", and ``mov %reg,%rsp`` puts the CFA back from that copy.  objtool's
decoder reports no other write to ``reg``, so in ``mov %rsp,%rax; or $0x7fff,%rax;
sub $0x107,%rax; mov %rax,%rsp`` (a switch to the top of the stack) it would
restore the old CFA on a new stack.  A copy dies when its register is written.

Only registers that some ``mov %reg,%rsp`` reads can matter, and only in the code
around that move: :func:`copy_killers` maps each instruction of that code which
writes one of them to the mask of those registers, so the walk pays nothing
elsewhere.  Calls do not count as writes here: a copy held across a call is the
RSB-stuffing idiom (``mov %rsp,%rax; call 1f; ...; mov %rax,%rsp``).
"""

from __future__ import annotations

from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import (
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    END,
    INITIAL_REGS,
    REGS,
    SP_INDIRECT,
    STACK,
    STALE,
    UNDEFINED,
    VALS,
)

#: how far back a copy is looked for outside any function
_WINDOW = 256


def copy_killers(prog: Program) -> dict[int, int]:
    """Instruction -> bit mask of the rsp-copy registers it overwrites (see module doc)."""
    watched: dict[int, int] = {}
    for ds in prog.sections:
        b = prog.base[ds.index]
        for i in ds.sp_writes:
            src = _restore_source(prog.ops[b + i])
            if src >= 0:
                for g in _region(prog, b + i):
                    watched[g] = watched.get(g, 0) | 1 << src
    out: dict[int, int] = {}
    for g, regs in watched.items():
        if prog.kind[g] not in (d.CALL, d.CALL_DYNAMIC):
            m = d.gprs_written(d.INFO.info(prog.instruction(g))) & regs
            if m:
                out[g] = m
    return out


def forget_stale_copies(state: list[int], mask: int) -> bool:
    """The registers of ``mask`` were just written: they no longer hold rsp."""
    changed = False
    while mask:
        r = (mask & -mask).bit_length() - 1
        mask &= mask - 1
        if state[VALS + 2 * r] == CFA or state[VALS + 2 * r] == SP_INDIRECT:
            state[VALS + 2 * r] = STALE
            state[VALS + 2 * r + 1] = 0
            changed = True
    return changed


def switch_to_new_stack(state: list[int]) -> None:
    """``mov %reg,%rsp`` from a register that no longer holds a copy of rsp: the code
    goes on on another stack (Xen's reset_stack_and_jump), where nothing of this
    function's frame is.  Its CFA is unknown and an unwinder must stop there: the
    state of an end-of-stack hint, which the walk does not hold against the code."""
    state[CFA_BASE] = UNDEFINED
    state[CFA_OFF] = state[STACK] = 0
    state[DRAP] = 0
    state[DRAP_REG] = UNDEFINED
    state[DRAP_OFF] = -1
    state[END] = 1
    state[REGS:VALS] = INITIAL_REGS


def on_new_stack(state: list[int] | tuple[int, ...]) -> bool:
    """The state :func:`switch_to_new_stack` makes (or an end-of-stack hint's)."""
    return state[CFA_BASE] == UNDEFINED and state[END] == 1


def join_new_stack(known: tuple[int, ...] | None, state: list[int]) -> int:
    """Where a path meets code already walked: 1 when the path runs on a new stack and
    the code is known with a real frame (nothing to add: stop), -1 the other way round
    (walk the code again with the real frame), else 0."""
    if known is None or on_new_stack(known) == on_new_stack(state):
        return 0
    return 1 if on_new_stack(state) else -1


def _restore_source(ops: tuple[d.StackOp, ...] | None) -> int:
    """The register of a ``mov %reg,%rsp`` (not rbp: the frame pointer is tracked
    as the CFA base, not as a copy), else -1."""
    for dtype, dreg, _doff, stype, sreg, _soff in ops or ():
        if dtype == d.D_REG and dreg == d.SP and stype == d.S_REG and sreg not in (d.SP, d.BP):
            return sreg
    return -1


def _region(prog: Program, g: int) -> list[int]:
    """The instructions a copy consumed at ``g`` may come from: its function (cold
    part included), else the nameless code before it."""
    fi = prog.func[g]
    if fi >= 0:
        return prog.func_insns(prog.functions[fi].parent)
    out = [g]
    p = prog.prev_same_sec(g)
    while p >= 0 and prog.func[p] < 0 and len(out) < _WINDOW:
        out.append(p)
        p = prog.prev_same_sec(p)
    return out
