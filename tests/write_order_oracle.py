"""Expected write-order verdicts, decided from the emitted code alone.

A deliberately small, independent harness (it shares no code with framevet):
it lays one relocatable object out at fixed addresses, applies its relocations,
runs one function under unicorn with the area wired in, records every store
that lands in the area (one entry per instruction: the parts of a wide store
and the iterations of a ``rep`` merged) and replays the sequence of guard
values those stores leave.  What the compiler emitted decides the verdict, not
what the C source meant.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_MEM_WRITE, UC_MODE_64, Uc
from unicorn import x86_const as X

CODE, DATA, AREA, HEAP, STUBS, STACK = 0x400000, 0x800000, 0x900000, 0xA00000, 0xB00000, 0xC00000
ARGS = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX)


@dataclass
class Store:
    pc: int                  # offset in .text
    lo: int                  # first area byte written (-1: the pointer was published)
    data: bytearray = field(default_factory=bytearray)
    rep: bool = False


@dataclass
class Verdict:
    broken: bool
    why: str
    merged: bool = False     # one store moved the guard and wrote data
    rep: bool = False        # ... and it was a rep-prefixed string instruction
    guard_alone: bool = False  # some store wrote the guard on its own


def _layout(path: str) -> tuple[dict[int, int], dict[int, bytearray], dict[int, str],
                                dict[str, int]]:
    """Section addresses, relocated bodies, stubs for undefined symbols, symbol addresses."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        secs = list(elf.iter_sections())
        base: dict[int, int] = {}
        blobs: dict[int, bytearray] = {}
        cursor = {True: CODE, False: DATA}
        for i, s in enumerate(secs):
            if s["sh_flags"] & 2:
                code = bool(s["sh_flags"] & 4)
                base[i] = cursor[code]
                blobs[i] = bytearray(s.data() if s["sh_type"] != "SHT_NOBITS"
                                     else bytes(s["sh_size"]))
                cursor[code] += max(0x1000, (s["sh_size"] + 0xFFF) & ~0xFFF)
        symtab = elf.get_section_by_name(".symtab")
        syms = list(symtab.iter_symbols())
        stubs: dict[int, str] = {}
        for s in secs:
            if not isinstance(s, RelocationSection) or s["sh_info"] not in blobs:
                continue
            blob, where = blobs[s["sh_info"]], base[s["sh_info"]]
            for r in s.iter_relocations():
                sym = syms[r["r_info_sym"]]
                if sym["st_shndx"] == "SHN_UNDEF":
                    addr = next((a for a, n in stubs.items() if n == sym.name),
                                STUBS + 16 * len(stubs))
                    stubs[addr] = sym.name
                else:
                    addr = base[sym["st_shndx"]] + sym["st_value"]
                value, off, kind = addr + r["r_addend"], r["r_offset"], r["r_info_type"]
                if kind in (2, 4):                       # R_X86_64_PC32, PLT32
                    struct.pack_into("<i", blob, off, value - (where + off))
                elif kind == 11:                         # R_X86_64_32S
                    struct.pack_into("<i", blob, off, value)
                elif kind == 1:                          # R_X86_64_64
                    struct.pack_into("<Q", blob, off, value)
                else:
                    raise ValueError(f"{path}: relocation type {kind} not handled")
        where_is = {s.name: base[s["st_shndx"]] + s["st_value"] for s in syms
                    if isinstance(s["st_shndx"], int) and s["st_shndx"] in base and s.name}
    return base, blobs, stubs, where_is


