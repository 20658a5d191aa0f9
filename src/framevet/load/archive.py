"""Unix ``ar`` archives (static libraries): every member, GNU and BSD long names."""

from __future__ import annotations

from collections.abc import Iterator

from framevet.load.errors import InputError

MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"


def is_archive(data: bytes) -> bool:
    return data.startswith(MAGIC)


def iter_members(data: bytes, path: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, member bytes)`` for each object member of an archive."""
    if data.startswith(THIN_MAGIC):
        raise InputError(path, "thin archives are not supported (they hold no code)")
    pos = len(MAGIC)
    longnames = b""
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        if hdr[58:60] != b"`\n":
            raise InputError(path, f"malformed archive member header at offset {pos}")
        raw_name = hdr[:16].decode("ascii", "replace").rstrip()
        try:
            size = int(hdr[48:58].decode("ascii").strip())
        except ValueError:
            raise InputError(path, f"malformed archive member size at offset {pos}") from None
        body_start = pos + 60
        body = data[body_start:body_start + size]
        if len(body) != size:
            raise InputError(path, "archive is truncated")
        pos = body_start + size + (size & 1)
        if raw_name in ("/", "/SYM64/", "__.SYMDEF", "__.SYMDEF SORTED"):
            continue
        if raw_name == "//":
            longnames = body
            continue
        name = raw_name
        if raw_name.startswith("#1/"):
            n = int(raw_name[3:])
            name, body = body[:n].rstrip(b"\0").decode("utf-8", "replace"), body[n:]
        elif raw_name.startswith("/") and raw_name[1:].isdigit():
            off = int(raw_name[1:])
            end = longnames.find(b"\n", off)
            name = longnames[off:end if end >= 0 else None].decode("utf-8", "replace")
        yield name.rstrip("/"), body
