"""What ``--noinstr`` needs besides the walk: noinstr sections and paravirt call targets.

objtool 6.1 (with ``--link``) validates calls out of ``.noinstr.text`` and
``.entry.text``: the callee must live in one of those sections too, be a
``__ubsan_handle_*`` report, or sit between ``instrumentation_begin()`` and
``instrumentation_end()``.  An indirect call through ``pv_ops[i]`` is accepted
when every function the object stores into that slot (in the ``pv_ops`` table
itself and in the Xen tables) is noinstr; every look at a slot not yet found
clean reports each instrumentable target (``pv_ops[%d]: %s``).
"""

from __future__ import annotations

from framevet.cfg.program import Program
from framevet.load.elf import STT_SECTION, Symbol

NOINSTR_SECTIONS = frozenset({".noinstr.text", ".entry.text"})
PV_TABLES = ("pv_ops", "xen_cpu_ops", "xen_irq_ops", "xen_mmu_ops")
#: patched into native code at boot, so never a real target
PV_PATCHED = frozenset({"_paravirt_nop", "_paravirt_ident_64"})


def is_noinstr_section(prog: Program, shndx: int) -> bool:
    return 0 < shndx < len(prog.elf.sections) and \
        prog.elf.sections[shndx].name in NOINSTR_SECTIONS


def _c_index(addend: int) -> int:
    """``(int)(addend / sizeof(void *))`` in C: the s64 addend is divided as unsigned."""
    v = ((addend & (2**64 - 1)) // 8) & 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


class PvOps:
    """objtool's file->pv_ops: per slot, its targets and whether it was found clean."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        elf = prog.elf
        by_name: dict[str, Symbol] = {}
        for s in elf.symbols:
            if s.type != STT_SECTION:
                by_name.setdefault(s.name, s)
        self.present = "pv_ops" in by_name
        pv = by_name.get("pv_ops")
        self.slots: list[list[Symbol]] = [[] for _ in range(pv.size // 8)] if pv else []
        self.clean: dict[int, bool] = {}
        if not self.present:
            return
        added: set[int] = set()
        for table in PV_TABLES:
            sym = by_name.get(table)
            if sym is None or not sym.defined:
                continue
            for r in elf.relocs.get(sym.shndx, ()):
                if not sym.offset <= r.offset < sym.offset + sym.size:
                    continue
                func: Symbol | None = elf.symbols[r.sym]
                if func is not None and func.type == STT_SECTION:
                    func = _symbol_at(prog, func.shndx, r.addend)
                if func is None or func.name in PV_PATCHED or func.index in added:
                    continue
                idx = (r.offset - sym.offset) // 8
                if 0 <= idx < len(self.slots):
                    added.add(func.index)
                    self.slots[idx].insert(0, func)     # (list_add: newest first)

    def reloc_sym(self, g: int) -> tuple[str, int] | None:
        prog = self.prog
        r = prog.elf.reloc_in(prog.sec_of[g], prog.off[g], prog.off[g] + prog.length[g])
        if r is None:
            return None
        return prog.elf.symbols[r.sym].name, r.addend

    def call_ok(self, g: int) -> tuple[bool, list[str]]:
        """objtool's pv_call_dest(): is the indirect call at ``g`` a clean pv_ops call,
        and the ``pv_ops[%d]: %s`` lines objtool prints on the way."""
        rs = self.reloc_sym(g)
        if rs is None or rs[0] != "pv_ops":
            return False, []
        idx = (rs[1] + 4) // 8
        if self.clean.get(idx):
            return True, []
        lines: list[str] = []
        ok = True
        for t in self.slots[idx] if 0 <= idx < len(self.slots) else ():
            if not is_noinstr_section(self.prog, t.shndx):
                lines.append(f"pv_ops[{idx}]: {t.name}")
                ok = False
        self.clean[idx] = ok
        return ok, lines

    def name(self, g: int, dest: Symbol | None) -> str:
        """objtool's call_dest_name()."""
        if dest is not None:
            return dest.name
        rs = self.reloc_sym(g)
        if rs is not None and rs[0] == "pv_ops":
            return f"pv_ops[{_c_index(rs[1])}]"
        return "{dynamic}"


def _symbol_at(prog: Program, shndx: int, off: int) -> Symbol | None:
    for s in prog.elf.symbols:
        if s.shndx == shndx and s.offset == off and s.type != STT_SECTION and s.defined:
            return s
    return None


def call_ok(prog: Program, pv: PvOps, g: int, dest: Symbol | None) -> tuple[bool, list[str]]:
    """objtool's noinstr_call_dest()."""
    if dest is None:
        return pv.call_ok(g) if pv.present else (False, [])
    if dest.defined and is_noinstr_section(prog, dest.shndx):
        return True, []
    return dest.name.startswith("__ubsan_handle_"), []
