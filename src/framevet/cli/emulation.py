"""What ``framevet abi`` and ``framevet diff`` do with their command line.

The parsers live in :mod:`framevet.cli.abi` and :mod:`framevet.cli.diff`; they hand their
``argparse.Namespace`` here.  Attributes read (missing ones take the default):

``framevet abi``: ``file``, ``function``, ``args``, ``runs``, ``seed``, ``raw``,
``base``, ``entry``, ``symbol`` (list of NAME=ADDR), ``max_size``,
``no_unwind``, ``cflags``, and if present ``profile`` (default: ``kernel`` for
``.ko`` and raw stubs, else ``user``), ``hints`` (TOML sidecar, default
``framevet.toml`` beside FILE: ``clobbers`` and ``stack_args`` of each
function are honoured), ``compare``.  With ``--raw``, FILE is optional and,
when given, is linked in: ``--symbol`` names it defines run its code.

``framevet diff``: ``a``, ``b`` — each ``FILE:FUNCTION`` or
``raw:STUB.bin@BASE[+ENTRY][,NAME=ADDR...][,link=FILE...]`` — plus ``args``,
``runs``, ``seed``, ``cflags``, ``compare`` (``abi``/``all``/comma-separated
registers), ``profile``.

Findings come back as :class:`framevet.findings.Finding` so the
common renderers (text/JSON/SARIF/HTML) apply; a trace (diff, faults) is in
``details["trace"]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cfg.declarations import read_declarations as read_function_declarations
from framevet.cfg.sidecar import find_sidecar
from framevet.decode import insn as d
from framevet.emulate import (
    Finding,
    RawTarget,
    RunStats,
    diff,
    parse_int,
    parse_symbols,
    parse_target,
    run_abi,
    run_raw,
)
from framevet.emulate.avx import dirty_exits
from framevet.emulate.writeorder import read_declarations, run_write_order
from framevet.findings import Finding as ReportFinding
from framevet.findings import Location
from framevet.load import LoadedObject, load_path
from framevet.load.errors import InputError
from framevet.load.object import read_file


def to_report(f: Finding) -> Any:
    """This package's :class:`Finding` as a :class:`framevet.findings.Finding`."""
    loc = None
    if f.section or f.address is not None:
        sec_off = f.section_offset if f.section_offset is not None else f.offset
        loc = Location(f.section or "", sec_off, f.symbol or None, f.offset,
                       f.address if f.address is not None else 0)
    details: dict[str, Any] = {}
    if f.trace:
        details["trace"] = list(f.trace)
    return ReportFinding(f.file, f.rule, f.message, f.severity, loc, f.source, details)


def _cflags(args: argparse.Namespace) -> list[str]:
    return str(getattr(args, "cflags", "") or "").split()


def read_sidecar(path: str | None, near: str | None) -> tuple[dict[str, list[str]],
                                                              dict[str, int]]:
    """``clobbers`` and ``stack_args`` per function from the declarations (``--hints``,
    else the ``framevet.toml`` nearest to ``near``), validated as ``check`` does."""
    if path is None and near:
        path = find_sidecar(near)
    if path is None:
        return {}, {}
    _, functions, _ = read_function_declarations(path)
    clobbers = {name: [d.REG_NAMES[r] for r in sorted(decl.clobbers)]
                for name, decl in functions.items() if decl.clobbers}
    stack = {name: decl.stack_args for name, decl in functions.items() if decl.stack_args}
    return clobbers, stack


