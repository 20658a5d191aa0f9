"""Indirect Branch Tracking (``--ibt``; objtool 6.1 needs ``--link`` for it).

With CET-IBT every indirect call or jump must land on an ENDBR instruction.
objtool 6.1's validate_ibt(): every address taken in code (a relocation in an
instruction that is not itself a branch) and every code address stored in data
must be an ENDBR, except references from a function to itself (``_THIS_IP_``),
targets annotated ANNOTATE_NOENDBR (``.discard.noendbr``), static-call
trampolines, and the metadata sections that list code addresses for other
reasons (exception tables, alternatives, ...).  An UNWIND_HINT_IRET_REGS at a
global symbol (an exception entry point) must be an ENDBR too; that one is
reported while the hints are read (:mod:`framevet.cfg.objtool_annotations`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.decode import insn as d
from framevet.load.elf import R_X86_64_PC32, R_X86_64_PLT32, SHF_EXECINSTR, STB_GLOBAL, Reloc
from framevet.rules.registry import Rule, register

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context

#: instructions whose relocations are branch targets, not function pointers
_BRANCHES = frozenset({d.CALL, d.CALL_DYNAMIC, d.JUMP_COND, d.JUMP_UNCOND, d.JUMP_DYNAMIC,
                       d.JUMP_DYNAMIC_COND, d.RETURN, d.NOP})
#: data sections that hold code addresses without meaning to branch there
_METADATA = frozenset({
    ".altinstructions", ".ibt_endbr_seal", ".orc_unwind_ip", ".parainstructions",
    ".retpoline_sites", ".smp_locks", ".static_call_sites", "_error_injection_whitelist",
    "_kprobe_blacklist", "__bug_table", "__ex_table", "__jump_table", "__mcount_loc",
    ".kcfi_traps"})


def metadata_section(name: str) -> bool:
    """A data section that holds code addresses without meaning to branch there."""
    return ((name.startswith(".discard") and name != ".discard.ibt_endbr_noseal")
            or name.startswith(".debug") or name in _METADATA
            or "__patchable_function_entries" in name)


def check(ctx: Context) -> Iterator[Finding]:
    """objtool's validate_ibt(): code first (instruction order), then data sections."""
    if not ctx.options.ibt:
        return
    prog = ctx.prog
    elf = prog.elf
    for ds in prog.sections:
        rels = elf.relocs.get(ds.index)
        if not rels:
            continue
        last = -1
        for r in rels:
            if r.offset == last:
                continue
            g = prog.containing(ds.index, r.offset)
            if g < 0 or prog.kind[g] in _BRANCHES:
                continue
            last = r.offset
            dest = _dest(ctx, r, code=True)
            if dest < 0 or (prog.func[dest] >= 0 and prog.func[dest] == prog.func[g]):
                continue        # (a function's reference to itself: _THIS_IP_, IRET-to-self)
            yield ctx.finding(g, CODE.id, f"relocation to !ENDBR: {_where(ctx, dest)}")
    for sec in elf.sections:
        if sec.flags & SHF_EXECINSTR or metadata_section(sec.name):
            continue
        for r in elf.relocs.get(sec.index, ()):
            dest = _dest(ctx, r, code=False)
            if dest >= 0:
                yield ctx.finding_at(sec.index, r.offset, DATA.id,
                                     f"data relocation to !ENDBR: {_where(ctx, dest)}")


def _dest(ctx: Context, r: Reloc, code: bool) -> int:
    """The instruction a relocation points at when it is neither an ENDBR nor exempt."""
    prog = ctx.prog
    sym = prog.elf.symbols[r.sym]
    if code and sym.bind == STB_GLOBAL and sym.name.startswith("__SCT__"):
        return -1           # static_call_update() names the trampoline, which needs none
    off = sym.offset + r.addend
    if code and r.type in (R_X86_64_PC32, R_X86_64_PLT32):
        off += 4
    g = prog.gid(sym.shndx, off)
    if g < 0 or prog.kind[g] == d.ENDBR or g in prog.noendbr:
        return -1
    return g


def _where(ctx: Context, g: int) -> str:
    return ctx.symbols.locate(ctx.prog.sec_of[g], ctx.prog.off[g]).text()


_WHY = ("under CET-IBT an indirect call or jump that does not land on ENDBR raises #CP; "
        "the kernel also seals (NOPs out) every ENDBR objtool found unused")
_FIX = ("start the target with ENDBR (SYM_FUNC_START, __cfi/ENDBR macro), or annotate it "
        "ANNOTATE_NOENDBR if its address is taken but never branched to")
_K = ("kernel",)
CODE = register(Rule(
    "relocation-to-non-endbr", "code takes the address of a non-ENDBR target (--ibt)",
    "an instruction other than a branch references code (lea/mov of a function address) "
    "that does not start with ENDBR and is not ANNOTATE_NOENDBR; references within the "
    "same function are allowed", _WHY, _FIX, objtool="relocation to !ENDBR: %s",
    switches="--ibt --link", profiles=_K, family="ibt", check=check))
DATA = register(Rule(
    "data-relocation-to-non-endbr", "data holds the address of a non-ENDBR target (--ibt)",
    "a relocation in a data section (an ops table, a function-pointer initialiser) to code "
    "that does not start with ENDBR; exception tables, alternatives and other metadata "
    "sections are exempt", _WHY, _FIX, objtool="data relocation to !ENDBR: %s",
    switches="--ibt --link", profiles=_K, family="ibt"))
IRET = register(Rule(
    "iret-regs-hint-without-endbr", "exception entry point without ENDBR (--ibt)",
    "an UNWIND_HINT_IRET_REGS at a global symbol (an IDT entry point) on an instruction "
    "that is not ENDBR and not ANNOTATE_NOENDBR", _WHY,
    "begin the entry with ENDBR (the IDT entry macros do)",
    objtool="UNWIND_HINT_IRET_REGS without ENDBR", switches="--ibt --link", profiles=_K,
    family="ibt"))
