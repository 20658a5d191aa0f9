"""What of a linked image's executable sections is not 64-bit code.

A hypervisor or kernel image keeps data in ``.text`` (multiboot headers, GDTs,
strings of the real-mode video code) and 16- and 32-bit code (boot code entered
in protected mode, the trampoline copied below 1 MiB): an unlinked object's
objtool never sees them, and decoding them as x86-64 yields garbage.  Two facts
of the binary say so: an STT_OBJECT symbol's bytes are data, and a stretch
between two symbols where bytes do not decode as x86-64 is not x86-64 code.  The
second is left out whole, from its symbol to the next, and reported as such
(``code-left-out``): nothing in it is walked or described by ORC, and the rest of
the file is analysed as usual.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from framevet.decode.insn import DecodedSection, decode_section
from framevet.load.elf import STT_FILE, STT_OBJECT, STT_SECTION, Section, Symbol


@dataclass(frozen=True, slots=True)
class LeftOut:
    """``[start, end)`` of section ``sec``, not decoded; ``invalid``: the first byte
    that is no x86-64 instruction; ``symbol``: the symbol the stretch starts at."""

    sec: int
    start: int
    end: int
    invalid: int
    symbol: str


#: decodings of one section at most (each leaves more out)
_ROUNDS = 4


def decode_linked(sec: Section, syms: list[Symbol], iret_is_func: object,
                  ) -> tuple[DecodedSection, list[LeftOut], int]:
    """A linked image's section decoded without its data and with its stretches of
    foreign code left out: (decoded, stretches left out, bytes not decoded)."""
    skip = data_ranges(syms)
    left: list[LeftOut] = []
    ds = decode_section(sec.index, sec.name, sec.data, iret_is_func, skip)
    for _ in range(_ROUNDS):
        invalid = [off for off, rule, _, _ in ds.problems if rule == "undecodable-instruction"]
        if not invalid:
            break
        # (a stretch left out can cut the instruction before it: one more round)
        left = sorted({*left, *undecodable_stretches(sec, syms, invalid)},
                      key=lambda x: x.start)
        skip = merge([*skip, *((x.start, x.end) for x in left)])
        del ds                  # (one section's records at a time)
        ds = decode_section(sec.index, sec.name, sec.data, iret_is_func, skip)
    return ds, left, sum(b - a for a, b in skip)


def data_ranges(syms: list[Symbol]) -> list[tuple[int, int]]:
    """The sorted, merged byte ranges of the STT_OBJECT symbols among ``syms``."""
    return merge((s.offset, s.offset + s.size) for s in syms
                 if s.type == STT_OBJECT and s.size and s.offset >= 0)


def undecodable_stretches(sec: Section, syms: list[Symbol],
                          invalid: list[int]) -> list[LeftOut]:
    """The stretches from one symbol to the next that hold an ``invalid`` offset."""
    starts: dict[int, str] = {0: ""}
    for s in syms:
        if s.name and s.type not in (STT_SECTION, STT_FILE) and 0 <= s.offset < sec.size:
            if not starts.get(s.offset):
                starts[s.offset] = s.name
    bounds = sorted(starts)
    out: dict[int, LeftOut] = {}
    for off in invalid:
        k = bisect.bisect_right(bounds, off) - 1
        a = bounds[k]
        if a not in out:
            b = bounds[k + 1] if k + 1 < len(bounds) else sec.size
            out[a] = LeftOut(sec.index, a, b, off, starts[a])
    return [out[a] for a in sorted(out)]


def merge(ranges: object) -> list[tuple[int, int]]:
    """Sorted ``[start, end)`` ranges, overlapping or touching ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):  # type: ignore[call-overload]
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
