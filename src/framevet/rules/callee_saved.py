"""callee-saved-clobber: rbx, rbp, r12-r15 must hold the caller's value at every exit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.cfg.noreturn import is_noreturn
from framevet.decode import insn as d
from framevet.decode.state import UNDEFINED
from framevet.load.elf import STB_LOCAL, STT_SECTION
from framevet.rules.ibt import metadata_section
from framevet.rules.registry import Rule, register
from framevet.stack.regflow import TRACKED, callee_saved_clobbers

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


def check(ctx: Context) -> Iterator[Finding]:
    """Local helpers whose address is never taken may have their own convention
    (crypto assembly's ``__poly1305_block`` clobbers rbx): their clobbers become a
    summary applied at their call sites, and only exported or address-taken
    functions answer for the ABI."""
    prog, cfi = ctx.prog, ctx.result.cfi
    suspects = _suspects(ctx)
    if not suspects:
        return
    private = _private_functions(ctx, suspects)
    summaries: dict[int, frozenset[int]] = {}
    for _ in range(3):
        changed = False
        for fi in private:
            f = prog.functions[fi]
            regs = frozenset(r for c in callee_saved_clobbers(prog, cfi, fi, frozenset(),
                                                               summaries) for r in c.regs)
            if summaries.get(f.sym.index, frozenset()) != regs:
                summaries[f.sym.index] = regs
                changed = True
        if not changed:
            break
    for fi, f in enumerate(prog.functions):
        if not f.canonical or f.parent != fi or fi in private or fi not in suspects:
            continue
        decl = ctx.hints.functions.get(f.name)
        if decl is not None and decl.entry != "call":
            continue  # entry stubs do not return to a C caller
        allowed = decl.clobbers if decl is not None else frozenset()
        if f.name.lstrip("_") in CONTEXT_SWITCHERS or is_noreturn(prog, f.sym):
            continue  # (a function that never returns owes its caller nothing)
        for c in callee_saved_clobbers(prog, cfi, fi, allowed, summaries):
            names = ", ".join(d.REG_NAMES[r] for r in c.regs)
            what = "return" if prog.kind[c.gid] == d.RETURN else "tail call"
            yield ctx.finding(c.gid, RULE.id,
                              f"{what} with callee-saved {names} not holding the caller's value",
                              registers=[d.REG_NAMES[r] for r in c.regs])


#: functions whose job is to load another context's callee-saved registers
#: (leading underscores ignored): longjmp and ucontext
CONTEXT_SWITCHERS = frozenset({
    "longjmp", "longjmp_cancel", "longjmp_chk", "libc_longjmp", "libc_siglongjmp",
    "siglongjmp", "setcontext", "swapcontext", "start_context", "GI___longjmp",
    "GI___setcontext", "GI___swapcontext",
})


def _suspects(ctx: Context) -> set[int]:
    """Functions with an instruction that may write a callee-saved register while the
    walk's state says the caller's value is not saved anywhere.  Everything else is
    preserved by construction: objtool's walk already proved each saved register is
    restored from its own slot before every return."""
    prog, cfi = ctx.prog, ctx.result.cfi
    out: set[int] = set()
    for g, mask in prog.cs_writes.items():
        fi = prog.func[g]
        c = cfi[g]
        if fi < 0 or c is None:
            continue
        for r in TRACKED:
            if mask >> r & 1 and c[9 + 2 * r] == UNDEFINED:
                out.add(prog.functions[fi].parent)
                break
    # ... but only up to returns the walk accepted: one reached with a register still
    # recorded as saved (objtool's "modified frame") may return it clobbered
    exits = [(g, c) for g, c, k, cd in zip(range(len(cfi)), cfi, prog.kind, prog.call_dest,
                                         strict=True)
             if c is not None and (k == d.RETURN or (k == d.JUMP_UNCOND and cd is not None))]
    for g, c in exits:
        if prog.func[g] >= 0 and any(c[9 + 2 * r] != UNDEFINED for r in TRACKED):
            out.add(prog.functions[prog.func[g]].parent)
    children: dict[int, list[int]] = {}
    for i, f in enumerate(prog.functions):
        if f.parent != i:
            children.setdefault(f.parent, []).append(i)
    # callers of suspects inherit their summaries
    callers: dict[int, set[int]] = {}
    for g, cd in enumerate(prog.call_dest):
        if cd is not None and prog.func[g] >= 0:
            callers.setdefault(cd.index, set()).add(prog.functions[prog.func[g]].parent)
    todo = list(out)
    while todo:
        fi = todo.pop()
        out.update(children.get(fi, ()))
        for p in callers.get(prog.functions[fi].sym.index, ()):
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


def _private_functions(ctx: Context, among: set[int]) -> set[int]:
    """Local functions reached only by direct calls and jumps (no relocation in data
    or in a non-branch instruction points at them)."""
    prog, elf = ctx.prog, ctx.prog.elf
    local = {(prog.functions[fi].sec, prog.functions[fi].start) for fi in among
             if prog.functions[fi].sym.bind == STB_LOCAL}
    if not local:
        return set()
    taken: set[tuple[int, int]] = set()
    branch_kinds = (d.CALL, d.JUMP_COND, d.JUMP_UNCOND)
    for sec_index, rels in elf.relocs.items():
        name = elf.sections[sec_index].name
        if metadata_section(name) or name in (".return_sites", ".call_sites"):
            continue  # ORC, alternatives, mcount...: addresses, not function pointers
        is_code = sec_index in prog.base
        for r in rels:
            sym = elf.symbols[r.sym]
            if not sym.defined:
                continue
            addend = r.addend + (4 if r.type in (2, 4) else 0)
            spot = (sym.shndx, sym.offset + (addend if sym.type == STT_SECTION else 0))
            if spot not in local:
                continue
            if is_code:
                g = prog.containing(sec_index, r.offset)
                if g >= 0 and prog.kind[g] in branch_kinds:
                    continue
            taken.add(spot)
    out = set()
    for fi in among:
        f = prog.functions[fi]
        if (f.canonical and f.parent == fi and f.sym.bind == STB_LOCAL
                and (f.sec, f.start) not in taken and f.name not in ctx.hints.functions):
            out.add(fi)
    return out


RULE = register(Rule(
    "callee-saved-clobber", "callee-saved register not preserved",
    "on some path to a return or tail call, rbx, rbp or r12-r15 does not hold the value it had "
    "on entry (a copy moved to another register and back, or saved and restored, counts)",
    "the SysV ABI lets the caller keep live values in these registers across the call; "
    "clobbering one corrupts the caller silently, far from the bug",
    "save the register (push or a slot in your own frame) before using it and restore it on "
    "every exit; if the convention is deliberately non-standard, declare it in framevet.toml "
    "(clobbers = [...])",
    severity="error", family="framevet", check=check))
