"""``framevet abi`` and ``framevet diff``: the emulation commands (framevet.emulate)."""

from __future__ import annotations

import argparse
from typing import Any


def add_emulation_commands(sub: Any) -> None:
    a = sub.add_parser("abi", help="run a function under emulation and check the ABI contract")
    a.add_argument("file", nargs="?", metavar="FILE")
    a.add_argument("--function", "-f", help="function to run")
    a.add_argument("--args", default=None, help="argument spec, e.g. 'ptr:64,int:0..15'")
    a.add_argument("--runs", type=int, default=8)
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--raw", metavar="STUB.bin", help="raw code bytes instead of an ELF file")
    a.add_argument("--base", default="0x400000", help="load address of --raw bytes")
    a.add_argument("--entry", default="0", help="entry offset in --raw bytes")
    a.add_argument("--symbol", action="append", default=[], metavar="NAME=ADDR",
                   help="call target name for --raw stubs")
    a.add_argument("--max-size", type=int, default=None, help="declared stub buffer size")
    a.add_argument("--no-unwind", action="store_true", help="skip unwinding at every step")
    a.add_argument("--format", choices=("text", "json", "sarif", "html"), default="text")
    a.add_argument("--fail-on", choices=("note", "warning", "error", "never"), default="warning")
    a.add_argument("--cflags", default="")
    a.add_argument("--profile", choices=("kernel", "user"), default=None,
                   help="default: kernel for .ko and raw stubs, else user")
    a.add_argument("--hints", metavar="TOML", help="declarations (clobbers, stack_args)")
    a.set_defaults(func=cmd_abi)

    d = sub.add_parser("diff", help="run two versions of a routine on the same random states")
    d.add_argument("a", metavar="A", help="FILE:FUNCTION or "
                   "raw:STUB.bin@BASE[+ENTRY][,NAME=ADDR...][,link=FILE...]")
    d.add_argument("b", metavar="B")
    d.add_argument("--args", default=None)
    d.add_argument("--runs", type=int, default=16)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--format", choices=("text", "json", "sarif", "html"), default="text")
    d.add_argument("--fail-on", choices=("note", "warning", "error", "never"), default="warning")
    d.add_argument("--cflags", default="")
    d.add_argument("--compare", default="abi",
                   help="registers compared: abi (callee-saved + rax/rdx), all, or a list")
    d.add_argument("--profile", choices=("kernel", "user"), default=None)
    d.set_defaults(func=cmd_diff)


def cmd_abi(args: argparse.Namespace) -> int:
    from framevet.cli import _emit, _exit
    from framevet.emulate.cli_glue import run_abi_command

    findings = run_abi_command(args)
    _emit(findings, args.format, None)
    return _exit(findings, 0, args.fail_on)


def cmd_diff(args: argparse.Namespace) -> int:
    import sys

    from framevet.cli import _emit, _exit
    from framevet.emulate.cli_glue import run_diff_command

    findings = run_diff_command(args)
    _emit(findings, args.format, None)
    if not any(f.rule == "diff-divergence" for f in findings):
        print(f"framevet: no divergence between {args.a} and {args.b} in {args.runs} runs",
              file=sys.stderr)
    return _exit(findings, 0, args.fail_on)
