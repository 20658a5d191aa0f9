"""A finding, where it is, and how objtool would have named that place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framevet.load.elf import SHF_EXECINSTR, STT_FILE, STT_FUNC, STT_SECTION, ElfObject

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

    def text(self) -> str:
        """The compiler convention editors and problem matchers parse:
        ``PATH:LINE: SEVERITY: SYMBOL+0xOFF: MESSAGE [RULE]`` when the source line is
        known, else ``PATH: SEVERITY: SYMBOL+0xOFF (0xADDRESS): MESSAGE [RULE]``."""
        loc = self.location
        if self.source is not None:
            place = f" {loc.text()}:" if loc is not None else ""
            return (f"{self.source[0]}:{self.source[1]}: {self.severity}:{place} "
                    f"{self.message} [{self.rule}]")
        place = f" {loc.text()} (0x{loc.address:x}):" if loc is not None else ""
        return f"{self.file}: {self.severity}:{place} {self.message} [{self.rule}]"

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
        if self.source:
            out["source"] = {"path": self.source[0], "line": self.source[1]}
        if self.details:
            out["details"] = self.details
        return out


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

    def _containing(self, table: dict[int, list[tuple[int, int, str]]], sec: int,
                    off: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for start, end, name in table.get(sec, ()):
            if start <= off < end and (best is None or start > best[0]):
                best = (start, name)
        return best

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
