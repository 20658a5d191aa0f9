"""Source lines from DWARF ``.debug_line``: which file, line and column an instruction
came from, for assembled sources and for any object built with ``-g`` (C objects,
archive members, ``.ko`` files, linked images).

A row of the line table covers the addresses up to the next row of its sequence,
so an instruction between two rows (a macro's expansion, most of a C statement) gets
the row before it.  In a relocatable object GNU as emits one sequence per section,
each starting with a ``DW_LNE_set_address`` relocated against that section; in a
linked image the addresses are virtual addresses and the section is the one that
holds them.
"""

from __future__ import annotations

import io
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from elftools.elf.elffile import ELFFile

#: pyelftools reads about 100 KB of .debug_line a second: a bigger table (a large
#: shared object's, a vmlinux's) costs more than the report's source lines are worth
MAX_DEBUG_LINE = 1 << 20
R_X86_64_64 = 1


@dataclass
class LineTable:
    """Per section, rows ``(offset, path, line, column)`` sorted by offset; a row whose
    path is empty ends a sequence (no source for the addresses after it)."""

    rows: dict[str, list[tuple[int, str, int, int]]] = field(default_factory=dict)
    _starts: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def lookup(self, section: str, offset: int) -> tuple[str, int, int] | None:
        rows = self.rows.get(section)
        if not rows:
            return None
        starts = self._starts.get(section)
        if starts is None:
            starts = self._starts[section] = [r[0] for r in rows]
        i = bisect_right(starts, offset) - 1
        if i < 0 or not rows[i][1]:
            return None
        return rows[i][1], rows[i][2], rows[i][3]


def read_line_table(data: bytes, source: str | None = None) -> LineTable:
    """The line table of the ELF image ``data``; ``source``: the assembly file it was
    assembled from (its own name in the table is replaced by the path as given)."""
    table = LineTable()
    try:
        elf = ELFFile(io.BytesIO(data))
        dl = elf.get_section_by_name(".debug_line")
        too_big = dl is not None and source is None and dl["sh_size"] > MAX_DEBUG_LINE
        if dl is None or too_big or not elf.has_dwarf_info():
            return table
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=True)
        relocatable = elf["e_type"] == "ET_REL"
        seq_sections = _sequence_sections(elf) if relocatable else []
        exec_sections = [] if relocatable else _exec_sections(elf)
        seq = 0
        rows: dict[str, dict[int, tuple[int, str, int, int]]] = {}
        for cu in dwarf.iter_CUs():
            prog = dwarf.line_program_for_CU(cu)
            if prog is None:
                continue
            names = _file_names(prog, cu, source)
            for entry in prog.get_entries():
                st = entry.state
                if st is None:
                    continue
                if relocatable:
                    sec = seq_sections[seq] if seq < len(seq_sections) else ".text"
                    where: tuple[str, int] | None = (sec, st.address)
                else:
                    where = _in_section(exec_sections, st.address)
                if st.end_sequence:
                    seq += 1
                    if where is not None:
                        rows.setdefault(where[0], {}).setdefault(
                            where[1], (where[1], "", 0, 0))
                    continue
                if where is None:
                    continue
                name = names.get(st.file, source or "")
                # of several rows at one address the last one holds for the instruction;
                # GNU as gives each source line its own row
                keep = rows.setdefault(where[0], {})
                if source is not None and where[1] in keep and keep[where[1]][1]:
                    continue
                keep[where[1]] = (where[1], name, st.line, st.column)
        for sec, by_off in rows.items():
            table.rows[sec] = sorted(by_off.values())
    except Exception:  # noqa: BLE001 - a line table is a bonus; never fail the run for it
        return LineTable()
    return table


def _file_names(prog: Any, cu: Any, source: str | None) -> dict[int, str]:
    """Line program file number -> the path to print: as given for the assembled
    source, else relative to the current directory when the file is found below it."""
    version = prog.header["version"]
    files = prog["file_entry"]
    dirs = [d.decode("utf-8", "replace") for d in prog["include_directory"]]
    top = cu.get_top_DIE()
    comp = top.attributes.get("DW_AT_comp_dir")
    comp_dir = comp.value.decode("utf-8", "replace") if comp is not None else ""
    out: dict[int, str] = {}
    for i, fe in enumerate(files):
        number = i if version >= 5 else i + 1
        name = fe.name.decode("utf-8", "replace")
        if source is not None and os.path.basename(name) == os.path.basename(source):
            out[number] = source
            continue
        d = fe.dir_index
        if version < 5:
            folder = dirs[d - 1] if 0 < d <= len(dirs) else ""
        else:
            folder = dirs[d] if 0 <= d < len(dirs) else ""
        full = os.path.join(comp_dir, folder, name)
        if os.path.isfile(full):
            out[number] = _shown(full)
        else:
            # an assembled source whose table names what is no file (DWARF 5 names
            # read without their relocation): the one file assembled
            out[number] = source if source is not None else os.path.normpath(full)
    return out


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _sequence_sections(elf: ELFFile) -> list[str]:
    """Each sequence's section, from the relocations of its ``DW_LNE_set_address``."""
    rela: Any = elf.get_section_by_name(".rela.debug_line")
    if rela is None:
        return []
    symtab: Any = elf.get_section(rela["sh_link"])
    out: list[tuple[int, str]] = []
    for r in rela.iter_relocations():
        if r["r_info_type"] != R_X86_64_64:
            continue
        sym = symtab.get_symbol(r["r_info_sym"])
        sec = elf.get_section(sym["st_shndx"]) if isinstance(sym["st_shndx"], int) else None
        out.append((r["r_offset"], sec.name if sec is not None else ".text"))
    out.sort()
    return [name for _, name in out]


def _exec_sections(elf: ELFFile) -> list[tuple[int, int, str]]:
    out = []
    for sec in elf.iter_sections():
        if sec["sh_flags"] & 0x4 and sec["sh_addr"]:          # SHF_EXECINSTR
            out.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"], sec.name))
    out.sort()
    return out


def _in_section(sections: list[tuple[int, int, str]], addr: int) -> tuple[str, int] | None:
    i = bisect_right(sections, (addr, 1 << 64, "")) - 1
    if i >= 0 and sections[i][0] <= addr < sections[i][1]:
        return sections[i][2], addr - sections[i][0]
    if i >= 0 and addr == sections[i][1]:
        return sections[i][2], addr - sections[i][0]    # a sequence's end
    return None
