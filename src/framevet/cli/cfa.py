"""``framevet cfa``: framevet's per-address CFA table, in DWARF terms."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import EXIT_CLEAN
from framevet.load import load_path
from framevet.unwind.cfatable import cfa_table


def add_parser(sub: Any) -> None:
    a = sub.add_parser("cfa", help="print framevet's per-address CFA table (DWARF terms)")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--profile", choices=("kernel", "user"), default="user")
    a.add_argument("--hints", metavar="TOML")
    a.add_argument("--cflags", default="")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in args.files:
        for obj in load_path(path, args.cflags.split()):
            table = cfa_table(obj.elf, args.profile)
            if len(args.files) > 1 or "(" in obj.display:
                print(f"{obj.display}:")
            for rows in table.rows.values():
                for row in rows:
                    print(row.text())
    return EXIT_CLEAN
