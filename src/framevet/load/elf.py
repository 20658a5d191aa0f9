"""ELF loading: sections, symbols and relocations of one x86-64 ELF image.

pyelftools validates and parses the headers; the symbol and relocation tables,
which hold tens of thousands of fixed-size records in a kernel module, are
unpacked in bulk with :func:`struct.iter_unpack` because going through
pyelftools' per-record containers costs ~100x more and dominates a run.
"""

from __future__ import annotations

import io
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from framevet.load.errors import InputError

EM_X86_64 = 62
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 1, 2, 3, 4
SHT_NOBITS, SHT_REL, SHT_DYNSYM = 8, 9, 11
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0, 0xFFF1, 0xFFF2, 0xFFFF

R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32 = 1, 2, 4
R_X86_64_32, R_X86_64_32S = 10, 11

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_REL = struct.Struct("<QQ")


@dataclass(slots=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    align: int
    data: bytes

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR) and self.type != SHT_NOBITS


@dataclass(slots=True)
class Symbol:
    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    other: int
    shndx: int
    #: offset of the symbol inside its section (value minus sh_addr for linked images)
    offset: int = 0

    @property
    def defined(self) -> bool:
        return self.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON) and self.shndx < 0xFF00


@dataclass(slots=True)
class Reloc:
    offset: int
    type: int
    sym: int
    addend: int


@dataclass
class ElfObject:
    """One ELF image: everything the pipeline needs, read once."""

    path: str
    kind: int
    sections: list[Section]
    symbols: list[Symbol]
    #: relocations per *target* section index, sorted by offset
    relocs: dict[int, list[Reloc]]
    symtab_index: int
    raw: bytes = field(repr=False)
    #: linked images: address of a GOT slot -> the name of the symbol it holds
    #: (see :mod:`framevet.load.plt`)
    got: dict[int, str] = field(default_factory=dict, repr=False)
    #: the entry point (``e_entry``) of a linked image
    entry: int = 0
    _reloc_offsets: dict[int, list[int]] = field(default_factory=dict, repr=False)
    _by_name: dict[str, Section] = field(default_factory=dict, repr=False)
    #: what later stages derive from the sections alone (the DWARF CFI), computed once
    #: and shared with copies that only add symbols (:func:`dataclasses.replace`)
    derived: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def relocatable(self) -> bool:
        return self.kind == ET_REL

    def section(self, name: str) -> Section | None:
        if not self._by_name:
            self._by_name = {}
            for sec in self.sections:
                self._by_name.setdefault(sec.name, sec)
        return self._by_name.get(name)

    def reloc_in(self, sec_index: int, start: int, end: int) -> Reloc | None:
        """The first relocation of section ``sec_index`` whose offset is in [start, end)."""
        rels = self.relocs.get(sec_index)
        if not rels:
            return None
        offs = self._reloc_offsets.get(sec_index)
        if offs is None:
            offs = [r.offset for r in rels]
            self._reloc_offsets[sec_index] = offs
        i = bisect_right(offs, start - 1)
        if i < len(rels) and rels[i].offset < end:
            return rels[i]
        return None

    def reloc_at(self, sec_index: int, offset: int) -> Reloc | None:
        r = self.reloc_in(sec_index, offset, offset + 1)
        return r if r is not None and r.offset == offset else None

    def symbols_by_section(self) -> dict[int, list[Symbol]]:
        out: dict[int, list[Symbol]] = {}
        for s in self.symbols:
            if s.defined and s.type != STT_SECTION and s.type != STT_FILE:
                out.setdefault(s.shndx, []).append(s)
        for lst in out.values():
            lst.sort(key=lambda s: (s.offset, s.index))
        return out

    def section_symbol(self, sec_index: int) -> Symbol | None:
        for s in self.symbols:
            if s.type == STT_SECTION and s.shndx == sec_index:
                return s
        return None


def _cstr(table: bytes, off: int) -> str:
    end = table.find(b"\0", off)
    if end < 0:
        end = len(table)
    return table[off:end].decode("utf-8", "replace")


