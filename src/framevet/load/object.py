"""One loaded ELF image and where it came from."""

from __future__ import annotations

import linecache
import re
from dataclasses import dataclass

from framevet.load.elf import ElfObject
from framevet.load.errors import InputError
from framevet.load.lines import MAX_DEBUG_LINE, LineTable, read_line_table

#: labels before an instruction on an assembly line (``1:``, ``.Lx:``, ``f:``)
_LABELS = re.compile(r"\s*(?:[A-Za-z0-9_.$]+:(?!:)\s*)*")


@dataclass
class LoadedObject:
    """An ELF image plus where it came from, and its source lines (DWARF
    ``.debug_line``: always read for an assembled source, read on first use for any
    other object)."""

    elf: ElfObject
    display: str
    #: the line table; None until first used
    lines: LineTable | None = None
    #: framevet assembled this object from ``display`` (a ``.S`` input)
    assembled: bool = False

    def _table(self) -> LineTable:
        if self.lines is None:
            dl = self.elf.section(".debug_line")
            # most objects have none, or one too big to read (cheap to tell from here)
            wanted = dl is not None and dl.size <= MAX_DEBUG_LINE
            self.lines = read_line_table(self.elf.raw) if wanted else LineTable()
        return self.lines

    def source_of(self, section: str, offset: int) -> tuple[str, int] | None:
        hit = self._table().lookup(section, offset)
        return (hit[0], hit[1]) if hit is not None else None

    def column_of(self, section: str, offset: int) -> int:
        """The 1-based column of the instruction at ``offset``: the compiler's, else
        where the instruction starts on its assembly source line; 0 when unknown."""
        hit = self._table().lookup(section, offset)
        if hit is None:
            return 0
        return hit[2] or source_column(hit[0], hit[1])


def source_column(path: str, line: int) -> int:
    """The 1-based column where the instruction starts on line ``line`` of an assembly
    source (after its labels); 1 when the line cannot be read."""
    text = linecache.getline(path, line)
    if not text.strip():
        return 1
    end = _LABELS.match(text)
    col = end.end() if end is not None else 0
    if col >= len(text.rstrip()):         # a line of labels only
        col = len(text) - len(text.lstrip())
    return col + 1


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