def emulator_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--emulator``, ``--cpu`` and ``--abi`` as keyword arguments of the emulate API."""
    return {"emulator": getattr(args, "emulator", None) or "auto",
            "cpu": getattr(args, "cpu", None) or None}


def _profile(args: argparse.Namespace, default: str) -> str:
    p = getattr(args, "profile", None)
    return p if p in ("user", "kernel") else default


def run_abi_command(args: argparse.Namespace) -> list[Any]:
    """``framevet abi``: findings for the CLI renderers."""
    file = getattr(args, "file", None)
    runs, seed = int(getattr(args, "runs", 16)), int(getattr(args, "seed", 0))
    unwind = not getattr(args, "no_unwind", False)
    clobbers, stack = read_sidecar(getattr(args, "hints", None), file or getattr(args, "raw",
                                                                                 None))
    raw = getattr(args, "raw", None)
    values = parse_values(getattr(args, "value", []) or [])
    if getattr(args, "symbol", None) and not raw:
        raise InputError("--symbol", "names call targets of a raw stub; it needs --raw STUB.bin")
    if raw:
        link_with: list[LoadedObject] = load_path(file, _cflags(args)) if file else []
        found = run_raw(read_file(raw), parse_int(str(getattr(args, "base", "0")), "--base"),
                        parse_int(str(getattr(args, "entry", "0")), "--entry"),
                        symbols=parse_symbols(getattr(args, "symbol", []) or []),
                        max_size=getattr(args, "max_size", None), args_spec=args.args,
                        runs=runs, seed=seed, unwind=unwind, link_with=link_with, path=raw,
                        profile=_profile(args, "kernel"), clobbers=clobbers, values=values,
                        abi=getattr(args, "abi", None) or "sysv", **emulator_options(args))
    else:
        if not file:
            raise InputError("abi", "give FILE --function NAME, or --raw STUB.bin --base ADDR")
        function = getattr(args, "function", None)
        if not function:
            raise InputError(file, "--function NAME is required")
        decls, declared = read_declarations(getattr(args, "hints", None), file)
        objs = load_path(file, _cflags(args))
        profile = _profile(args, "kernel" if file.endswith(".ko") else "user")
        stats = RunStats()
        found = run_abi(objs, function, args.args, runs=runs, seed=seed, unwind=unwind,
                        profile=profile, clobbers=clobbers, stack_args=stack.get(function, 0),
                        stats=stats, abi=getattr(args, "abi", None) or "sysv", values=values,
                        **emulator_options(args))
        found += run_write_order(objs, function, decls, declared, runs=runs, seed=seed,
                                 profile=profile, args_spec=args.args)
        out = [to_report(f) for f in found]
        if stats.backend == "unicorn":   # Bochs observes the upper halves in the registers
            out += avx_findings(objs, function, profile)
        return out
    return [to_report(f) for f in found]


def parse_values(items: list[str]) -> dict[str, int]:
    """``--value SYMBOL=VALUE`` items: the 8-byte initial value of undefined data symbols."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError("--value", f"expected SYMBOL=VALUE, got {item!r}")
        out[name.strip()] = parse_int(value.strip(), "--value")
    return out


def avx_findings(objs: list[LoadedObject], function: str, profile: str) -> list[Any]:
    """What unicorn cannot run: AVX upper halves left dirty, checked on the code (Bochs
    runs AVX code and observes the registers instead)."""
    from framevet.pipeline import Options, analyse

    out: list[Any] = []
    for obj in objs:
        ctx = analyse(obj, Options(profile=profile, orc_only=True))
        prog = ctx.prog
        for fi, f in enumerate(prog.functions):
            if f.name != function or not f.canonical or f.parent != fi:
                continue
            for g, src in dirty_exits(prog, fi):
                what = {d.RETURN: "return", d.CALL: "call", d.CALL_DYNAMIC: "call"}.get(
                    prog.kind[g], "tail call")
                here = ctx.symbols.locate(prog.sec_of[src], prog.off[src]).text()
                out.append(ctx.finding(
                    g, "abi-violation",
                    f"{what} with AVX upper halves dirty (ymm/zmm written at {here}, "
                    "no vzeroupper on the way): SSE code after it pays the transition "
                    "penalty", static=True))
    return out


def parse_side(text: str, cflags: list[str]) -> Any:
    """A diff side: ``FILE:FUNCTION`` or ``raw:STUB.bin@BASE[+ENTRY][,NAME=ADDR][,link=FILE]``."""
    if not text.startswith("raw:"):
        return parse_target(text, cflags)
    head, *extras = text[4:].split(",")
    path, at, where = head.rpartition("@")
    if not at or not path:
        raise InputError(text, "expected raw:STUB.bin@BASE[+ENTRY][,NAME=ADDR...][,link=FILE]")
    base_s, plus, entry_s = where.partition("+")
    symbols: list[str] = []
    link_with: list[LoadedObject] = []
    for e in extras:
        if e.startswith("link="):
            link_with += load_path(e[5:], cflags)
        else:
            symbols.append(e)
    return RawTarget(path, parse_int(base_s, "--base"),
                     parse_int(entry_s, "--entry") if plus else 0, parse_symbols(symbols),
                     link_with=link_with)


def run_diff_command(args: argparse.Namespace) -> list[Any]:
    """``framevet diff``: findings for the CLI renderers."""
    cflags = _cflags(args)
    a, b = parse_side(args.a, cflags), parse_side(args.b, cflags)
    compare = str(getattr(args, "compare", None) or "abi")
    comp: str | list[str] = compare if compare in ("abi", "all") else compare.split(",")
    both_raw = isinstance(a, RawTarget) and isinstance(b, RawTarget)
    found = diff(a, b, runs=int(getattr(args, "runs", 16)), seed=int(getattr(args, "seed", 0)),
                 args_spec=getattr(args, "args", None), compare=comp, cflags=cflags,
                 profile=_profile(args, "kernel" if both_raw else "user"),
                 values=parse_values(getattr(args, "value", []) or []), **emulator_options(args))
    return [to_report(f) for f in found]
