"""``framevet cfa``: framevet's per-address CFA table, in DWARF terms, function by function."""

from __future__ import annotations

import argparse
import json
from typing import Any

from framevet.api import table_rows
from framevet.cli.common import EXIT_CLEAN, show
from framevet.load import load_path
from framevet.load.errors import InputError
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
    """Each function's rows as plain data (see :func:`framevet.api.table_rows`)."""
    out: dict[str, dict[str, Any]] = {}
    for row in table_rows(table):
        if wanted is not None and row.function not in wanted:
            continue
        f = out.setdefault(row.function, {"function": row.function, "section": row.section,
                                          "rows": []})
        rule = f"cfa={row.cfa}" + "".join(f" {r}={t}" for r, t in row.registers.items())
        f["rows"].append({"offset": row.offset, "address": row.address, "where": row.where,
                          "cfa": row.cfa, "text": rule, "registers": row.registers})
    return list(out.values())


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
