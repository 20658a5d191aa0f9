"""Turn a path on the command line into the ELF images it holds."""

from __future__ import annotations

from framevet.load.archive import is_archive, iter_members
from framevet.load.asm import assemble
from framevet.load.elf import parse_elf
from framevet.load.errors import InputError
from framevet.load.object import LoadedObject, read_file
from framevet.load.plt import with_plt_symbols

ASM_SUFFIXES = (".S", ".s", ".sx", ".asm")


def archive_size(path: str) -> int:
    """How many ELF members ``path`` holds if it is an archive, else 0 (cheap: headers only)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"!<arch>\n":
                return 0
        data = read_file(path)
    except (InputError, OSError):
        return 0
    try:
        return sum(1 for _, body in iter_members(data, path) if body.startswith(b"\x7fELF"))
    except InputError:
        return 0


def load_path(path: str, cflags: list[str] | None = None,
              members: range | None = None) -> list[LoadedObject]:
    """Every ELF image in ``path``: one for an object, one per member for an archive
    (only the members numbered in ``members`` when given)."""
    if path.endswith(ASM_SUFFIXES):
        return [assemble(path, cflags or [])]
    data = read_file(path)
    if is_archive(data):
        out = []
        index = -1
        for name, body in iter_members(data, path):
            display = f"{path}({name})"
            if not body.startswith(b"\x7fELF"):
                continue
            index += 1
            if members is not None and index not in members:
                continue
            out.append(LoadedObject(parse_elf(body, display), display))
        if not out and members is None:
            raise InputError(path, "archive holds no ELF objects")
        return out
    return [LoadedObject(with_plt_symbols(parse_elf(data, path)), path)]
