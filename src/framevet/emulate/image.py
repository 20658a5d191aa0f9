"""Lay code out in the emulated address space: link objects, place raw stubs.

Relocatable objects are linked at a base address: every allocated section gets
its own pages (so permissions are per section), relocations are applied
(R_X86_64_64/PC32/PLT32/32/32S/PC64/GOTPCREL[X]), and undefined symbols get
either a *code slot* (a ``ret`` the machine intercepts to clobber caller-saved
registers) when they are branched to, or a *data slot* (64 zero bytes, or a
value the caller supplies) otherwise.  Linked images (ET_EXEC/ET_DYN) are
mapped at their link addresses without applying dynamic relocations.

A raw stub is code bytes at a given base; ``--symbol name=addr`` declares call
targets, which become code slots at exactly that address unless an object
passed with ``link`` defines the name, in which case the object's section is
placed so the symbol lands there.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from iced_x86 import Decoder, FlowControl

from framevet.load.elf import (
    ET_REL,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from framevet.load.errors import InputError
from framevet.load.object import LoadedObject

PAGE = 0x1000
R_NONE, R_64, R_PC32, R_GOT32, R_PLT32 = 0, 1, 2, 3, 4
R_GOTPCREL, R_32, R_32S, R_PC64, R_GOTPCRELX, R_REX_GOTPCRELX = 9, 10, 11, 24, 41, 42
PROT_R, PROT_W, PROT_X = 1, 2, 4
OBJECT_BASE = 0x40_0000
SLOT = 16                 # bytes per external code slot: ret + int3 padding
DATA_SLOT = 64


def page_down(a: int) -> int:
    return a & ~(PAGE - 1)


def page_up(a: int) -> int:
    return (a + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Chunk:
    addr: int
    data: bytearray
    perms: int
    label: str


@dataclass
class MappedSection:
    index: int
    name: str
    addr: int
    size: int
    executable: bool
    writable: bool


@dataclass
class MappedObject:
    """One object (or raw stub) as placed in memory."""

    elf: ElfObject
    display: str
    loaded: LoadedObject | None
    sections: dict[int, MappedSection] = field(default_factory=dict)
    #: (address, size, name) of named symbols, sorted by address (functions first at ties)
    symtab: list[tuple[int, int, str]] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list, repr=False)

    def symbol_at(self, addr: int, sec: MappedSection) -> tuple[str, int]:
        """The symbol containing ``addr`` (else the nearest one before it in ``sec``)."""
        if len(self._starts) != len(self.symtab):
            self._starts = [a for a, _s, _n in self.symtab]
        i = bisect_right(self._starts, addr) - 1
        best: tuple[str, int] | None = None
        while i >= 0:
            a, size, n = self.symtab[i]
            if a < sec.addr:
                break
            if addr < a + size:
                return n, addr - a
            if best is None:
                best = (n, addr - a)
            i -= 1
        return best or ("", 0)

    def symbol_addr(self, name: str) -> int | None:
        for a, _s, n in self.symtab:
            if n == name:
                return a
        return None


@dataclass
class Location:
    obj: MappedObject
    section: MappedSection
    offset: int          # in section
    symbol: str
    sym_offset: int

    def text(self) -> str:
        if self.symbol:
            return f"{self.symbol}+0x{self.sym_offset:x}"
        return f"{self.section.name}+0x{self.offset:x}"


@dataclass
class Image:
    objects: list[MappedObject] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    #: address of each external code slot -> symbol name ("<indirect>" for the catch-all)
    extern_at: dict[int, str] = field(default_factory=dict)
    #: undefined data symbol -> address of its slot
    data_slots: dict[str, int] = field(default_factory=dict)
    indirect_slot: int = 0
    unsupported_relocs: list[tuple[str, int, int]] = field(default_factory=list)
    _code: list[tuple[int, int, MappedObject, MappedSection]] = field(default_factory=list)
    _code_starts: list[int] = field(default_factory=list)

    def finish(self) -> None:
        code = [(s.addr, s.addr + s.size, o, s) for o in self.objects
                for s in o.sections.values() if s.executable]
        code.sort(key=lambda t: t[0])
        self._code = code
        self._code_starts = [c[0] for c in code]

    def code_section(self, addr: int) -> tuple[MappedObject, MappedSection] | None:
        i = bisect_right(self._code_starts, addr) - 1
        if i >= 0:
            lo, hi, o, s = self._code[i]
            if lo <= addr < hi:
                return o, s
        return None

    def is_code(self, addr: int) -> bool:
        return addr in self.extern_at or self.code_section(addr) is not None

    def locate(self, addr: int) -> Location | None:
        hit = self.code_section(addr)
        if hit is None:
            return None
        obj, sec = hit
        name, soff = obj.symbol_at(addr, sec)
        return Location(obj, sec, addr - sec.addr, name, soff)

    def describe(self, addr: int) -> str:
        """``symbol+0xoff`` (or the external slot's name) for an address."""
        if addr in self.extern_at:
            return self.extern_at[addr]
        loc = self.locate(addr)
        if loc is not None:
            return loc.text()
        for name, a in self.data_slots.items():
            if a <= addr < a + DATA_SLOT:
                return f"{name}+0x{addr - a:x}" if addr != a else name
        return f"0x{addr:x}"

    def function_addr(self, name: str) -> int | None:
        for o in self.objects:
            a = o.symbol_addr(name)
            if a is not None:
                return a
        return None


def _perms(sec: Section) -> int:
    p = PROT_R
    if sec.flags & SHF_WRITE:
        p |= PROT_W
    if sec.flags & SHF_EXECINSTR:
        p |= PROT_X
    return p


def _is_branch_site(data: bytes | bytearray, off: int) -> bool:
    if off >= 1 and data[off - 1] in (0xE8, 0xE9):
        return True
    return off >= 2 and data[off - 2] == 0x0F and 0x80 <= data[off - 1] <= 0x8F


class Linker:
    """Places objects and slots; :meth:`image` returns the finished layout."""

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        self.img = Image()
        self.values = dict(values or {})
        self.globals: dict[str, int] = {}
        self.pending: list[tuple[MappedObject, dict[int, bytearray]]] = []
        self.code_slots: dict[str, int] = {}
        self.got: dict[int, int] = {}
        self.cursor = OBJECT_BASE
        self._slot_page: Chunk | None = None
        self._data_page: Chunk | None = None

    # -- placement -----------------------------------------------------------
    def place_object(self, lo: LoadedObject, pins: Mapping[str, int] | None = None) -> None:
        elf = lo.elf
        mo = MappedObject(elf, lo.display, lo)
        bodies: dict[int, bytearray] = {}
        if elf.kind != ET_REL:
            self._place_linked(mo, bodies)
        else:
            pinned: dict[int, int] = {}
            for s in elf.symbols:
                if pins and s.name in pins and s.defined and s.type != STT_SECTION:
                    pinned[s.shndx] = pins[s.name] - s.offset
            for sec in elf.sections:
                if not sec.flags & SHF_ALLOC or sec.size == 0:
                    continue
                if sec.index in pinned:
                    addr = pinned[sec.index]
                else:
                    align = max(sec.align, 1)
                    addr = (page_up(self.cursor) + align - 1) // align * align
                    self.cursor = page_up(addr + sec.size) + PAGE
                self._add_section(mo, sec, addr, bodies)
        for s in elf.symbols:
            if s.name and s.defined and s.type not in (STT_SECTION, STT_FILE) \
                    and s.shndx in mo.sections:
                a = mo.sections[s.shndx].addr + s.offset
                mo.symtab.append((a, s.size, s.name))
                if s.bind != STB_LOCAL:
                    self.globals.setdefault(s.name, a)
        mo.symtab.sort(key=lambda t: (t[0], -t[1]))
        self.img.objects.append(mo)
        self.pending.append((mo, bodies))

    def _place_linked(self, mo: MappedObject, bodies: dict[int, bytearray]) -> None:
        bias = OBJECT_BASE if mo.elf.kind == 3 and min(
            (s.addr for s in mo.elf.sections if s.flags & SHF_ALLOC), default=0) < PAGE else 0
        for sec in mo.elf.sections:
            if sec.flags & SHF_ALLOC and sec.size:
                self._add_section(mo, sec, sec.addr + bias, bodies)
                self.cursor = max(self.cursor, page_up(sec.addr + bias + sec.size) + PAGE)

    def _add_section(self, mo: MappedObject, sec: Section, addr: int,
                     bodies: dict[int, bytearray]) -> None:
        body = bytearray(sec.size) if sec.type == SHT_NOBITS else bytearray(sec.data)
        bodies[sec.index] = body
        mo.sections[sec.index] = MappedSection(sec.index, sec.name, addr, sec.size,
                                               bool(sec.flags & SHF_EXECINSTR),
                                               bool(sec.flags & SHF_WRITE))
        self.img.chunks.append(Chunk(addr, body, _perms(sec), f"{mo.display}:{sec.name}"))

    def code_slot(self, name: str, addr: int | None = None) -> int:
        """The address of the external code slot for ``name`` (created on first use)."""
        if name in self.code_slots:
            return self.code_slots[name]
        if addr is None:
            if self._slot_page is None or len(self._slot_page.data) + SLOT > PAGE:
                base = page_up(self.cursor)
                self.cursor = base + 2 * PAGE
                self._slot_page = Chunk(base, bytearray(), PROT_R | PROT_X, "external calls")
                self.img.chunks.append(self._slot_page)
            addr = self._slot_page.addr + len(self._slot_page.data)
            self._slot_page.data += b"\xc3" + b"\xcc" * (SLOT - 1)
        else:
            self.img.chunks.append(Chunk(addr, bytearray(b"\xc3"), PROT_R | PROT_X,
                                         f"external call {name}"))
        self.code_slots[name] = addr
        self.img.extern_at[addr] = name
        return addr

    def data_slot(self, name: str, size: int = DATA_SLOT) -> int:
        if name in self.img.data_slots:
            return self.img.data_slots[name]
        size = max(size, DATA_SLOT)
        if self._data_page is None or len(self._data_page.data) + size > PAGE:
            base = page_up(self.cursor)
            self.cursor = base + page_up(size) + PAGE
            self._data_page = Chunk(base, bytearray(), PROT_R | PROT_W, "external data")
            self.img.chunks.append(self._data_page)
        addr = self._data_page.addr + len(self._data_page.data)
        body = bytearray(size)
        if name in self.values:
            body[:8] = (self.values[name] & (1 << 64) - 1).to_bytes(8, "little")
        self._data_page.data += body
        self.img.data_slots[name] = addr
        return addr

    def _got_entry(self, target: int) -> int:
        if target not in self.got:
            self.got[target] = self.data_slot(f"<got:{target:#x}>", 8)
            slot = self.got[target]
            self._write_data(slot, target.to_bytes(8, "little"))
        return self.got[target]

    def _write_data(self, addr: int, data: bytes) -> None:
        page = self._data_page
        assert page is not None
        off = addr - page.addr
        page.data[off:off + len(data)] = data

    # -- relocation ----------------------------------------------------------
    def _sym_addr(self, mo: MappedObject, sym: Symbol, branch: bool) -> int:
        if sym.type == STT_SECTION:
            sec = mo.sections.get(sym.shndx)
            return sec.addr if sec else 0
        if sym.shndx == SHN_ABS:
            return sym.value
        if sym.defined and sym.shndx in mo.sections:
            return mo.sections[sym.shndx].addr + sym.offset
        if sym.name in self.globals:
            return self.globals[sym.name]
        if sym.shndx == SHN_COMMON:
            return self.data_slot(sym.name, sym.size)
        return self.code_slot(sym.name) if branch else self.data_slot(sym.name)

    def apply_relocations(self) -> None:
        for mo, bodies in self.pending:
            elf = mo.elf
            if elf.kind != ET_REL:
                continue
            for idx, body in bodies.items():
                sec = mo.sections[idx]
                for r in elf.relocs.get(idx, ()):
                    self._apply(mo, sec, body, r.offset, r.type, elf.symbols[r.sym], r.addend)
        self.pending = []

    def _apply(self, mo: MappedObject, sec: MappedSection, body: bytearray, off: int,
               typ: int, sym: Symbol, addend: int) -> None:
        if typ == R_NONE:
            return
        p = sec.addr + off
        branch = typ in (R_PC32, R_PLT32) and _is_branch_site(body, off)
        s = self._sym_addr(mo, sym, branch)
        if typ == R_64:
            struct.pack_into("<Q", body, off, (s + addend) & (1 << 64) - 1)
        elif typ == R_PC64:
            struct.pack_into("<Q", body, off, (s + addend - p) & (1 << 64) - 1)
        elif typ in (R_PC32, R_PLT32, R_GOTPCREL, R_GOTPCRELX, R_REX_GOTPCRELX):
            if typ in (R_GOTPCREL, R_GOTPCRELX, R_REX_GOTPCRELX):
                s = self._got_entry(s)
            v = s + addend - p
            if not -(1 << 31) <= v < (1 << 31):
                raise InputError(mo.display, f"{sec.name}+0x{off:x}: relocation against "
                                             f"{sym.name or 'section'} overflows 32 bits when "
                                             f"linked for emulation")
            struct.pack_into("<i", body, off, v)
        elif typ in (R_32, R_32S):
            v = s + addend
            ok = 0 <= v < (1 << 32) if typ == R_32 else -(1 << 31) <= v < (1 << 31)
            if not ok:
                raise InputError(mo.display, f"{sec.name}+0x{off:x}: absolute 32-bit relocation "
                                             f"against {sym.name or 'section'} does not fit")
            struct.pack_into("<I" if typ == R_32 else "<i", body, off, v)
        else:
            self.img.unsupported_relocs.append((sec.name, off, typ))

    def image(self) -> Image:
        self.apply_relocations()
        if not self.img.indirect_slot:
            self.img.indirect_slot = self.code_slot("<indirect>")
        spans = sorted((c.addr, c.addr + len(c.data), c.label) for c in self.img.chunks if c.data)
        for (a0, a1, l0), (b0, _b1, l1) in zip(spans, spans[1:], strict=False):
            if b0 < a1:
                raise InputError(l1, f"placed at 0x{b0:x}, overlapping {l0} "
                                     f"(0x{a0:x}-0x{a1:x}): check --base and --symbol")
        self.img.finish()
        return self.img


def raw_elf(code: bytes, entries: Mapping[str, int], path: str, base: int = 0,
            symbols: Mapping[str, int] | None = None) -> ElfObject:
    """A synthetic relocatable ELF holding ``code`` as ``.text`` with one FUNC per entry,
    so framevet's CFA table can be computed for a raw stub.  Every rel32 call/jmp
    leaving the stub gets an R_X86_64_PLT32 relocation against an undefined symbol
    (the declared name at its target, else ``0xADDR``), as an assembler would emit."""
    null = Section(0, "", 0, 0, 0, 0, 0, 0, 0, 0, 0, b"")
    text = Section(1, ".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 0, 0, len(code),
                   0, 0, 0, 16, bytes(code))
    symbols_out = [Symbol(0, "", 0, 0, 0, 0, 0, 0)]
    starts = sorted(entries.values()) + [len(code)]
    for name, off in entries.items():
        end = next(s for s in starts if s > off) if off < len(code) else len(code)
        symbols_out.append(Symbol(len(symbols_out), name, off, end - off, STT_FUNC, 1, 0, 1,
                                  off))
    by_addr = {a: n for n, a in (symbols or {}).items()}
    relocs: list[Reloc] = []
    undef: dict[str, int] = {}
    for ins in Decoder(64, code, ip=base):
        if ins.flow_control not in (FlowControl.CALL, FlowControl.UNCONDITIONAL_BRANCH,
                                    FlowControl.CONDITIONAL_BRANCH) or ins.len < 5:
            continue
        t = ins.near_branch_target
        if base <= t < base + len(code):
            continue
        name = by_addr.get(t, f"0x{t:x}")
        if name not in undef:
            undef[name] = len(symbols_out)
            symbols_out.append(Symbol(len(symbols_out), name, 0, 0, 0, 1, 0, 0, 0))
        relocs.append(Reloc(ins.ip - base + ins.len - 4, R_PLT32, undef[name], -4))
    return ElfObject(path, ET_REL, [null, text], symbols_out, {1: relocs} if relocs else {},
                     -1, b"")


def link(objects: Sequence[LoadedObject], values: Mapping[str, int] | None = None) -> Image:
    """Link ``objects`` at :data:`OBJECT_BASE` for emulation."""
    lk = Linker(values)
    for lo in objects:
        lk.place_object(lo)
    return lk.image()


def place_raw(code: bytes, base: int, entries: Mapping[str, int], path: str,
              symbols: Mapping[str, int] | None = None, extra: Sequence[LoadedObject] = (),
              values: Mapping[str, int] | None = None) -> Image:
    """Place a raw stub at ``base`` with declared ``symbols`` and ``extra`` objects linked."""
    if not code:
        raise InputError(path, "raw stub is empty")
    if base < 0 or base + len(code) > 1 << 64:
        raise InputError(path, f"base 0x{base:x} out of range")
    lk = Linker(values)
    lk.cursor = page_up(base + len(code)) + PAGE
    elf = raw_elf(code, entries, path, base, symbols)
    stub = LoadedObject(elf, path)
    mo = MappedObject(elf, path, stub)
    lk._add_section(mo, elf.sections[1], base, {})
    # the rest of the stub's last page traps: running off the end is caught
    mo.symtab = sorted(((base + off, elf.symbols[i + 1].size, n)
                        for i, (n, off) in enumerate(entries.items())),
                       key=lambda t: (t[0], -t[1]))
    lk.img.objects.append(mo)
    pins = dict(symbols or {})
    for lo in extra:
        lk.place_object(lo, pins)
    for name, addr in pins.items():
        if name in lk.globals:
            if lk.globals[name] != addr:
                raise InputError(path, f"--symbol {name}=0x{addr:x}: {name} is defined by a "
                                       f"linked object at 0x{lk.globals[name]:x}")
            continue
        if base <= addr < base + len(code):
            raise InputError(path, f"--symbol {name}=0x{addr:x} lies inside the stub")
        lk.code_slot(name, addr)
    return lk.image()
