"""``framevet cfa``: framevet's per-address CFA table, in DWARF terms, function by function."""

from __future__ import annotations

import argparse
import json
from typing import Any

from framevet.cli.common import EXIT_CLEAN, show
from framevet.errors import InputError
from framevet.load import load_path
from framevet.unwind.cfarule import reg_name
from framevet.unwind.cfatable import CfaTable, cfa_table


def add_parser(sub: Any) -> None:
    a = sub.add_parser("cfa", help="print framevet's per-address CFA table (DWARF terms)")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--profile", choices=("kernel", "user"), default="user")
    a.add_argument("--hints", metavar="TOML")
    a.add_argument("--cflags", default="")
    a.add_argument("--function", "-f", action="append", metavar="NAME",
                   help="only this function (repeatable)")
    a.add_argument("--format", choices=("text", "json"), default="text")
    a.add_argument("-o", "--output", metavar="FILE", help="write the table here, not stdout")
    a.set_defaults(func=run)


def rows_by_function(table: CfaTable, wanted: set[str] | None) -> list[dict[str, Any]]:
    """Each function's rows: the rule at its first instruction, then every change."""
    prog = table.prog
    out: list[dict[str, Any]] = []
    funcs = sorted((f for f in prog.functions if f.canonical),
                   key=lambda f: (f.sec, f.start))
    for f in funcs:
        if wanted is not None and f.name not in wanted:
            continue
        section = prog.section_name(f.sec)
        rows = table.rows.get(section, [])
        first = table.at(f.sec, f.start)
        entries = [(f.start, first)] + [(r.offset, r.rule) for r in rows
                                         if f.start < r.offset < f.end]
        addr = prog.elf.sections[f.sec].addr
        out.append({"function": f.name, "section": section, "start": f.start, "end": f.end,
                    "rows": [{"offset": off, "address": addr + off,
                              "where": f"{f.name}+0x{off - f.start:x}",
                              "cfa": rule.cfa_text(), "text": rule.text(),
                              "registers": {reg_name(r): t for r, t in rule.reg_rules()}}
                             for off, rule in entries]})
    return out


def run(args: argparse.Namespace) -> int:
    wanted = set(args.function) if args.function else None
    doc: list[dict[str, Any]] = []
    for path in args.files:
        for obj in load_path(path, args.cflags.split()):
            funcs = rows_by_function(cfa_table(obj.elf, args.profile), wanted)
            doc.append({"file": obj.display, "functions": funcs})
    if wanted is not None:
        found = {f["function"] for d in doc for f in d["functions"]}
        for name in sorted(wanted - found):
            raise InputError(", ".join(args.files), f"no function {name!r}")
    if args.format == "json":
        text = json.dumps(doc, indent=1) + "\n"
    else:
        lines: list[str] = []
        for d in doc:
            if len(doc) > 1 or "(" in d["file"]:
                lines.append(f"{d['file']}:")
            for f in d["functions"]:
                lines.append(f"<{f['function']}>:")
                lines.extend(f"{f['section']}+{r['offset']:x}: {r['text']}" for r in f["rows"])
        text = "".join(ln + "\n" for ln in lines)
    show(text, args.output)
    return EXIT_CLEAN
