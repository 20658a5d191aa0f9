"""caller-frame-write and return-address-overwrite: stores at or above the CFA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet import decode as d
from framevet.regflow import effects, slot_of
from framevet.rules import Rule, register
from framevet.state import CFA_BASE, CFA_OFF, STACK

if TYPE_CHECKING:
    from framevet.analysis import Context
    from framevet.report.findings import Finding


def check(ctx: Context) -> Iterator[Finding]:
    """Both rules share one pass over each function's stack stores."""
    prog, cfi = ctx.prog, ctx.result.cfi
    for fi, f in enumerate(prog.functions):
        if not f.canonical or f.parent != fi:
            continue
        decl = ctx.hints.functions.get(f.name)
        if decl is not None and decl.entry != "call":
            continue
        stack_args = decl.stack_args if decl is not None else 0
        gids = [g for g in prog.func_insns(fi) if cfi[g] is not None]
        candidates = [g for g in gids if _may_store(prog, g)]
        eff = effects(prog, candidates)
        # a function that reads its caller's frame first takes stack arguments, and
        # may write its own incoming argument area (vmread_error_trampoline's result slot)
        first_arg_read = min((g for g in candidates if eff[g].load is not None
                              and (k := slot_of(cfi[g], eff[g].load[1], eff[g].load[2]))
                              is not None and k >= 0), default=None)
        for g in candidates:
            e = eff[g]
            if e.store is None:
                continue
            _, base, disp, size = e.store
            k = slot_of(cfi[g], base, disp)
            if k is None:
                continue
            if k <= -8 < k + size:
                yield ctx.finding(g, RETURN_ADDRESS.id,
                                  f"store to the return address slot (cfa{k:+d})", slot=k)
            elif k >= 8 * stack_args and k >= 0 and (first_arg_read is None
                                                     or first_arg_read > g):
                yield ctx.finding(g, CALLER_FRAME.id,
                                  f"store to the caller's frame at cfa{k:+d} (not a stack argument "
                                  f"this function read first)", slot=k)
        for g in gids:
            if prog.kind[g] == d.RETURN:
                c = cfi[g]
                if c is not None and c[CFA_BASE] == d.SP and c[CFA_OFF] > 8 and c[STACK] > 8:
                    yield ctx.finding(g, RETURN_ADDRESS.id,
                                      "return to a pushed address, not to the caller "
                                      f"(cfa=rsp+{c[CFA_OFF]})", pushed=c[CFA_OFF] - 8)


def _may_store(prog: object, g: int) -> bool:
    p = prog  # cheap pre-filter: only instructions that are not branches
    k = p.kind[g]  # type: ignore[attr-defined]
    return k == d.OTHER or k == d.NOP


CALLER_FRAME = register(Rule(
    "caller-frame-write", "store into the caller's stack frame",
    "a store at or above the CFA, i.e. into memory the caller owns (seed 002: SAVE_EXTRA_REGS "
    "writing pt_regs slots that were never allocated); objtool accepts it silently",
    "the caller's locals, spilled registers or return address get overwritten; the corruption "
    "surfaces later, in another function. Legal only for a function that takes stack arguments "
    "and writes its own incoming argument area",
    "allocate the area in your own frame first (sub $N,%rsp / ALLOC_PT_GPREGS_ON_STACK) or, "
    "for stack arguments, declare them in framevet.toml (stack_args = N)",
    severity="error", family="framevet", check=check))
RETURN_ADDRESS = register(Rule(
    "return-address-overwrite", "return address rewritten, or ret to a pushed address",
    "a store into the return-address slot (CFA-8), or a ret executed while the top of the "
    "stack is a value this function pushed: return-oriented control flow (seed 001's "
    "host_to_guest_gpr_switch)",
    "the CPU predicts returns with the return stack buffer, filled by calls; a ret to an "
    "address no call pushed always mispredicts (and with retbleed/RSB mitigations is "
    "costlier still), and unwinders/CET shadow stacks see a return to the wrong place",
    "use an ordinary call/ret pair (call the helper, then return normally) or an indirect "
    "jmp/call through a register",
    severity="error", family="framevet"))
