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

from framevet import decode as d
from framevet.state import (
    CFA,
    CFA_BASE,
    CFA_OFF,
    DRAP,
    INITIAL_REGS,
    REGS,
    UNDEFINED,
    VALS,
)

if TYPE_CHECKING:
    from framevet.cfa import Walker
    from framevet.cfg import Program

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
    sec = prog.elf.sections[prog.sec_of[g]]
    o = prog.off[g]
    ins = iced_x86.Decoder(64, sec.data[o:o + prog.length[g]], ip=o).decode()
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
    if s[VALS + 2 * src] == CFA:
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


def copy_of_cfa(s: list[int], base: int) -> bool:
    """The CFA register ``base`` was overwritten: move the CFA to another register
    known to hold ``CFA-k`` (rbp first), if there is one."""
    for r in (d.BP, d.BX, d.R12, d.R13, d.R14, d.R15, d.R10, d.R11, d.R8, d.R9,
              d.AX, d.CX, d.DX, d.SI, d.DI):
        if r != base and s[VALS + 2 * r] == CFA:
            s[CFA_BASE] = r
            s[CFA_OFF] = -s[VALS + 2 * r + 1]
            return True
    return False


def _reloaded_through(w: Walker, g: int, base: int, copy: int) -> bool:
    """``base`` is reloaded from memory addressed by ``copy`` within a few
    straight-line instructions that write neither, and not before."""
    from framevet.stackmodel import _writes

    prog = w.prog
    n = prog.next_same_sec(g)
    for _ in range(_WINDOW):
        if n < 0 or prog.kind[n] not in (d.OTHER, d.NOP):
            return False
        if _writes(prog, n, base):
            m = _mem_mov(prog, n)
            return m is not None and not m[0] and m[1] == base and m[2] == copy
        if _writes(prog, n, copy):
            return False
        n = prog.next_same_sec(n)
    return False


def _built_frame(w: Walker, g: int, src: int, s: list[int]) -> bool:
    """``mov %src, %rbp`` after ``mov %ra, K(%src)`` with %ra loaded from the
    return address slot (``mov (%rsp), %ra`` at CFA-8) and, optionally,
    ``mov %rbp, K-8(%src)``: CFA = rbp + K + 8."""
    from framevet.stackmodel import _writes

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
        if src_live and _writes(prog, p, src):
            src_live = False
        for r in [r for r in ra_slot if _writes(prog, p, r)]:
            del ra_slot[r]
        if not src_live and not ra_slot:
            return False
        p = prog.prev_same_sec(p)
    return False
