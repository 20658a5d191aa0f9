"""Write ORC sections into a copy of a relocatable object, the way objtool lays them out.

The input bytes are never touched: the output is the input with new section
data appended, a new section header table at the end, and (only when a text
section lacks an STT_SECTION symbol) a rebuilt symbol table whose global
symbols shift by one, with every relocation renumbered.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile

from framevet.load.elf import (
    SHF_ALLOC,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_SECTION,
    ElfObject,
)
from framevet.load.errors import InputError
from framevet.unwind.orc import OrcRow, pack_entry

SHF_INFO_LINK = 0x40
R_X86_64_PC32 = 2
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def orc_object(elf: ElfObject, rows: list[OrcRow]) -> bytes:
    """The bytes of ``elf`` with ``.orc_unwind``, ``.orc_unwind_ip``, ``.rela.orc_unwind_ip``."""
    if not elf.relocatable:
        raise InputError(elf.path, "ORC sections can only be added to a relocatable object")
    for name in (".orc_unwind", ".orc_unwind_ip"):
        if elf.section(name) is not None:
            raise InputError(elf.path, f"file already has {name} section")
    if elf.symtab_index < 0:
        raise InputError(elf.path, "no .symtab")
    raw = bytearray(elf.raw)
    ehdr = struct.unpack_from("<16sHHIQQQIHHHHHH", raw, 0)
    shoff, shentsize, shnum, shstrndx = ehdr[6], ehdr[11], ehdr[12], ehdr[13]
    headers = [list(_SHDR.unpack_from(raw, shoff + i * shentsize)) for i in range(shnum)]
    overrides: dict[int, bytes] = {}

    symtab = elf.sections[elf.symtab_index]
    sym_data = bytearray(symtab.data)
    first_global = symtab.info
    section_sym: dict[int, int] = {}
    for s in elf.symbols:
        if s.type == STT_SECTION and s.bind == STB_LOCAL:
            section_sym.setdefault(s.shndx, s.index)
    needed = sorted({r.section for r in rows} - set(section_sym))
    if needed:
        new_syms = b"".join(_SYM.pack(0, STT_SECTION, 0, sec, 0, 0) for sec in needed)
        shift = len(needed)
        sym_data = bytearray(sym_data[: first_global * _SYM.size] + new_syms
                             + sym_data[first_global * _SYM.size:])
        for i, sec in enumerate(needed):
            section_sym[sec] = first_global + i
        headers[elf.symtab_index][7] = first_global + shift    # sh_info
        overrides[elf.symtab_index] = bytes(sym_data)
        for rsec in elf.sections:
            if rsec.type == SHT_RELA and rsec.link == elf.symtab_index:
                body = bytearray(rsec.data)
                for off in range(0, len(body) - len(body) % 24, 24):
                    r_off, info, addend = _RELA.unpack_from(body, off)
                    sym = info >> 32
                    if sym >= first_global:
                        new_info = ((sym + shift) << 32) | (info & 0xFFFFFFFF)
                        _RELA.pack_into(body, off, r_off, new_info, addend)
                overrides[rsec.index] = bytes(body)
            elif rsec.type == 17 and rsec.link == elf.symtab_index and rsec.info >= first_global:
                headers[rsec.index][7] = rsec.info + shift   # SHT_GROUP signature symbol

    orc = b"".join(pack_entry(r.entry) for r in rows)
    ip = bytes(4 * len(rows))
    rela = b"".join(_RELA.pack(4 * i, (section_sym[r.section] << 32) | R_X86_64_PC32, r.offset)
                    for i, r in enumerate(rows))

    shstr = bytearray(elf.sections[shstrndx].data)
    names = {}
    for n in (".orc_unwind", ".orc_unwind_ip", ".rela.orc_unwind_ip"):
        names[n] = len(shstr)
        shstr += n.encode() + b"\0"
    overrides[shstrndx] = bytes(shstr)

    out = bytearray(raw)
    for idx, replaced in overrides.items():
        out += b"\0" * (_align(len(out), 8) - len(out))
        headers[idx][4] = len(out)   # sh_offset
        headers[idx][5] = len(replaced)  # sh_size
        out += replaced
    new_headers = []
    orc_idx = len(headers)
    for name, data, typ, flags, entsize, align, link, info in (
            (".orc_unwind", orc, SHT_PROGBITS, SHF_ALLOC, 6, 1, 0, 0),
            (".orc_unwind_ip", ip, SHT_PROGBITS, SHF_ALLOC, 4, 1, 0, 0),
            (".rela.orc_unwind_ip", rela, SHT_RELA, SHF_INFO_LINK, 24, 8, elf.symtab_index,
             orc_idx + 1)):
        out += b"\0" * (_align(len(out), 8) - len(out))
        new_headers.append([names[name], typ, flags, 0, len(out), len(data), link, info, align,
                            entsize])
        out += data
    if not rows:
        new_headers = []
    out += b"\0" * (_align(len(out), 8) - len(out))
    new_shoff = len(out)
    for h in headers + new_headers:
        out += _SHDR.pack(*h)
    struct.pack_into("<Q", out, 0x28, new_shoff)
    struct.pack_into("<H", out, 0x3C, len(headers) + len(new_headers))
    return bytes(out)


def write_atomically(path: str, data: bytes, mode_of: str | None = None) -> None:
    """Write via a temporary file in the same directory and rename over ``path``.
    The file gets the mode of ``mode_of`` (the input, for an in-place rewrite), else the
    mode a new file gets (0666 less the umask), not mkstemp's private 0600."""
    d = os.path.dirname(os.path.abspath(path))
    if mode_of is not None:
        mode = stat.S_IMODE(os.stat(mode_of).st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=".framevet-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
