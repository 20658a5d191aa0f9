"""Dirty AVX upper halves at function exits, found statically.

unicorn 2.1 cannot execute VEX/EVEX instructions, so a run stops at the first
one and cannot see whether a function leaves the upper halves of the ymm/zmm
registers dirty.  That check is made on the code instead: a forward may-analysis
over the function's paths, where an instruction that writes a ymm/zmm register
makes the upper state dirty and ``vzeroupper``/``vzeroall`` makes it clean.  A
call, return or tail call reached dirty hands the state to code that may run SSE
instructions: the SSE/AVX transition penalty that the rule "vzeroupper before
calls and returns" (what GCC and clang emit) exists to avoid.
"""

from __future__ import annotations

from iced_x86 import Mnemonic, Register

from framevet.cfg.noreturn import is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.stack.regflow import successors

_WIDE = frozenset(r for name in dir(Register)
                  if name.startswith(("YMM", "ZMM")) and name[3:].isdigit()
                  for r in [getattr(Register, name)])
_CLEAN = (Mnemonic.VZEROUPPER, Mnemonic.VZEROALL)


def _effect(prog: Program, g: int) -> int:
    """+1 dirties the upper halves, -1 cleans them, 0 leaves them."""
    ins = prog.instruction(g)
    if ins.mnemonic in _CLEAN:
        return -1
    for ur in d.INFO.info(ins).used_registers():
        if ur.register in _WIDE and ur.access in d.WRITE_ACCESS:
            return 1
    return 0


def dirty_exits(prog: Program, fi: int) -> list[tuple[int, int]]:
    """(gid, gid of an instruction that dirtied the upper halves) for every call,
    return or tail call of function ``fi`` that some path reaches with them dirty."""
    gids = prog.func_insns(fi)
    member = set(gids)
    effect = {g: _effect(prog, g) for g in gids}
    if not any(v > 0 for v in effect.values()):
        return []
    dirty_from: dict[int, int] = {}           # gid -> an instruction that dirtied it
    work = [g for g in gids if effect[g] > 0]
    for g in work:
        dirty_from[g] = g
    out: dict[int, int] = {}
    while work:
        g = work.pop()
        src = dirty_from[g]
        k = prog.kind[g]
        if k in (d.RETURN, d.CALL, d.CALL_DYNAMIC) or is_sibling_call(prog, g):
            if effect[g] >= 0 and g != src:
                out.setdefault(g, src)
            if k == d.RETURN:
                continue
        if effect[g] < 0:
            continue
        for s in successors(prog, g):
            if s in member and s not in dirty_from:
                dirty_from[s] = src
                work.append(s)
    return sorted(out.items())
