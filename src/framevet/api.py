"""framevet's Python API: what other tools build on.

    from framevet import api

    for obj in api.load("entry.S"):
        result = api.analyse(obj, profile="kernel", explain=True)
        for f in result.findings:
            print(f.text())
        for row in result.cfa_table(function="fred_irq_bad"):
            print(row.where, row.cfa, row.registers)

    api.findings("libfoo.a", profile="user")          # load + analyse every object
    api.cfa_table("memcpy.o", function="memcpy")       # DWARF-terms CFA rows

Everything here is typed; the records (:class:`framevet.findings.Finding`,
:class:`CfaRow`) are plain dataclasses.  docs/api.md describes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from framevet.findings import Finding, Location
from framevet.load import LoadedObject, load_path
from framevet.pipeline import Context, Options
from framevet.pipeline import analyse as _analyse
from framevet.unwind.cfarule import reg_name
from framevet.unwind.cfatable import CfaTable, table_from
from framevet.unwind.cfatable import cfa_table as _cfa_table

__all__ = ["Analysis", "CfaRow", "Finding", "LoadedObject", "Location", "analyse",
           "cfa_table", "findings", "load", "table_rows"]


@dataclass(frozen=True)
class CfaRow:
    """The unwind rule from ``address`` on, until the next row, in DWARF terms."""

    function: str
    section: str
    offset: int
    address: int
    #: ``function+0xoff``
    where: str
    #: ``rsp+16``, ``rbp+16``, ``undefined``, ...
    cfa: str
    #: register name -> rule (``cfa-16``, ``undefined``, another register's name)
    registers: dict[str, str]


@dataclass
class Analysis:
    """One object after framevet's pipeline."""

    obj: LoadedObject
    context: Context

    @property
    def findings(self) -> list[Finding]:
        return list(self.context.findings)

    def cfa_table(self, function: str | None = None) -> list[CfaRow]:
        """The CFA table of the walk that produced the findings (its profile)."""
        return table_rows(table_from(self.context.prog, self.context.result), function)


def load(path: str | os.PathLike[str], cflags: Sequence[str] = ()) -> list[LoadedObject]:
    """Every ELF image in ``path`` (an object, an archive's members, an assembled ``.S``).
    Bad input raises :class:`framevet.load.errors.InputError` with a one-line message."""
    return load_path(os.fspath(path), list(cflags))


def analyse(obj: LoadedObject, profile: str = "kernel", explain: bool = False,
            **switches: Any) -> Analysis:
    """Run the checks of ``framevet check`` on one object.  ``switches`` are
    :class:`framevet.pipeline.Options` fields (``sls=True``, ``hints_file="x.toml"``,
    ``disabled=frozenset({...})``); ``explain`` attaches the paths to each finding."""
    known = {f.name for f in fields(Options)}
    unknown = sorted(set(switches) - known)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(unknown)}")
    options = Options(profile=profile, explain=explain, **switches)
    return Analysis(obj, _analyse(obj, options))


def findings(path: str | os.PathLike[str], profile: str = "kernel",
             **switches: Any) -> list[Finding]:
    """The findings of every object in ``path``."""
    return [f for obj in load(path) for f in analyse(obj, profile, **switches).findings]


def cfa_table(source: str | os.PathLike[str] | LoadedObject, profile: str = "user",
              function: str | None = None) -> list[CfaRow]:
    """framevet's CFA table (what ``framevet cfa`` prints), function by function."""
    objs = [source] if isinstance(source, LoadedObject) else load(source)
    return [row for obj in objs for row in table_rows(_cfa_table(obj.elf, profile), function)]


def table_rows(table: CfaTable, function: str | None = None) -> list[CfaRow]:
    """Each function's rows: the rule at its first instruction, then every change."""
    prog = table.prog
    out: list[CfaRow] = []
    for f in sorted((f for f in prog.functions if f.canonical), key=lambda f: (f.sec, f.start)):
        if function is not None and f.name != function:
            continue
        section = prog.section_name(f.sec)
        base = prog.elf.sections[f.sec].addr
        entries = [(f.start, table.at(f.sec, f.start))]
        entries += [(r.offset, r.rule) for r in table.rows.get(section, [])
                    if f.start < r.offset < f.end]
        out.extend(CfaRow(f.name, section, off, base + off, f"{f.name}+0x{off - f.start:x}",
                          rule.cfa_text(), {reg_name(r): t for r, t in rule.reg_rules()})
                   for off, rule in entries)
    return out
