"""Run framevet on a fixture the way objtool 6.1 was run when it was recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conftest import FIXTURES, assemble

from framevet.load import LoadedObject
from framevet.load.elf import parse_elf
from framevet.pipeline import Options, analyse
from framevet.unwind.orc import dump_text, generate

#: folders whose fixtures are not objtool recordings
NOT_OBJTOOL = {"emulate", "cfi-mismatch", "cfi-missing", "seeds"}


@dataclass
class Case:
    src: Path
    record: dict

    @property
    def id(self) -> str:
        return str(self.src.relative_to(FIXTURES))


def cases() -> list[Case]:
    out = []
    for js in sorted(FIXTURES.glob("*/*.objtool.json")):
        if js.parent.name in NOT_OBJTOOL:
            continue
        src = js.with_name(js.name.replace(".objtool.json", ".S"))
        if src.exists():
            out.append(Case(src, json.loads(js.read_text())))
    return out


def options_for(switches: str, orc_only: bool = False) -> Options:
    o = Options(objtool_only=True, all_warnings=False, orc_only=orc_only)
    for s in switches.split():
        name = s.removeprefix("--")
        if hasattr(o, name) and isinstance(getattr(o, name), bool):
            setattr(o, name, True)
    return o


def load(case: Case) -> LoadedObject:
    name = case.src.stem + ".o"
    return LoadedObject(parse_elf(assemble(case.src).read_bytes(), name), name)


def framevet_warnings(case: Case, switches: str) -> list[str]:
    ctx = analyse(load(case), options_for(switches))
    return [f.objtool_text() for f in ctx.findings]


def framevet_orc(case: Case) -> str:
    ctx = analyse(load(case), options_for("--orc", orc_only=True))
    return dump_text(ctx.prog, generate(ctx.prog, ctx.result))
