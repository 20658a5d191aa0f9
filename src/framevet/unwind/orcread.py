"""Read ORC sections back out of an object: what ``objtool --dump=orc`` prints.

Used to check framevet's own output (``framevet orc --read OUT``) without objtool.
"""

from __future__ import annotations

from framevet.errors import InputError
from framevet.load.elf import STT_SECTION, ElfObject
from framevet.unwind.orc import format_entry, unpack_entry


def dump_existing(elf: ElfObject) -> str:
    orc = elf.section(".orc_unwind")
    ip = elf.section(".orc_unwind_ip")
    if orc is None or ip is None:
        raise InputError(elf.path, "no .orc_unwind/.orc_unwind_ip sections")
    if orc.size % 6 or ip.size % 4 or orc.size // 6 != ip.size // 4:
        raise InputError(elf.path, "bad .orc_unwind section size")
    rela = elf.relocs.get(ip.index, [])
    by_off = {r.offset: r for r in rela}
    lines = []
    for i in range(ip.size // 4):
        r = by_off.get(4 * i)
        if r is not None:
            sym = elf.symbols[r.sym]
            name = elf.sections[sym.shndx].name if sym.type == STT_SECTION else sym.name
            loc = f"{name}+{r.addend:x}:"
        else:
            loc = f"{int.from_bytes(ip.data[4 * i:4 * i + 4], 'little', signed=True):x}:"
        lines.append(loc + format_entry(unpack_entry(orc.data[6 * i:6 * i + 6])) + "\n")
    return "".join(lines)
