"""Read ORC sections back out of an object: what ``objtool --dump=orc`` prints.

Used to check framevet's own output (``framevet orc --read OUT``) without objtool.
"""

from __future__ import annotations

from framevet.load.elf import STT_SECTION, ElfObject
from framevet.load.errors import InputError
from framevet.unwind.orc import format_entry, unpack_entry


def dump_existing(elf: ElfObject) -> str:
    orc = elf.section(".orc_unwind")
    ip = elf.section(".orc_unwind_ip")
    if orc is None or ip is None:
        raise InputError(elf.path, "no .orc_unwind/.orc_unwind_ip sections")
    if orc.size % 6 or ip.size % 4 or orc.size // 6 != ip.size // 4:
        raise InputError(elf.path, "bad .orc_unwind section size")
    # a linked image's table was sorted after linking (the kernel's sorttable) and
    # its kept relocations no longer match the entries: the ips are read as the
    # unwinder reads them, relative to their own address
    rela = elf.relocs.get(ip.index, []) if elf.relocatable else []
    by_off = {r.offset: r for r in rela}
    lines = []
    for i in range(ip.size // 4):
        r = by_off.get(4 * i)
        if not elf.relocatable:
            rel = int.from_bytes(ip.data[4 * i:4 * i + 4], "little", signed=True)
            loc = _located(elf, ip.addr + 4 * i + rel)
        elif r is not None:
            sym = elf.symbols[r.sym]
            name = elf.sections[sym.shndx].name if sym.type == STT_SECTION else sym.name
            loc = f"{name}+{r.addend:x}:"
        else:
            loc = f"{int.from_bytes(ip.data[4 * i:4 * i + 4], 'little', signed=True):x}:"
        lines.append(loc + format_entry(unpack_entry(orc.data[6 * i:6 * i + 6])) + "\n")
    return "".join(lines)


def _located(elf: ElfObject, addr: int) -> str:
    """``SECTION+OFF:`` of an address in a linked image's executable sections."""
    code = [sec for sec in elf.sections if sec.executable]
    for sec in code:
        if sec.addr <= addr < sec.addr + sec.size:
            return f"{sec.name}+{addr - sec.addr:x}:"
    for sec in code:            # (the entry that ends a section's last function)
        if addr == sec.addr + sec.size:
            return f"{sec.name}+{addr - sec.addr:x}:"
    return f"{addr:x}:"
