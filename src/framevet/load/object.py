"""One loaded ELF image and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from framevet.load.elf import ElfObject
from framevet.load.errors import InputError


@dataclass
class LoadedObject:
    """An ELF image plus where it came from (and, for assembly input, its line table)."""

    elf: ElfObject
    display: str
    #: for assembled sources: (section name, offset) -> (source path, line)
    lines: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)

    def source_of(self, section: str, offset: int) -> tuple[str, int] | None:
        return self.lines.get((section, offset))


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
