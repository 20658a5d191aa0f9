"""Where a linked image's own tables say code is entered: the entry point, ``.init``
and ``.fini``, and the functions ``.preinit_array``, ``.init_array`` and
``.fini_array`` list (their slots hold the address, or are filled at load time by an
``R_X86_64_RELATIVE`` relocation whose addend is the address)."""

from __future__ import annotations

import struct

from framevet.load.elf import SHT_RELA, ElfObject

R_X86_64_RELATIVE = 8
_ARRAYS = (".preinit_array", ".init_array", ".fini_array")
_RELA = struct.Struct("<QQq")


def entry_points(elf: ElfObject) -> list[int]:
    """Addresses of code the image's tables enter (not PLT stubs, not FDE starts)."""
    if elf.relocatable:
        return []
    out = [elf.entry] if elf.entry else []
    out += [sec.addr for name in (".init", ".fini") if (sec := elf.section(name)) is not None
            and sec.executable and sec.size]
    arrays = [sec for name in _ARRAYS if (sec := elf.section(name)) is not None and sec.size]
    if not arrays:
        return out
    relative: dict[int, int] = {}
    for sec in elf.sections:
        if sec.type == SHT_RELA and sec.entsize == _RELA.size:
            body = sec.data[: len(sec.data) - len(sec.data) % _RELA.size]
            for where, info, addend in _RELA.iter_unpack(body):
                if info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                    relative[where] = addend
    for sec in arrays:
        for i in range(0, len(sec.data) - 7, 8):
            value = relative.get(sec.addr + i) or int.from_bytes(sec.data[i:i + 8], "little")
            if value not in (0, 0xFFFFFFFFFFFFFFFF):
                out.append(value)
    return out
