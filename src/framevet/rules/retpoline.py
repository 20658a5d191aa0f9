"""Retpoline / return-thunk builds: no bare indirect branch, no bare ret."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    """objtool's validate_retpoline(); runs before the stack walk, as objtool does."""
    opts, prog = ctx.options, ctx.prog
    if not opts.retpoline:
        return
    for g, k in enumerate(prog.kind):
        if k not in (d.JUMP_DYNAMIC, d.CALL_DYNAMIC, d.RETURN):
            continue
        if g in prog.retpoline or g in prog.return_thunks or g in ctx.hints.retpoline_safe:
            continue
        if not opts.module and prog.section_name(prog.sec_of[g]).startswith(".init.text"):
            continue
        if k == d.RETURN:
            if opts.rethunk:
                yield ctx.finding(g, NAKED.id, "'naked' return found in RETHUNK build")
            continue
        what = "jump" if k == d.JUMP_DYNAMIC else "call"
        yield ctx.finding(g, INDIRECT.id, f"indirect {what} found in RETPOLINE build")


INDIRECT = register(Rule(
    "indirect-branch-in-retpoline-build", "bare indirect call/jmp (--retpoline)",
    "an indirect call or jump not going through a __x86_indirect_thunk_* retpoline",
    "Spectre v2: the branch target buffer can be poisoned to speculate anywhere",
    "call/jmp through the retpoline thunk (CONFIG_RETPOLINE, -mindirect-branch=thunk-extern)",
    objtool="indirect %s found in RETPOLINE build", switches="--retpoline", family="retpoline",
    check=check))
NAKED = register(Rule(
    "naked-return-in-rethunk-build", "bare ret (--retpoline --rethunk)",
    "a ret instead of a jmp to __x86_return_thunk",
    "Retbleed: returns must go through the return thunk to be mitigated",
    "jmp __x86_return_thunk (the RET macro, -mfunction-return=thunk-extern)",
    objtool="'naked' return found in RETHUNK build", switches="--retpoline --rethunk",
    family="retpoline"))
