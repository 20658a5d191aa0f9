"""Straight-line speculation: an int3 must follow every ret and indirect jump (--sls)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    if not ctx.options.sls:
        return
    prog = ctx.prog
    for g, k in enumerate(prog.kind):
        if k != d.RETURN and k != d.JUMP_DYNAMIC:
            continue
        if g in prog.retpoline or g in prog.return_thunks or g in ctx.hints.retpoline_safe:
            continue
        n = prog.next_same_sec(g)
        if n >= 0 and prog.kind[n] == d.TRAP:
            continue
        if k == d.RETURN:
            yield ctx.finding(g, RET.id, "missing int3 after ret")
        else:
            yield ctx.finding(g, JMP.id, "missing int3 after indirect jump")


_WHY = ("CPUs speculatively execute the bytes after an unconditional control transfer; "
        "an int3 stops that straight-line speculation")
RET = register(Rule(
    "missing-int3-after-ret", "ret not followed by int3 (--sls)",
    "a ret with anything but int3 after it", _WHY, "add int3 after the ret (GCC -mharden-sls=all)",
    objtool="missing int3 after ret", switches="--sls", family="sls", check=check))
JMP = register(Rule(
    "missing-int3-after-indirect-jump", "indirect jmp not followed by int3 (--sls)",
    "an indirect jump with anything but int3 after it", _WHY, "add int3 after the jump",
    objtool="missing int3 after indirect jump", switches="--sls", family="sls"))
