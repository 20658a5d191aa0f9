"""``framevet config FILE``: the declarations in force for FILE, and where they come from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from framevet.cfg.declarations import read_declarations
from framevet.cfg.sidecar import find_sidecar
from framevet.cli.common import EXIT_CLEAN, show
from framevet.load import load_path
from framevet.load.elf import STT_FUNC


def add_parser(sub: Any) -> None:
    c = sub.add_parser("config", help="print the declarations (framevet.toml) in force for FILE")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--hints", metavar="TOML", help="declarations file (default: framevet.toml "
                   "in FILE's folder or the nearest parent that has one)")
    c.add_argument("--cflags", default="", help="extra flags for assembling .S inputs")
    c.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    c.set_defaults(func=run)


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str | int | bool | list) else repr(v)


def _table(name: str, spec: dict[str, Any], where: str, out: list[str]) -> None:
    out.append(f"[{_key(name)}]" + (f"  # {where}" if where else ""))
    nested = []
    for k, v in spec.items():
        if isinstance(v, dict):
            nested.append((k, v))
        else:
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in nested:
        _table(f"{name}.{k}", v, "", out)


def _key(name: str) -> str:
    return ".".join(p if p.replace("_", "").replace("-", "").isalnum() else json.dumps(p)
                    for p in name.split("."))


def run(args: argparse.Namespace) -> int:
    path = args.hints or find_sidecar(args.file)
    objs = load_path(args.file, args.cflags.split())
    if path is None:
        show(f"# {args.file}: no framevet.toml in its folder or any parent; nothing "
             "declared\n", args.output)
        return EXIT_CLEAN
    sc, functions, _ = read_declarations(path)
    defined = {s.name for o in objs for s in o.elf.symbols if s.defined and s.type == STT_FUNC}
    out = [f"# declarations in force for {args.file}, from {path}"]
    for name, spec in sc.tables.items():
        if name in functions and name not in defined:
            continue
        out.append("")
        _table(name, spec, f"{path}:{sc.line(name)}", out)
    unused = sorted(n for n in functions if n not in defined)
    if unused:
        out.append("")
        out.append(f"# also declared there, for functions {args.file} does not define: "
                   + ", ".join(unused))
    show("\n".join(out) + "\n", args.output)
    return EXIT_CLEAN
