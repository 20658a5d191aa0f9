"""Names for the PLT stubs and GOT slots of a linked image.

A call to a shared library's function goes through a stub in ``.plt``,
``.plt.sec`` or ``.plt.got`` that jumps through a GOT slot, and the dynamic
linker fills that slot as the slot's dynamic relocation (``R_X86_64_JUMP_SLOT``
in ``.rela.plt``, ``R_X86_64_GLOB_DAT`` in ``.rela.dyn``) says.  No symbol names
the stubs: the name is found, as binutils finds it, by decoding each stub's
``jmp *slot(%rip)`` and looking the slot up among those relocations.  A stub is
then named ``NAME@plt`` and the slot ``NAME@got`` (``call *slot(%rip)``,
``-fno-plt`` code and ``_start``'s call of ``__libc_start_main``).
"""

from __future__ import annotations

import struct
from dataclasses import replace

import iced_x86

from framevet.load.elf import (
    SHT_DYNSYM,
    SHT_RELA,
    STB_LOCAL,
    STT_FUNC,
    ElfObject,
    Section,
    Symbol,
)

R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_IRELATIVE = 6, 7, 37
R_X86_64_64 = 1
_RELA = struct.Struct("<QQq")
_DYNSYM_NAME = struct.Struct("<I")
_SYM_SIZE = 24


def with_plt_symbols(elf: ElfObject) -> ElfObject:
    """A linked image with its GOT slots named and a ``NAME@plt`` function symbol per
    PLT stub (a relocatable object is returned as it is)."""
    if elf.relocatable:
        return elf
    got = got_slots(elf.sections)
    if not got:
        return elf
    return replace(elf, symbols=elf.symbols + plt_symbols(elf.sections, len(elf.symbols), got),
                   got=got, _by_name={})


def got_slots(sections: list[Section]) -> dict[int, str]:
    """Address of each GOT slot a dynamic relocation fills -> the symbol's name
    (``*ABS*+0xADDR`` for an IFUNC resolved in the image itself)."""
    out: dict[int, str] = {}
    for sec in sections:
        if sec.type != SHT_RELA or not 0 <= sec.link < len(sections):
            continue
        dynsym = sections[sec.link]
        if dynsym.type != SHT_DYNSYM or not 0 <= dynsym.link < len(sections):
            continue
        strtab = sections[dynsym.link].data
        body = sec.data[: len(sec.data) - len(sec.data) % _RELA.size]
        for where, info, addend in _RELA.iter_unpack(body):
            typ, index = info & 0xFFFFFFFF, info >> 32
            if typ == R_X86_64_IRELATIVE:
                out.setdefault(where, f"*ABS*+0x{addend:x}")
            elif typ in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT, R_X86_64_64) and index:
                at = index * _SYM_SIZE
                if at + 4 > len(dynsym.data):
                    continue
                name_off = _DYNSYM_NAME.unpack_from(dynsym.data, at)[0]
                end = strtab.find(b"\0", name_off)
                name = strtab[name_off:end if end >= 0 else len(strtab)].decode("utf-8",
                                                                                 "replace")
                if name:
                    out.setdefault(where, name)
    return out


def plt_symbols(sections: list[Section], first_index: int,
                slots: dict[int, str] | None = None) -> list[Symbol]:
    """One local STT_FUNC ``NAME@plt`` per PLT stub whose GOT slot has a name,
    numbered from ``first_index``."""
    slots = got_slots(sections) if slots is None else slots
    if not slots:
        return []
    out: list[Symbol] = []
    for sec in sections:
        if not sec.executable or not sec.name.startswith(".plt") or not sec.data:
            continue
        size = sec.entsize if sec.entsize in (8, 16) and sec.size % sec.entsize == 0 else 16
        for start in range(0, sec.size - size + 1, size):
            name = _stub_target(sec, start, size, slots)
            if name is not None:
                out.append(Symbol(first_index + len(out), f"{name}@plt", sec.addr + start, size,
                                  STT_FUNC, STB_LOCAL, 0, sec.index, start))
    return out


def _stub_target(sec: Section, start: int, size: int, slots: dict[int, str]) -> str | None:
    """The name of the GOT slot the stub at ``start`` jumps through, if any."""
    decoder = iced_x86.Decoder(64, sec.data[start:start + size], ip=sec.addr + start)
    for insn in decoder:
        if insn.flow_control == iced_x86.FlowControl.INDIRECT_BRANCH:
            if insn.is_ip_rel_memory_operand:
                return slots.get(insn.ip_rel_memory_address)
            return None
    return None
