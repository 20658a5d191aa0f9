"""``framevet abi``: run a function or a raw stub under emulation and check the ABI contract."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import (
    add_emulator_arguments,
    add_report_options,
    emit,
    exit_code,
    known_findings,
)


def add_parser(sub: Any) -> None:
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
    a.add_argument("--value", action="append", default=[], metavar="SYMBOL=VALUE",
                   help="initial 8-byte value of an undefined data symbol (e.g. glibc's "
                        "__x86_shared_non_temporal_threshold=0xc0000); repeatable")
    add_report_options(a)
    a.add_argument("--cflags", default="")
    a.add_argument("--profile", choices=("kernel", "user"), default=None,
                   help="default: kernel for .ko and raw stubs, else user")
    a.add_argument("--hints", metavar="TOML", help="declarations (clobbers, stack_args)")
    add_emulator_arguments(a)
    a.add_argument("--abi", choices=("sysv", "ms"), default="sysv",
                   help="calling convention: ms also requires xmm6-xmm15 back")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here: unicorn is slow to load, and only the emulation commands need it
    from framevet.cli.emulation import run_abi_command

    findings = run_abi_command(args)
    findings, suppressed = known_findings(findings, args, [args.file or ""])
    emit(findings, args, 1, suppressed)
    return exit_code(findings, 0, args.fail_on, args)
