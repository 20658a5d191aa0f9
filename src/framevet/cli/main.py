"""Command line: ``framevet check|orc|cfa|cfi|abi|diff|rules|scan``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from framevet import __version__
from framevet.cli import abi, cfa, cfi, check, completion, config, diff, orc, rules, scan
from framevet.cli.common import EXIT_CLEAN, EXIT_ERROR
from framevet.load.errors import InputError

COMMANDS = (check, orc, cfa, cfi, abi, diff, rules, scan, config, completion)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_CLEAN
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        where = getattr(args, "file", None) or " ".join(getattr(args, "files", []) or [])
        print(f"{where or 'framevet'}: error: internal error ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="framevet", description="Verify stack-frame and register discipline of x86-64 "
        "machine code: objtool-compatible checks and ORC, DWARF CFI validation, emulation.")
    p.add_argument("--version", action="version", version=f"framevet {__version__}")
    sub = p.add_subparsers(dest="command")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
