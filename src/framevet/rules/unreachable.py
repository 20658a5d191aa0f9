"""unreachable-instruction: code no path reaches (objtool's validate_reachable_instructions)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.cfg.noreturn import dead_after_noreturn, is_noreturn
from framevet.cfg.program import SKIP_ORC_SECTIONS
from framevet.decode import insn as d
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context

_SANITIZER_CALLS = ("__asan_handle_no_return", "__ubsan_handle_builtin_unreachable")


def check(ctx: Context) -> Iterator[Finding]:
    """Each run of unreachable instructions, reported at its first instruction.

    objtool prints only the first, and only when its retpoline checks and the walk
    warned about nothing;
    framevet reports every run (the first is marked ``objtool: true``)."""
    prog, visited = ctx.prog, ctx.result.visited
    if prog.ignore_unreachables:
        return
    aborted = ctx.result.aborted
    first = not ctx.counted
    in_run = False
    # profile user: code only a call that never returns leads to is dead, not broken
    dead = dead_after_noreturn(prog, visited) if prog.profile == "user" else set()
    for g in range(len(prog.off)):
        fi = prog.func[g]
        if visited[g] or g in dead or (fi >= 0 and prog.functions[fi].parent in aborted) \
                or _ignored(ctx, g):
            in_run = False
            continue
        if in_run:
            continue
        in_run = True
        yield ctx.finding(g, RULE.id, "unreachable instruction", objtool=first)
        first = False


def _ignored(ctx: Context, g: int) -> bool:
    prog = ctx.prog
    k = prog.kind[g]
    if g in ctx.hints.ignored_gids or k == d.NOP or k == d.TRAP:
        return True
    name = prog.section_name(prog.sec_of[g])
    if name in SKIP_ORC_SECTIONS:
        return True
    if name.startswith(".plt") and not prog.elf.relocatable:
        return True  # PLT stubs: entered through the GOT by the dynamic linker
    fi = prog.func[g]
    if fi < 0 and prog.elf.relocatable:
        return False        # (objtool judges code outside functions as it is)
    prev = g - 1
    if prev >= 0 and (prog.dead_end[prev] or (
            prog.kind[prev] in (d.CALL, d.CALL_DYNAMIC)
            and is_noreturn(prog, prog.call_dest[prev]))):
        jd = prog.jump_dest[g]
        # (in linked images, outside functions too: Xen's entry code follows
        # ``call fatal_trap`` with a BUG)
        if k == d.BUG or (k == d.JUMP_UNCOND and jd >= 0 and prog.kind[jd] == d.BUG):
            return True
    if fi < 0:
        # a linked user image's code outside every function (stripped CRT stubs): no
        # function boundary to judge reachability by
        return prog.profile == "user"
    f = prog.functions[fi]
    if f.name.startswith("__SCT__"):
        return True  # static call trampolines: patched at run time
    for _ in range(5):
        cd = prog.call_dest[g]
        if prog.kind[g] == d.CALL and cd is not None and cd.name in _SANITIZER_CALLS:
            return True
        if prog.kind[g] == d.JUMP_UNCOND:
            jd = prog.jump_dest[g]
            if jd >= 0 and prog.func[jd] == fi:
                g = jd
                continue
            break
        if prog.off[g] + prog.length[g] >= f.end:
            break
        g += 1
    return False


RULE = register(Rule(
    "unreachable-instruction", "code that no path reaches",
    "an instruction inside a function that no walk from any function start, jump, "
    "alternative or jump table reaches",
    "dead code after a mis-modelled noreturn call or a broken jump; it has no unwind state",
    "delete it, or mark the preceding call noreturn / the ud2 reachable",
    objtool="unreachable instruction", check=check))
