"""framevet's own per-address CFA table, in DWARF terms (design §4 "CFA dump").

One :class:`CfaRow` per address where the unwind state changes: the CFA rule
and where each saved register's caller value lives, CFA-relative, registers in
DWARF order.  This is what ``framevet cfa`` prints, what ``framevet cfi``
compares with ``.eh_frame``, and what emulation unwinds with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from framevet.cfg.build import build
from framevet.cfg.program import SKIP_ORC_SECTIONS, Program
from framevet.load.elf import ElfObject
from framevet.stack.walker import WalkOptions, WalkResult, walk
from framevet.unwind.cfarule import UNDEFINED_RULE, CfaRow, CfaRule, rule_for
from framevet.unwind.userwalk import user_walk, with_fde_functions


@dataclass
class CfaTable:
    prog: Program
    result: WalkResult
    #: per executable section name: rows where the rule changes, by offset
    rows: dict[str, list[CfaRow]]
    #: gids whose state was inferred, not derived (see :func:`user_walk`)
    inferred: set[int] = field(default_factory=set)
    _cache: dict[int, CfaRule] = field(default_factory=dict, repr=False)
    _names: dict[str, int] = field(default_factory=dict, repr=False)

    def at(self, section: str | int, offset: int) -> CfaRule:
        """The rule in effect before the instruction at ``section+offset`` executes
        (``section``: a name, or a section index when names repeat)."""
        sec = section if isinstance(section, int) else self._sec_index.get(section, -1)
        g = self.prog.gid(sec, offset)
        return self.rule_at_gid(g) if g >= 0 else UNDEFINED_RULE

    def rule_at_gid(self, g: int) -> CfaRule:
        c = self.result.cfi[g]
        if c is None:
            return UNDEFINED_RULE
        rule = self._cache.get(id(c))
        if rule is None:
            rule = self._cache[id(c)] = rule_for(c)
        return rule

    @property
    def _sec_index(self) -> dict[str, int]:
        if not self._names:
            for ds in self.prog.sections:
                self._names.setdefault(self.prog.section_name(ds.index), ds.index)
        return self._names


def cfa_table(elf: ElfObject, profile: str = "user",
              opts: WalkOptions | None = None) -> CfaTable:
    if profile == "user" and not elf.relocatable:
        elf = with_fde_functions(elf)
    prog = build(elf, profile)
    if profile == "user":
        result, inferred = user_walk(prog, opts)
        table = table_from(prog, result)
        table.inferred = inferred
        return table
    return table_from(prog, walk(prog, opts))


def table_from(prog: Program, result: WalkResult) -> CfaTable:
    rows: dict[str, list[CfaRow]] = {}
    cache: dict[int, CfaRule] = {}
    for ds in prog.sections:
        name = prog.section_name(ds.index)
        if name in SKIP_ORC_SECTIONS:
            continue
        out: list[CfaRow] = []
        prev: CfaRule | None = None
        prev_c: object = ()
        base = prog.base[ds.index]
        cfi = result.cfi
        for i in range(len(ds)):
            c = cfi[base + i]
            if c is prev_c:
                continue
            prev_c = c
            key = id(c)
            rule = cache.get(key) if c is not None else UNDEFINED_RULE
            if rule is None:
                rule = cache[key] = rule_for(c)
            if rule != prev:
                out.append(CfaRow(name, ds.off[i], rule))
                prev = rule
        rows[name] = out
    return CfaTable(prog, result, rows)
