"""The ``framevet.toml`` sidecar as a file: where it is, what it says, on which line.

tomllib parses the file but keeps no positions, so a small scan of the text maps every
table and key to its line; every mistake in the file can then be reported as
``framevet.toml:LINE: error: ...``, as a compiler would.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from framevet.load.errors import InputError

SIDECAR_NAME = "framevet.toml"

_TABLE = re.compile(r'^\s*\[\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_.$@+-]+)\s*\]')
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_.$@+-]+)\s*=')
_INLINE_KEY = re.compile(r'("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_$@-]+)\s*=')


@dataclass
class SidecarFile:
    """A parsed sidecar: its tables, and the line of every table and key."""

    path: str
    text: str
    tables: dict[str, Any]
    #: (table, "") -> line of the table; (table, key) -> line of the key
    lines: dict[tuple[str, str], int] = field(default_factory=dict)

    def line(self, table: str, key: str = "") -> int:
        return self.lines.get((table, key)) or self.lines.get((table, ""), 0)

    def error(self, table: str, key: str, reason: str) -> InputError:
        """``PATH:LINE: error: REASON`` for a mistake in table (and key)."""
        line = self.line(table, key)
        return InputError(f"{self.path}:{line}" if line else self.path, reason)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name


def _positions(text: str) -> dict[tuple[str, str], int]:
    """Line numbers of ``[table]`` headers, ``key = ...`` lines, and top-level inline
    tables (``"name" = {entry = "iret"}``); enough for error messages."""
    out: dict[tuple[str, str], int] = {}
    table = ""
    for n, raw in enumerate(text.splitlines(), 1):
        m = _TABLE.match(raw)
        if m:
            table = _unquote(m.group(1))
            out.setdefault((table, ""), n)
            # a sub-table ``[f.key]`` is key ``key`` of table ``f``
            outer, dot, inner = table.rpartition(".")
            if dot and outer and inner:
                out.setdefault((outer, inner), n)
            continue
        m = _KEY.match(raw)
        if not m:
            continue
        key = _unquote(m.group(1))
        rest = raw[m.end():].lstrip()
        if table == "" and rest.startswith("{"):
            out.setdefault((key, ""), n)
            for im in _INLINE_KEY.finditer(rest):
                out.setdefault((key, _unquote(im.group(1))), n)
        else:
            out.setdefault((table, key), n)
            if table == "":
                out.setdefault((key, ""), n)
    return out


def read_sidecar(path: str) -> SidecarFile:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    text = raw.decode("utf-8", "replace")
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else path
        raise InputError(where, f"invalid TOML: {exc}") from None
    return SidecarFile(path, text, tables, _positions(text))


def find_sidecar(input_path: str) -> str | None:
    """``framevet.toml`` in the input's folder or the nearest parent folder that has one
    (as ruff and mypy find their configuration)."""
    folder = os.path.dirname(os.path.abspath(input_path))
    while True:
        cand = os.path.join(folder, SIDECAR_NAME)
        if os.path.isfile(cand):
            return cand if os.path.isabs(input_path) else os.path.relpath(cand)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
