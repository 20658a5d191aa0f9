"""caller-frame-write and return-address-overwrite: stores at or above the CFA."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.cfg.noreturn import is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import CFA_BASE, CFA_OFF, STACK
from framevet.rules.registry import Rule, register
from framevet.stack.regflow import effects, slot_of

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    """Both rules share one pass over the stores through rsp/rbp found at decode time."""
    prog, cfi = ctx.prog, ctx.result.cfi
    by_func: dict[int, list[int]] = {}
    for g in prog.stack_stores:
        fi = prog.func[g]
        if fi >= 0 and cfi[g] is not None:
            by_func.setdefault(prog.functions[fi].parent, []).append(g)
    skip = {fi for fi, f in enumerate(prog.functions)
            if (dcl := ctx.hints.functions.get(f.name)) is not None and dcl.entry != "call"}
    for fi, gids in by_func.items():
        if fi in skip:
            continue
        decl = ctx.hints.functions.get(prog.functions[fi].name)
        stack_args = decl.stack_args if decl is not None else 0
        eff = effects(prog, gids)
        first_arg_read: int | None = -1
        for g in gids:
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
                continue
            if k < 0 or k < 8 * stack_args:
                continue
            if _feeds_tail_call(prog, g):
                continue  # outgoing stack argument of a sibling call, in our own arg area
            if first_arg_read == -1:
                first_arg_read = _first_argument_read(prog, cfi, fi)
            # a function that reads its caller's frame first takes stack arguments and may
            # write its own incoming argument area (vmread_error_trampoline's result slot)
            if first_arg_read is None or first_arg_read > g:
                src = e.store[0]
                fname = prog.functions[fi].name
                if src in (d.BX, d.BP, d.R12, d.R13, d.R14, d.R15):
                    # a register "save" that lands in the caller's frame (seed 002)
                    yield ctx.finding(g, CALLER_FRAME.id,
                                      f"save of {d.REG_NAMES[src]} into the caller's frame "
                                      f"at cfa{k:+d}", slot=k)
                else:
                    # compiled code may reuse its own stack-argument slots
                    yield ctx.finding(g, CALLER_FRAME.id,
                                      f"store to the caller's frame at cfa{k:+d}: legal only "
                                      f"if {fname} takes at least {k // 8 + 1} stack "
                                      f"argument(s)", "note", slot=k)
    for g, k in enumerate(prog.kind):
        if k == d.RETURN and prog.func[g] >= 0:
            c = cfi[g]
            if c is not None and c[CFA_BASE] == d.SP and c[CFA_OFF] > 8 and c[STACK] > 8:
                yield ctx.finding(g, RETURN_ADDRESS.id,
                                  "return to a pushed address, not to the caller "
                                  f"(cfa=rsp+{c[CFA_OFF]})", pushed=c[CFA_OFF] - 8)


def _feeds_tail_call(prog: Program, g: int, reach: int = 16) -> bool:
    """Is the store at ``g`` followed, on its straight-line path, by a sibling call?
    GCC passes a tail callee's stack arguments by rewriting the caller's own incoming
    argument slots -- only ever when it has that many stack arguments itself."""
    for _ in range(reach):
        k = prog.kind[g]
        if is_sibling_call(prog, g):
            return True
        if k in (d.CALL, d.CALL_DYNAMIC, d.RETURN, d.JUMP_DYNAMIC, d.JUMP_COND):
            return False
        if k == d.JUMP_UNCOND:
            g = prog.jump_dest[g]
            if g < 0:
                return False
            continue
        g = prog.next_same_sec(g)
        if g < 0:
            return False
    return False


def _first_argument_read(prog: Program, cfi: list[tuple[int, ...] | None],
                         fi: int) -> int | None:
    gids = [g for g in prog.func_insns(fi) if cfi[g] is not None]
    eff = effects(prog, gids)
    for g in gids:
        rd = eff[g].mem_read
        if rd is not None:
            k = slot_of(cfi[g], rd[0], rd[1])
            if k is not None and k >= 0:
                return g
    return None


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