def run(path: str, func: str, args: list[int | str], area_size: int, area_init: bytes,
        heap: bytes = b"", returns_area: str = "", slot: str = "",
        slot_at: int = -1) -> list[Store]:
    """Run ``func``. ``args``: integers, "area" or "heap"; an undefined function named
    ``returns_area`` returns the area; ``memcpy`` copies; a store of the area's address
    to the symbol ``slot`` (or to the address ``slot_at``) is recorded as a publication."""
    base, blobs, stubs, where_is = _layout(path)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for i, blob in blobs.items():
        uc.mem_map(base[i], max(0x1000, (len(blob) + 0xFFF) & ~0xFFF))
        uc.mem_write(base[i], bytes(blob))
    for a, n in ((AREA, 0x1000), (HEAP, 0x1000), (STUBS, 0x1000), (STACK, 0x10000)):
        uc.mem_map(a, n)
    uc.mem_write(STUBS, b"\xc3" * 0x1000)
    uc.mem_write(AREA, area_init)
    uc.mem_write(HEAP, heap)
    rsp = STACK + 0x8000
    uc.mem_write(rsp, struct.pack("<Q", STUBS + 0xFF0))
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    for reg, a in zip(ARGS, args, strict=False):
        uc.reg_write(reg, AREA if a == "area" else HEAP if a == "heap" else int(a))
    slot_addr = where_is.get(slot, -1) if slot else slot_at
    stores: list[Store] = []
    pending: list[tuple[int, int]] = []
    cur = {"pc": -1, "iters": 0}

    def flush() -> None:
        if pending:
            lo = min(a for a, _ in pending)
            hi = max(a + n for a, n in pending)
            stores.append(Store(cur["pc"] - CODE, lo - AREA,
                                bytearray(uc.mem_read(lo, hi - lo)), cur["iters"] > 1))
            pending.clear()

    def on_code(uc: Uc, addr: int, size: int, _: object) -> None:
        if addr != cur["pc"]:
            flush()
            cur["pc"], cur["iters"] = addr, 0
        cur["iters"] += 1
        name = stubs.get(addr)
        if name == returns_area:
            uc.reg_write(X.UC_X86_REG_RAX, AREA)
        elif name == "memcpy":
            dst, src, n = (uc.reg_read(r) for r in ARGS[:3])
            uc.mem_write(dst, bytes(uc.mem_read(src, n)))
            uc.reg_write(X.UC_X86_REG_RAX, dst)
            if AREA <= dst < AREA + area_size:
                pending.append((dst, n))

    def on_write(uc: Uc, access: int, addr: int, size: int, value: int, _: object) -> None:
        if AREA <= addr < AREA + area_size:
            pending.append((addr, size))
        elif addr == slot_addr and value == AREA:
            stores.append(Store(cur["pc"] - CODE, -1))

    uc.hook_add(UC_HOOK_CODE, on_code)
    uc.hook_add(UC_HOOK_MEM_WRITE, on_write)
    entry = where_is[func]
    uc.emu_start(entry, STUBS + 0xFF0, count=100_000)
    flush()
    return stores


def judge(stores: list[Store], init: bytes, guard: tuple[int, int], bit: int | None) -> Verdict:
    """Replay on a copy of the area. ``bit`` None: seqcount (odd = open)."""
    mem = bytearray(init)
    g0, gsize = guard

    def guard_value() -> int:
        return int.from_bytes(mem[g0:g0 + gsize], "little")

    def is_open() -> bool:
        return bool(guard_value() >> (bit if bit is not None else 0) & 1)

    phase, opened, alone = "off", False, False
    for s in stores:
        before_value, before = guard_value(), is_open()
        mem[s.lo:s.lo + len(s.data)] = s.data
        after = is_open()
        hi = s.lo + len(s.data)
        data = s.lo < g0 or hi > g0 + gsize
        touches = s.lo < g0 + gsize and hi > g0
        alone = alone or (touches and not data)
        if touches and before != after:
            if data:
                return Verdict(True, f"store at +{s.pc:#x} moves the guard and writes data",
                               True, s.rep, alone)
            phase = "open" if after else "done"
            opened = opened or after
            continue
        if touches and not data and bit is None and phase == "off" and not after \
                and guard_value() != before_value:
            return Verdict(True, f"sequence even to even at +{s.pc:#x}", guard_alone=alone)
        if data and phase != "open":
            return Verdict(True, f"data store at +{s.pc:#x} while {phase}", guard_alone=alone)
    if phase == "open":
        return Verdict(True, "returns open", guard_alone=alone)
    if not opened:
        return Verdict(True, "never opened", guard_alone=alone)
    return Verdict(False, "clean", guard_alone=alone)


def judge_publish(stores: list[Store]) -> Verdict:
    published = -1
    for s in stores:
        if s.lo < 0:
            published = s.pc
        elif published >= 0:
            return Verdict(True, f"store at +{s.pc:#x} after the publication at +{published:#x}")
    if published < 0:
        return Verdict(True, "never published")
    return Verdict(False, "clean")