def parse_elf(data: bytes, path: str) -> ElfObject:
    """Parse ``data`` as an x86-64 ELF image; raise :class:`InputError` on anything else."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise InputError(path, "not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise InputError(path, "not a 64-bit little-endian ELF file")
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf.header["e_machine"]
        if machine != "EM_X86_64":
            raise InputError(path, f"ELF machine is {machine}, not x86-64")
        kind = {"ET_REL": ET_REL, "ET_EXEC": ET_EXEC, "ET_DYN": ET_DYN}.get(elf.header["e_type"])
        if kind is None:
            raise InputError(path, f"unsupported ELF type {elf.header['e_type']}")
        sections = _read_sections(elf, data, path)
        entry = int(elf.header["e_entry"])
    except InputError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, OSError, OverflowError,
            TypeError, AttributeError, AssertionError, RecursionError) as exc:
        # pyelftools meets hostile headers with whatever its parser raises
        raise InputError(path, f"malformed ELF: {type(exc).__name__}: {exc}") from None

    symtab_index = next((s.index for s in sections if s.type == SHT_SYMTAB), -1)
    if symtab_index < 0:
        symtab_index = next((s.index for s in sections if s.type == SHT_DYNSYM), -1)
    symbols = _read_symbols(sections, symtab_index, kind, path) if symtab_index >= 0 else []
    relocs = _read_relocs(sections, symtab_index, len(symbols), path) if kind == ET_REL else {}
    return ElfObject(path, kind, sections, symbols, relocs, symtab_index, data, entry=entry)


def _read_sections(elf: ELFFile, data: bytes, path: str) -> list[Section]:
    out: list[Section] = []
    for i, s in enumerate(elf.iter_sections()):
        h = s.header
        typ = h["sh_type"]
        typ_num = typ if isinstance(typ, int) else _SHT_NUM.get(typ, -1)
        off, size = h["sh_offset"], h["sh_size"]
        if typ_num == SHT_NOBITS or typ_num == 0:
            body = b""
        else:
            if off + size > len(data):
                raise InputError(path, f"section {s.name or i} extends past the end of the file "
                                       f"(truncated?)")
            body = data[off:off + size]
        out.append(Section(i, s.name, typ_num, h["sh_flags"], h["sh_addr"], off, size,
                           h["sh_link"], h["sh_info"], h["sh_entsize"], h["sh_addralign"], body))
    return out


_SHT_NUM = {
    "SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
    "SHT_HASH": 5, "SHT_DYNAMIC": 6, "SHT_NOTE": 7, "SHT_NOBITS": 8, "SHT_REL": 9,
    "SHT_DYNSYM": 11, "SHT_INIT_ARRAY": 14, "SHT_FINI_ARRAY": 15, "SHT_PREINIT_ARRAY": 16,
    "SHT_GROUP": 17, "SHT_SYMTAB_SHNDX": 18, "SHT_GNU_ATTRIBUTES": 0x6FFFFFF5,
    "SHT_GNU_HASH": 0x6FFFFFF6, "SHT_GNU_verdef": 0x6FFFFFFD, "SHT_GNU_verneed": 0x6FFFFFFE,
    "SHT_GNU_versym": 0x6FFFFFFF, "SHT_X86_64_UNWIND": 0x70000001,
    "SHT_RELR": 19, "SHT_LLVM_ADDRSIG": 0x6FFF4C03,
}


def _read_symbols(sections: list[Section], idx: int, kind: int, path: str) -> list[Symbol]:
    symtab = sections[idx]
    if not 0 <= symtab.link < len(sections):
        raise InputError(path, "symbol table has no string table")
    strtab = sections[symtab.link].data
    body = symtab.data[: len(symtab.data) - len(symtab.data) % _SYM.size]
    xindex = next((s.data for s in sections if s.type == 18 and s.link == idx), b"")
    out: list[Symbol] = []
    nsec = len(sections)
    for i, (name, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(body)):
        if shndx == SHN_XINDEX and xindex:
            shndx = struct.unpack_from("<I", xindex, 4 * i)[0]
        sym = Symbol(i, _cstr(strtab, name) if name else "", value, size, info & 0xF, info >> 4,
                     other, shndx)
        if kind != ET_REL and 0 < shndx < nsec:
            sym.offset = value - sections[shndx].addr
        else:
            sym.offset = value
        out.append(sym)
    return out


def _read_relocs(sections: list[Section], symtab: int, nsyms: int,
                 path: str) -> dict[int, list[Reloc]]:
    out: dict[int, list[Reloc]] = {}
    for sec in sections:
        if sec.type not in (SHT_RELA, SHT_REL) or sec.link != symtab:
            continue
        if not 0 < sec.info < len(sections):
            continue
        rec = _RELA if sec.type == SHT_RELA else _REL
        body = sec.data[: len(sec.data) - len(sec.data) % rec.size]
        lst = out.setdefault(sec.info, [])
        if rec is _RELA:
            for off, info, addend in _RELA.iter_unpack(body):
                sym = info >> 32
                if sym >= nsyms:
                    raise InputError(path, f"relocation in {sec.name} names symbol {sym}, "
                                           f"past the end of the symbol table")
                lst.append(Reloc(off, info & 0xFFFFFFFF, sym, addend))
        else:
            for off, info in _REL.iter_unpack(body):
                lst.append(Reloc(off, info & 0xFFFFFFFF, info >> 32, 0))
    for lst in out.values():
        lst.sort(key=lambda r: r.offset)
    return out
