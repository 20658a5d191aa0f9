"""Instructions as a reader wants them: AT&T syntax with targets by name.

A call in an unlinked object encodes a displacement the linker fills in, so its
target is read from the relocation (``call memcpy``); in a linked image the target
address is named by the symbol holding it (``memcpy+0x10``) or, for the PLT, by the
dynamic relocation its GOT slot carries (``abort@plt``).
"""

from __future__ import annotations

import struct
from bisect import bisect_right

import iced_x86

from framevet.cfg.program import Program
from framevet.load.elf import SHF_EXECINSTR, STT_FUNC, STT_OBJECT, ElfObject

#: R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT: a GOT slot the dynamic linker fills
_GOT_RELOCS = (6, 7)
_fmt = iced_x86.Formatter(iced_x86.FormatterSyntax.GAS)
_fmt.uppercase_hex = False
_fmt.branch_leading_zeros = False
_fmt.space_after_operand_separator = False


class Namer:
    """Names for places in one image: ``symbol+0xoff``, ``name@plt``, else hex."""

    def __init__(self, elf: ElfObject) -> None:
        self.elf = elf
        named = [(s.value, s.name) for s in elf.symbols
                 if s.defined and s.type in (STT_FUNC, STT_OBJECT) and s.name]
        if not elf.relocatable:
            named.extend(plt_names(elf).items())
        named.sort()
        self._addrs = [a for a, _ in named]
        self._names = [n for _, n in named]
        self._sizes = {s.value: s.size for s in elf.symbols if s.defined and s.name}

    def place(self, prog: Program, g: int) -> str:
        """Instruction ``g`` as ``function+0xoff`` (``section+0xoff`` outside functions and
        in the alternative replacements a function is patched with)."""
        fi = prog.func[g]
        if fi >= 0 and prog.functions[fi].sec == prog.sec_of[g]:
            f = prog.functions[fi]
            return f"{f.name}+0x{prog.off[g] - f.start:x}"
        return f"{prog.section_name(prog.sec_of[g])}+0x{prog.off[g]:x}"

    def address(self, addr: int) -> str:
        """A linked image's address by name: ``sym``, ``sym+0x10`` or ``0x...``."""
        i = bisect_right(self._addrs, addr) - 1
        if i >= 0:
            start, name = self._addrs[i], self._names[i]
            size = self._sizes.get(start, 0)
            if addr == start:
                return name
            if addr < start + max(size, 1) or name.endswith("@plt"):
                return f"{name}+0x{addr - start:x}"
        return f"0x{addr:x}"


def insn_text(prog: Program, g: int, namer: Namer) -> str:
    """Instruction ``g`` in AT&T syntax, its branch or rip-relative target by name."""
    linked = not prog.elf.relocatable
    ins = prog.instruction(g, address=linked)
    if ins.code == iced_x86.Code.INVALID:
        return "(bad)"
    text: str = _fmt.format(ins)
    if ins.is_call_near or ins.is_jmp_near or ins.is_jmp_short or ins.is_jcc_short_or_near:
        target = _branch_target(prog, g, ins, namer, linked)
        if target is not None:
            return f"{_fmt.format_mnemonic(ins)} {target}"
        return text
    if ins.is_ip_rel_memory_operand:
        name = namer.address(ins.ip_rel_memory_address) if linked else _reloc_name(prog, g)
        if name is not None:
            return _with_memory_operand(ins, f"{name}(%rip)")
    return text


def _with_memory_operand(ins: iced_x86.Instruction, operand: str) -> str:
    """The instruction with its memory operand spelled ``operand`` (AT&T order kept)."""
    ops = []
    for i in range(_fmt.operand_count(ins)):
        j = _fmt.get_instruction_operand(ins, i)
        if j is not None and ins.op_kind(j) == iced_x86.OpKind.MEMORY:
            ops.append(operand)
        else:
            ops.append(_fmt.format_operand(ins, i))
    return f"{_fmt.format_mnemonic(ins)} {','.join(ops)}"


def _branch_target(prog: Program, g: int, ins: iced_x86.Instruction, namer: Namer,
                   linked: bool) -> str | None:
    dest = prog.jump_dest[g]
    if dest >= 0:
        return namer.place(prog, dest)
    cd = prog.call_dest[g]
    if not linked:
        if cd is not None:
            return cd.name
        return _reloc_name(prog, g)
    return namer.address(ins.near_branch_target)


def _reloc_name(prog: Program, g: int) -> str | None:
    """What an unlinked instruction's relocation points at: ``sym`` or ``sym+0x8``."""
    sec, off, end = prog.sec_of[g], prog.off[g], prog.off[g] + prog.length[g]
    r = prog.elf.reloc_in(sec, off, end)
    if r is None:
        return None
    sym = prog.elf.symbols[r.sym]
    name = sym.name
    if not name and sym.shndx < len(prog.elf.sections):
        name = prog.elf.sections[sym.shndx].name
    rel = r.addend + (end - r.offset)
    return name if rel == 0 else f"{name}{rel:+#x}"


def plt_names(elf: ElfObject) -> dict[int, str]:
    """Address of every PLT entry -> ``name@plt``: each entry jumps through a GOT slot,
    and the dynamic relocations say which symbol the dynamic linker puts there."""
    slots = _got_slots(elf)
    if not slots:
        return {}
    out: dict[int, str] = {}
    for sec in elf.sections:
        if not sec.name.startswith(".plt") or not sec.flags & SHF_EXECINSTR or not sec.data:
            continue
        size = sec.entsize if sec.entsize in (8, 16) else 16
        for ins in iced_x86.Decoder(64, sec.data, ip=sec.addr):
            if ins.is_jmp_near_indirect and ins.is_ip_rel_memory_operand:
                name = slots.get(ins.ip_rel_memory_address)
                if name is not None:
                    entry = sec.addr + (ins.ip - sec.addr) // size * size
                    out.setdefault(entry, f"{name}@plt")
    return out


def _got_slots(elf: ElfObject) -> dict[int, str]:
    """GOT address -> symbol name, from the JUMP_SLOT and GLOB_DAT relocations."""
    dynsym = elf.section(".dynsym")
    dynstr = elf.section(".dynstr")
    if dynsym is None or dynstr is None:
        return {}
    out: dict[int, str] = {}
    for rela in (elf.section(".rela.plt"), elf.section(".rela.dyn")):
        if rela is None:
            continue
        for off in range(0, len(rela.data) - 23, 24):
            r_offset, info, _ = struct.unpack_from("<QQq", rela.data, off)
            sym = info >> 32
            if info & 0xFFFFFFFF not in _GOT_RELOCS or not sym:
                continue
            if (sym + 1) * 24 > len(dynsym.data):
                continue
            name_off = struct.unpack_from("<I", dynsym.data, sym * 24)[0]
            end = dynstr.data.find(b"\0", name_off)
            out[r_offset] = dynstr.data[name_off:end].decode("utf-8", "replace")
    return out
