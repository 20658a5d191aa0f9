"""A finding, where it is, and how objtool would have named that place."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from framevet.load.elf import SHF_EXECINSTR, STT_FILE, STT_FUNC, STT_SECTION, ElfObject
from framevet.load.object import source_column as column_on_line

SEVERITIES = ("note", "warning", "error")


@dataclass(frozen=True, slots=True)
class Location:
    section: str
    offset: int
    symbol: str | None
    symbol_offset: int
    address: int

    def text(self) -> str:
        """objtool's ``offstr()``: ``func+0xoff``, else ``symbol+0xoff``, else ``section+0xoff``."""
        if self.symbol is not None:
            return f"{self.symbol}+0x{self.symbol_offset:x}"
        return f"{self.section}+0x{self.offset:x}"


@dataclass(slots=True)
class Finding:
    file: str
    rule: str
    message: str
    severity: str = "warning"
    location: Location | None = None
    source: tuple[str, int] | None = None
    #: extra machine-readable details (rule specific)
    details: dict[str, Any] = field(default_factory=dict)
    #: the conventions the object was checked with ("kernel" / "user"; None: not a check)
    profile: str | None = None
    #: 1-based column on the source line (0: where the instruction starts on it)
    column: int = 0
    #: (section, offset) of the finding whose bad stack state this one follows from
    #: (reached only through it: see ``pipeline.link_follow_ons``)
    follows: tuple[str, int] | None = None

    def text(self) -> str:
        """The compiler convention editors and problem matchers parse:
        ``PATH:LINE:COL: SEVERITY: SYMBOL+0xOFF: MESSAGE [RULE]`` when the source line
        is known, else ``PATH: SEVERITY: SYMBOL+0xOFF (0xADDRESS): MESSAGE [RULE]``.

        CI problem matchers (GitHub's gcc matchers) take only ``warning`` and ``error``
        lines, so a note with a source line prints as ``warning: note: ...``: still
        annotated, and still read as a note."""
        loc = self.location
        if self.source is not None:
            place = f" {loc.text()}:" if loc is not None else ""
            col = self.source_column()
            sev = "warning: note" if self.severity == "note" else self.severity
            return (f"{self.source[0]}:{self.source[1]}:{col}: {sev}:{place} "
                    f"{self.message} [{self.rule}]")
        place = f" {loc.text()} (0x{loc.address:x}):" if loc is not None else ""
        return f"{self.file}: {self.severity}:{place} {self.message} [{self.rule}]"

    def source_column(self) -> int:
        """The 1-based column on the source line (0 without a source line)."""
        if self.source is None:
            return 0
        return self.column or column_on_line(self.source[0], self.source[1])

    def objtool_text(self) -> str:
        where = f"{self.location.text()}: " if self.location else ""
        return f"{self.file}: warning: objtool: {where}{self.message}"

    def to_json(self) -> dict[str, Any]:
        loc = self.location
        out: dict[str, Any] = {
            "file": self.file,
            "section": loc.section if loc else None,
            "symbol": loc.symbol if loc else None,
            "offset": loc.symbol_offset if loc and loc.symbol else (loc.offset if loc else None),
            "section_offset": loc.offset if loc else None,
            "address": loc.address if loc else None,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
        }
        if self.profile:
            out["profile"] = self.profile
        if self.source:
            out["source"] = {"path": self.source[0], "line": self.source[1],
                             "column": self.source_column()}
        if self.follows:
            out["follows"] = {"section": self.follows[0], "section_offset": self.follows[1]}
        if self.details:
            out["details"] = self.details
        return out


class _StartOrder:
    """Symbols ``(start, end, name)`` of one section sorted by start (ties: list
    order), with the running maximum of their ends, so that a lookup walks back
    only over symbols that may still hold the offset."""

    def __init__(self, entries: list[tuple[int, int, str]]) -> None:
        ranked = sorted(range(len(entries)), key=lambda i: (entries[i][0], i))
        self.entries = [entries[i] for i in ranked]
        self.starts = [e[0] for e in self.entries]
        self.reach: list[int] = []
        top = -1
        for _, end, _ in self.entries:
            top = max(top, end)
            self.reach.append(top)

    def containing(self, off: int) -> tuple[int, str] | None:
        entries, reach = self.entries, self.reach
        i = bisect_right(self.starts, off) - 1
        hit = -1
        while i >= 0 and reach[i] > off:
            start, end, _ = entries[i]
            if hit >= 0 and start < entries[hit][0]:
                break
            if end > off:
                hit = i            # walking back: the first in list order wins a tie
            i -= 1
        if hit < 0:
            return None
        return entries[hit][0], entries[hit][2]


class SymbolIndex:
    """Answers "which symbol contains this address" the way objtool's offstr() does."""

    def __init__(self, elf: ElfObject) -> None:
        self.elf = elf
        self._funcs: dict[int, list[tuple[int, int, str]]] = {}
        self._any: dict[int, list[tuple[int, int, str]]] = {}
        for s in elf.symbols:
            if not s.defined or s.type in (STT_SECTION, STT_FILE) or not s.size:
                continue
            ent = (s.offset, s.offset + s.size, s.name)
            self._any.setdefault(s.shndx, []).append(ent)
            if s.type == STT_FUNC:
                self._funcs.setdefault(s.shndx, []).append(ent)
        # objtool trims a parent's length by its inline .cold child
        for lst in self._funcs.values():
            lst.sort()
        self._order: dict[int, _StartOrder] = {}

    def _containing(self, table: dict[int, list[tuple[int, int, str]]], sec: int,
                    off: int) -> tuple[int, str] | None:
        """Of the symbols holding ``off``, the one starting last (the first of those in
        ``table``'s order when several start there)."""
        entries = table.get(sec)
        if not entries:
            return None
        order = self._order.get(id(entries))
        if order is None:
            order = self._order[id(entries)] = _StartOrder(entries)
        return order.containing(off)

    def locate(self, sec: int, off: int) -> Location:
        section = self.elf.sections[sec]
        hit = None
        if section.flags & SHF_EXECINSTR:
            hit = self._containing(self._funcs, sec, off)
        if hit is None:
            hit = self._containing(self._any, sec, off)
        addr = section.addr + off
        if hit is None:
            return Location(section.name, off, None, 0, addr)
        return Location(section.name, off, hit[1], off - hit[0], addr)


def locate(elf: ElfObject, sec: int, off: int) -> Location:
    return SymbolIndex(elf).locate(sec, off)
