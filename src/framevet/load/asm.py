"""Assembly source input: assemble with the system compiler, keep the line table."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from typing import Any

from elftools.elf.elffile import ELFFile

from framevet.load.elf import parse_elf
from framevet.load.errors import InputError
from framevet.load.object import LoadedObject


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise InputError("gcc", "no C compiler found to assemble the source (set CC)")
    return cc


def assemble(path: str, cflags: list[str]) -> LoadedObject:
    if not os.path.isfile(path):
        raise InputError(path, "no such file")
    with tempfile.TemporaryDirectory(prefix="framevet-") as tmp:
        out = os.path.join(tmp, "out.o")
        cmd = [compiler(), "-c", "-g", *cflags, "-o", out, path]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise InputError(path, "assembler timed out") from None
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "rror" in ln),
                         proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "")
            raise InputError(path, f"assembly failed: {first}")
        with open(out, "rb") as fh:
            data = fh.read()
    obj = LoadedObject(parse_elf(data, path), path, {})
    obj.lines = line_table(data, path)
    return obj


def line_table(data: bytes, path: str) -> dict[tuple[str, int], tuple[str, int]]:
    """(section, offset) -> (file, line) from .debug_line of a freshly assembled object.

    GNU as emits one sequence per section, each starting with a relocated
    DW_LNE_set_address; the relocation's section symbol tells the section.
    """
    table: dict[tuple[str, int], tuple[str, int]] = {}
    try:
        elf = ELFFile(io.BytesIO(data))
        if not elf.has_dwarf_info():
            return table
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=True)
        seq_sections = _sequence_sections(elf)
        for cu in dwarf.iter_CUs():
            prog = dwarf.line_program_for_CU(cu)
            if prog is None:
                continue
            files = prog["file_entry"]
            seq = 0
            for entry in prog.get_entries():
                st = entry.state
                if st is None:
                    continue
                sec = seq_sections[seq] if seq < len(seq_sections) else ".text"
                if st.end_sequence:
                    seq += 1
                    continue
                fidx = st.file - 1 if prog.header["version"] < 5 else st.file
                fname = path
                if 0 <= fidx < len(files):
                    fname = files[fidx].name.decode("utf-8", "replace")
                    if os.path.basename(fname) == os.path.basename(path):
                        fname = path
                table.setdefault((sec, st.address), (fname, st.line))
    except Exception:  # noqa: BLE001 - a line table is a bonus; never fail the run for it
        return {}
    return table


def _sequence_sections(elf: ELFFile) -> list[str]:
    rela: Any = elf.get_section_by_name(".rela.debug_line")
    if rela is None:
        return []
    symtab: Any = elf.get_section(rela["sh_link"])
    out: list[tuple[int, str]] = []
    for r in rela.iter_relocations():
        if r["r_info_type"] != 1:  # R_X86_64_64: DW_LNE_set_address
            continue
        sym = symtab.get_symbol(r["r_info_sym"])
        sec = elf.get_section(sym["st_shndx"]) if isinstance(sym["st_shndx"], int) else None
        out.append((r["r_offset"], sec.name if sec is not None else ".text"))
    out.sort()
    return [name for _, name in out]
