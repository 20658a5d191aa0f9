"""Entry-path return-thunk untraining (``--unret``; objtool 6.1 needs ``--rethunk --link``).

On AMD Retbleed-affected CPUs the kernel must run UNTRAIN_RET on every entry
path (syscall, interrupt, exception) before the first return or indirect
branch.  objtool 6.1's validate_unret() walks from every entry point
(UNWIND_HINT_ENTRY, or an IRET_REGS hint at a global symbol) through jumps,
alternatives and into callees until it meets ANNOTATE_UNRET_END (a nop in
``.discard.retpoline_safe``).  A ret or indirect branch met first is a warning
that ends that entry's walk; a path that cannot be followed (off the end of the
section, to code outside the object) is fatal: objtool gives up on the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.cfg.noreturn import is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context

_INDIRECT = (d.CALL_DYNAMIC, d.JUMP_DYNAMIC, d.JUMP_DYNAMIC_COND)
#: walk phases: from the start of an instruction, after its alternatives, after its branch
_START, _AFTER_ALTS, _AFTER_BRANCH = 0, 1, 2


def check(ctx: Context) -> Iterator[Finding]:
    """objtool's validate_unret(): entry points in instruction order."""
    if not ctx.options.unret:
        return
    prog = ctx.prog
    visited: set[int] = set()
    for g in sorted(prog.entry):
        found, fatal = _validate_entry(ctx, g, visited)
        yield from found
        if fatal:
            yield ctx.finding(g, FAILED.id, "Failed UNRET validation", fatal=True)
            if ctx.options.objtool_only:
                return


def _next(prog: Program, g: int) -> int:
    """objtool's next_insn_to_validate(): a replacement flows on after its original."""
    grp = prog.alt_group.get(g)
    if grp is not None:
        ag = prog.groups[grp]
        if ag.orig >= 0 and g == ag.last:
            return prog.next_same_sec(prog.groups[ag.orig].last)
    return prog.next_same_sec(g)


def _validate_entry(ctx: Context, start: int, visited: set[int]) -> tuple[list[Finding], bool]:
    """objtool's recursive validate_entry() as a loop: the first problem on any path ends
    the walk.  Returns the findings and whether the problem is fatal."""
    prog = ctx.prog
    kind, jump_dest, call_dest = prog.kind, prog.jump_dest, prog.call_dest
    stack: list[tuple[int, int]] = [(start, _START)]
    while stack:
        g, phase = stack.pop()
        while True:
            if phase == _START:
                if g < 0:
                    # the NOP standing for an empty replacement: on after the original
                    if g in visited:
                        break
                    visited.add(g)
                    g = prog.next_same_sec(prog.groups[prog.groups[-1 - g].orig].last)
                    if g < 0:
                        break
                    continue
                if g in visited:
                    break
                visited.add(g)
                alts = prog.alts.get(g)
                if alts and not prog.ignore_alts[g]:
                    if not any(skip for _, skip in alts):
                        stack.append((g, _AFTER_ALTS))
                    stack.extend((ag, _START) for ag, _ in reversed(alts))
                    break
            if phase != _AFTER_BRANCH:
                k = kind[g]
                if k in _INDIRECT:
                    return [ctx.finding(g, EARLY.id, "early indirect call")], False
                if k == d.RETURN:
                    return [ctx.finding(g, RET.id, "RET before UNTRAIN")], False
                if k == d.NOP and g in prog.retpoline_safe:
                    break       # ANNOTATE_UNRET_END
                sibling = is_sibling_call(prog, g)
                if (k == d.JUMP_COND or k == d.JUMP_UNCOND) and not sibling:
                    if jump_dest[g] < 0:
                        return [ctx.finding(g, FAILED.id,
                                            "unresolved jump target after linking?!?")], True
                    if k == d.JUMP_COND:
                        stack.append((g, _AFTER_BRANCH))
                    g, phase = jump_dest[g], _START
                    continue
                if k == d.CALL or sibling:
                    # a callee that comes back without error has untrained
                    cd = call_dest[g]
                    dg = prog.gid(cd.shndx, cd.offset) if cd is not None and cd.defined else -1
                    if dg < 0:
                        name = cd.name if cd is not None else "(null)"
                        return [ctx.finding(-1, FAILED.id,
                                            f"Unresolved function after linking!?: {name}")], True
                    g, phase = dg, _START
                    continue
            phase = _START
            n = _next(prog, g)
            if n < 0:
                return [ctx.finding(g, FAILED.id, "teh end!")], True
            g = n
    return [], False


_WHY = ("Retbleed: until UNTRAIN_RET has run, a return (or a poisoned indirect branch) on "
        "the entry path can be steered by predictions left by user space")
_SW = "--unret --rethunk --link"
_K = ("kernel",)
EARLY = register(Rule(
    "early-indirect-call", "indirect branch before UNTRAIN_RET on an entry path (--unret)",
    "an indirect call or jump reachable from an entry point before ANNOTATE_UNRET_END",
    _WHY, "move UNTRAIN_RET (ANNOTATE_UNRET_END) before the branch",
    objtool="early indirect call", switches=_SW, profiles=_K, family="unret", check=check))
RET = register(Rule(
    "ret-before-untrain", "return before UNTRAIN_RET on an entry path (--unret)",
    "a ret (or return-thunk jump) reachable from an entry point before ANNOTATE_UNRET_END",
    _WHY, "untrain on every path before returning", objtool="RET before UNTRAIN",
    switches=_SW, profiles=_K, family="unret"))
FAILED = register(Rule(
    "unret-validation-failed", "an entry path objtool cannot follow (--unret, fatal)",
    "from an entry point the walk runs off the end of its section (\"teh end!\"), jumps "
    "(\"unresolved jump target after linking?!?\") or calls (\"Unresolved function after "
    "linking!?: %s\") to code outside the object before ANNOTATE_UNRET_END",
    "objtool gives up on the object: exit status 255, nothing written (no ORC)",
    "link the whole entry path into the object (objtool runs on vmlinux.o), or end it",
    objtool="Failed UNRET validation", switches=_SW, severity="error", profiles=_K,
    family="unret"))
