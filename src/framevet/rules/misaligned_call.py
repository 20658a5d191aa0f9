"""call-misaligned-stack (profile user): rsp must be 16-byte aligned at every call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.cfg.noreturn import is_noreturn, is_plt_stub
from framevet.decode import insn as d
from framevet.decode.state import CFA_BASE, DRAP, STACK, UNDEFINED
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    prog, cfi = ctx.prog, ctx.result.cfi
    for g, k in enumerate(prog.kind):
        if k != d.CALL and k != d.CALL_DYNAMIC:
            continue
        c = cfi[g]
        if c is None or c[CFA_BASE] == UNDEFINED or c[DRAP] or prog.func[g] < 0:
            continue
        if g in prog.intra_calls:
            continue
        cd = prog.call_dest[g]
        if is_noreturn(prog, cd):
            continue  # GCC does not align for calls that never return (abort, panic)
        if ".cold" in prog.functions[prog.func[g]].name:
            continue  # cold partitions: error paths into noreturn calls framevet cannot name
        if k == d.CALL and cd is not None and cd.defined and not is_plt_stub(cd):
            # GCC's -fipa-stack-alignment skips the adjustment for callees in the same
            # object that it knows do not need it; only calls out can be judged
            continue
        # on entry rsp = CFA - 8 and CFA is 16-aligned; rsp at the call = CFA - stack_size
        if c[STACK] % 16 != 0:
            yield ctx.finding(g, RULE.id,
                              f"call with rsp not 16-byte aligned (rsp=cfa{-c[STACK]:+d})",
                              stack=c[STACK])


RULE = register(Rule(
    "call-misaligned-stack", "rsp not 16-byte aligned at a call (profile user)",
    "a call to another object's function, or an indirect call, made while rsp is not a "
    "multiple of 16 (the CFA is 16-aligned by the ABI, so the pushed bytes below it must be "
    "too); calls to functions of the same object are left alone, as GCC aligns only for "
    "callees that need it there",
    "the SysV ABI guarantees 16-byte alignment at calls; callees use movaps on stack slots "
    "and crash (glibc's printf with SSE, any -mavx code)",
    "adjust the frame size (sub $8,%rsp) so that pushes plus locals are a multiple of 16",
    profiles=("user",), family="framevet", check=check))
