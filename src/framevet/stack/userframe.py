"""Profile user: frames hand-written assembly builds with plain register moves.

objtool's decoder gives no stack operation for ``mov %reg, %reg2`` when neither
is rsp, nor for stores and loads through other registers; these idioms need them:

* **copies of a copy of rsp** (OpenSSL's perlasm ``lea (%rsp),%rax`` ...
  ``mov %rax,%rbp``): the copy holds ``CFA-k`` too, so a later realignment can
  put the CFA on it; a move into a register that held such a copy forgets it;
* **the CFA handed to a copy** (perlasm epilogues ``mov %rbp,%rax`` followed by
  ``mov -16(%rax),%rbp``): the register the CFA is computed from is about to be
  reloaded through its copy, so the CFA moves to the copy, as the CFI does;
* **a frame built at another address** (libffi's ``ffi_call_unix64``:
  ``mov (%rsp),%r10`` loads the return address, ``mov %rbp,16(%rax)`` and
  ``mov %r10,24(%rax)`` store the caller's rbp and the return address above a
  block the caller allocated, ``mov %rax,%rbp``): from there ``rbp+32`` is the
  CFA (the return address at CFA-8, rbp at CFA-16), whatever then happens to rsp.
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
    INITIAL_REGS,
    REGS,
    STACK,
    STACK_UNKNOWN,
    UNDEFINED,
    USER_SP_DEREF,
    VALS,
)

if TYPE_CHECKING:
    from framevet.cfg.program import Program
    from framevet.stack.walker import Walker

#: how far the idioms look ahead / back, in straight-line instructions
_WINDOW = 12


def reg_move(prog: Program, g: int) -> tuple[int, int] | None:
    """``(dst, src)`` of a 64-bit ``mov %src, %dst`` (REX.W 89/8B, register form)."""
    if prog.length[g] != 3 or prog.kind[g] != d.OTHER:
        return None
    data = prog.elf.sections[prog.sec_of[g]].data
    o = prog.off[g]
    rex, opc, modrm = data[o], data[o + 1], data[o + 2]
    if rex & 0xF8 != 0x48 or (opc != 0x89 and opc != 0x8B) or modrm >> 6 != 3:
        return None
    r = ((rex >> 2) & 1) << 3 | (modrm >> 3) & 7
    b = (rex & 1) << 3 | modrm & 7
    return (b, r) if opc == 0x89 else (r, b)


def _mem_mov(prog: Program, g: int) -> tuple[bool, int, int, int] | None:
    """``(is_store, reg, base, disp)`` of a 64-bit ``mov`` between a register and
    ``disp(%base)`` (no index), else None."""
    import iced_x86

    if prog.kind[g] != d.OTHER:
        return None
    ins = prog.instruction(g)
    if ins.mnemonic != iced_x86.Mnemonic.MOV or ins.memory_index != iced_x86.Register.NONE:
        return None
    if ins.op0_kind == iced_x86.OpKind.MEMORY and ins.op1_kind == iced_x86.OpKind.REGISTER:
        store, reg = True, ins.op1_register
    elif ins.op1_kind == iced_x86.OpKind.MEMORY and ins.op0_kind == iced_x86.OpKind.REGISTER:
        store, reg = False, ins.op0_register
    else:
        return None
    hw, base = d._HW.get(reg, -1), d._HW.get(ins.memory_base, -1)
    if hw < 0 or base < 0 or iced_x86.RegisterExt.size(reg) != 8:
        return None
    disp = ins.memory_displacement
    if disp >= 1 << 63:
        disp -= 1 << 64
    return store, hw, base, disp


def user_reg_move(w: Walker, g: int, s: list[int]) -> bool:
    """The idioms above for instruction ``g`` (state ``s`` after its stack
    operations); True when the state changed."""
    mv = reg_move(w.prog, g)
    if mv is None:
        return False
    dst, src = mv
    if dst == d.SP or src == d.SP or dst == src:
        return False
    if s[CFA_BASE] == src and not s[DRAP] and (dst == d.BP or _reloaded_through(w, g, src, dst)):
        s[CFA_BASE] = dst                  # mov %rax,%rbp / mov %rbp,%rax; mov -8(%rax),%rbp
        s[VALS + 2 * dst] = s[VALS + 2 * src]
        s[VALS + 2 * dst + 1] = s[VALS + 2 * src + 1]
        return True
    if dst == d.BP and s[CFA_BASE] == d.SP and not s[DRAP] and _built_frame(w, g, src, s):
        return True
    if s[VALS + 2 * src] == CFA and _fresh_copy(w, g, src):
        s[VALS + 2 * dst] = CFA                              # a copy of a copy of rsp
        s[VALS + 2 * dst + 1] = s[VALS + 2 * src + 1]
        return True
    if s[VALS + 2 * dst] == CFA and s[CFA_BASE] != dst:
        s[VALS + 2 * dst] = UNDEFINED
        return True
    return False


def restore_through_base(w: Walker, g: int, s: list[int]) -> bool:
    """``mov disp(%base), %reg`` from ``reg``'s save slot while the CFA is
    ``base + k`` (a register other than rsp and rbp, whose loads objtool's decoder
    does not give): ``reg`` is restored."""
    base = s[CFA_BASE]
    if not 0 <= base < 16 or base == d.SP or base == d.BP or w.prog.length[g] > 8:
        return False
    m = _mem_mov(w.prog, g)
    if m is None or m[0] or m[2] != base:
        return False
    reg = m[1]
    if s[REGS + 2 * reg] != CFA or m[3] != s[REGS + 2 * reg + 1] + s[CFA_OFF]:
        return False
    s[REGS + 2 * reg] = INITIAL_REGS[2 * reg]
    s[REGS + 2 * reg + 1] = INITIAL_REGS[2 * reg + 1]
    return True


def store_through_sp_copy(w: Walker, g: int, s: list[int]) -> bool:
    """``mov %base, d(%r)`` while the CFA is ``base + k`` and ``%r`` was set by
    ``lea o(%rsp), %r`` a few straight-line instructions before (OpenSSL's
    whirlpool_block): the slot is ``rsp + o + d``, the CFA ``*(rsp+o+d) + k``."""
    base = s[CFA_BASE]
    prog = w.prog
    if not 0 <= base < 16 or base == d.SP or base == d.BP or s[DRAP] or prog.length[g] > 8:
        return False
    m = _mem_mov(prog, g)
    if m is None or not m[0] or m[1] != base or m[2] in (d.SP, base):
        return False
    r = m[2]
    p = prog.prev_same_sec(g)
    for _ in range(_WINDOW):
        if p < 0 or prog.kind[p] not in (d.OTHER, d.NOP):
            return False
        ops = prog.ops[p]
        if ops and ops[0][0] == d.D_REG and ops[0][1] == r and ops[0][4] == d.SP \
                and ops[0][3] in (d.S_ADD, d.S_REG):
            s[DRAP_OFF] = s[CFA_OFF]
            s[CFA_BASE] = USER_SP_DEREF
            s[CFA_OFF] = (ops[0][5] if ops[0][3] == d.S_ADD else 0) + m[3]
            return True
        if prog.writes(p, r) or prog.writes(p, d.SP) or prog.writes(p, base):
            return False
        p = prog.prev_same_sec(p)
    return False


def user_xchg_sp(w: Walker, g: int, s: list[int]) -> bool:
    """``xchg %rsp, %reg`` (OpenSSL's AES_cbc_encrypt switches to a realigned
    area so): with the CFA on rsp it moves to %reg, which now holds the old rsp;
    with the CFA on %reg it moves back to rsp; otherwise it is lost."""
    prog = w.prog
    n = prog.length[g]
    if n not in (2, 3) or prog.kind[g] != d.OTHER:
        return False
    data = prog.elf.sections[prog.sec_of[g]].data
    o = prog.off[g]
    rex = data[o]
    if rex & 0xF8 != 0x48:
        return False
    if n == 3 and data[o + 1] == 0x87 and data[o + 2] >> 6 == 3:
        a = ((rex >> 2) & 1) << 3 | (data[o + 2] >> 3) & 7
        b = (rex & 1) << 3 | data[o + 2] & 7
    elif n == 2 and 0x91 <= data[o + 1] <= 0x97:
        a, b = d.AX, (rex & 1) << 3 | data[o + 1] & 7
    else:
        return False
    if a != d.SP and b != d.SP:
        return False
    reg = b if a == d.SP else a
    if reg == d.SP or s[DRAP]:
        return False
    if s[CFA_BASE] == d.SP:
        s[VALS + 2 * reg] = CFA
        s[VALS + 2 * reg + 1] = -s[STACK]
        s[CFA_BASE] = reg
        s[STACK] = STACK_UNKNOWN * 2
    elif s[CFA_BASE] == reg:
        s[STACK] = s[CFA_OFF]
        s[CFA_BASE] = d.SP
        s[VALS + 2 * reg] = UNDEFINED
    else:
        s[CFA_BASE] = UNDEFINED
        s[CFA_OFF] = 0
    return True


_CS_ORDER = (d.BP, d.BX, d.R12, d.R13, d.R14, d.R15)


def forget_overwritten(prog: Program, g: int, s: list[int]) -> None:
    """Callee-saved registers instruction ``g`` may overwrite no longer hold a copy
    of rsp (their copies are the ones :func:`copy_of_cfa` trusts); the register
    the CFA is computed from is watched elsewhere, a copy ``g`` makes is kept."""
    m = prog.cs_writes.get(g, 0)
    if not m:
        return
    ops = prog.ops[g] or ()
    for r in _CS_ORDER:
        if (m >> r) & 1 and s[VALS + 2 * r] == CFA and r != s[CFA_BASE] and not any(
                op[0] == d.D_REG and op[1] == r and op[4] == d.SP for op in ops):
            s[VALS + 2 * r] = UNDEFINED


def _fresh_copy(w: Walker, g: int, src: int) -> bool:
    """``src`` still holds the copy of rsp its state says: callee-saved registers
    are kept up to date (:func:`forget_overwritten`); another must have been set
    from rsp a few straight-line instructions before, and not written since."""
    if src in _CS_ORDER:
        return True
    prog = w.prog
    p = prog.prev_same_sec(g)
    for _ in range(_WINDOW):
        if p < 0 or prog.kind[p] not in (d.OTHER, d.NOP):
            return False
        ops = prog.ops[p]
        if ops and ops[0][0] == d.D_REG and ops[0][1] == src and ops[0][4] == d.SP:
            return True
        if prog.writes(p, src):
            return False
        p = prog.prev_same_sec(p)
    return False


def copy_of_cfa(s: list[int], base: int) -> bool:
    """The CFA register ``base`` was overwritten: move the CFA to a callee-saved
    register known to hold ``CFA-k`` (rbp first), if there is one."""
    for r in _CS_ORDER:
        if r != base and s[VALS + 2 * r] == CFA:
            s[CFA_BASE] = r
            s[CFA_OFF] = -s[VALS + 2 * r + 1]
            return True
    return False


def user_lea_handoff(w: Walker, g: int, s: list[int]) -> bool:
    """``lea d(%base), %reg`` while the CFA is ``base + k``, right before ``base`` is
    reloaded through ``reg`` (perlasm's ``lea 0x78(%rbp),%rax; ...;
    mov -8(%rax),%rbp``): the CFA moves to ``reg + k - d``."""
    ops = w.prog.ops[g]
    if not ops or len(ops) != 1:
        return False
    dtype, dst, _, stype, src, disp = ops[0]
    if (dtype != d.D_REG or stype not in (d.S_ADD, d.S_REG) or dst == d.SP
            or src != s[CFA_BASE] or src == d.SP or dst == src or s[DRAP]
            or not _reloaded_through(w, g, src, dst)):
        return False
    s[CFA_BASE] = dst
    s[CFA_OFF] -= disp if stype == d.S_ADD else 0
    s[VALS + 2 * dst] = UNDEFINED
    return True


def _reloaded_through(w: Walker, g: int, base: int, copy: int) -> bool:
    """``base`` is reloaded from memory addressed by ``copy`` within a few
    straight-line instructions that write neither, and not before."""
    prog = w.prog
    n = prog.next_same_sec(g)
    for _ in range(_WINDOW):
        if n < 0 or prog.kind[n] not in (d.OTHER, d.NOP):
            return False
        if prog.writes(n, base):
            m = _mem_mov(prog, n)
            return m is not None and not m[0] and m[1] == base and m[2] == copy
        if prog.writes(n, copy):
            return False
        n = prog.next_same_sec(n)
    return False


def _built_frame(w: Walker, g: int, src: int, s: list[int]) -> bool:
    """``mov %src, %rbp`` after ``mov %ra, K(%src)`` with %ra loaded from the
    return address slot (``mov (%rsp), %ra`` at CFA-8) and, optionally,
    ``mov %rbp, K-8(%src)``: CFA = rbp + K + 8."""
    prog = w.prog
    ra_slot: dict[int, int] = {}          # register -> disp where it was stored
    bp_slot: int | None = None
    src_live = True                       # no write to %src between here and g
    p = prog.prev_same_sec(g)
    for _ in range(_WINDOW):
        if p < 0 or prog.kind[p] not in (d.OTHER, d.NOP):
            return False
        m = _mem_mov(prog, p)
        if m is not None:
            store, reg, base, disp = m
            if store and base == src and src_live:
                if reg == d.BP and bp_slot is None:
                    bp_slot = disp
                elif reg not in ra_slot:
                    ra_slot[reg] = disp
                p = prog.prev_same_sec(p)
                continue
            c = w.cfi[p]
            if (not store and base == d.SP and reg in ra_slot and c is not None
                    and c[CFA_BASE] == d.SP and c[CFA_OFF] == disp + 8):
                k = ra_slot[reg]
                s[CFA_BASE] = d.BP
                s[CFA_OFF] = k + 8
                if bp_slot == k - 8:
                    s[REGS + 2 * d.BP] = CFA
                    s[REGS + 2 * d.BP + 1] = -16
                s[VALS + 2 * d.BP] = UNDEFINED
                return True
        if src_live and prog.writes(p, src):
            src_live = False
        for r in [r for r in ra_slot if prog.writes(p, r)]:
            del ra_slot[r]
        if not src_live and not ra_slot:
            return False
        p = prog.prev_same_sec(p)
    return False
