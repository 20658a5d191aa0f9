"""The object's own DWARF CFI (``.eh_frame``, ``.debug_frame``) by run-time address.

:func:`framevet.unwind.dwarf.read_cfi` decodes every FDE into section-relative
:class:`~framevet.unwind.cfatable.CfaRule` rows; this adapter moves them to the
addresses emulation linked each section at and converts them to
:class:`~framevet.emulate.unwind.Rule`, the same terms framevet's own table
is converted to.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from framevet.emulate.image import MappedObject
from framevet.emulate.unwindrule import Rule, from_cfarule
from framevet.unwind.dwarf import read_cfi


@dataclass
class DwarfTable:
    """FDE rows by run-time address: ``rule_at(addr)``, None where no FDE covers it."""

    name: str
    fdes: list[tuple[int, int, list[int], list[Rule]]]
    _starts: list[int]

    def rule_at(self, addr: int) -> Rule | None:
        i = bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        lo, hi, pcs, rules = self.fdes[i]
        if not lo <= addr < hi:
            return None
        j = bisect_right(pcs, addr) - 1
        return rules[j] if j >= 0 else None


def dwarf_table(mo: MappedObject, notes: list[str] | None = None) -> DwarfTable | None:
    """The DWARF unwind table of ``mo`` (None when it has no CFI)."""
    info = read_cfi(mo.elf)
    if notes is not None:
        notes.extend(f"{mo.display}: {e}" for e in info.errors)
    fdes: list[tuple[int, int, list[int], list[Rule]]] = []
    kinds: set[str] = set()
    for f in info.fdes:
        sec = mo.sections.get(f.section)
        if sec is None or not f.rows:
            continue
        kinds.add(f.frame_section)
        pcs = [sec.addr + off for off, _r in f.rows]
        rules = [from_cfarule(r, f.ra_reg) for _o, r in f.rows]
        fdes.append((sec.addr + f.start, sec.addr + f.end, pcs, rules))
    if not fdes:
        return None
    fdes.sort(key=lambda t: t[0])
    label = "DWARF CFI (" + "+".join(sorted(kinds)) + ")"
    return DwarfTable(label, fdes, [t[0] for t in fdes])
