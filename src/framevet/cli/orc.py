"""``framevet orc``: generate, dump, write or read kernel ORC unwind data."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from framevet.cli.common import EXIT_CLEAN, EXIT_FINDINGS, add_common
from framevet.load import load_path
from framevet.load.errors import InputError
from framevet.pipeline import Context, Options, analyse
from framevet.unwind.orc import already_has_orc, dump_text, generate, unknown_cfa_base
from framevet.unwind.orcread import dump_existing
from framevet.unwind.orcwrite import orc_object, write_atomically


def add_parser(sub: Any) -> None:
    o = sub.add_parser("orc", help="generate kernel ORC unwind data like objtool --orc")
    o.add_argument("file", metavar="FILE")
    o.add_argument("--dump", action="store_true", help="print it as objtool --dump=orc does")
    o.add_argument("-o", "--output", metavar="OUT", help="write FILE plus ORC sections to OUT")
    o.add_argument("--in-place", action="store_true", help="rewrite FILE (atomically)")
    o.add_argument("--read", action="store_true",
                   help="print the ORC sections FILE already has (objtool --dump=orc)")
    add_common(o)
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not (args.dump or args.output or args.in_place or args.read):
        raise InputError(args.file, "nothing to do: give --dump, --read, -o OUT or --in-place")
    objs = load_path(args.file, args.cflags.split())
    if len(objs) != 1:
        raise InputError(args.file, "orc works on one object, not an archive")
    obj = objs[0]
    if args.read:
        sys.stdout.write(dump_existing(obj.elf))
        return EXIT_CLEAN
    ctx = analyse(obj, Options(profile=args.profile, all_warnings=False, hints_file=args.hints,
                               objtool_only=True, orc_only=True))
    rows = generate(ctx.prog, ctx.result)
    for p in ctx.prog.problems:     # (a linked image goes on without what it left out)
        if p.rule == "code-left-out":
            print(ctx.finding_at(p.sec, p.off, p.rule, p.message).text(), file=sys.stderr)
    if not rows and _refused(ctx):
        return EXIT_FINDINGS
    if args.dump:
        sys.stdout.write(dump_text(ctx.prog, rows))
    if args.output or args.in_place:
        data = orc_object(obj.elf, rows)
        target = args.file if args.in_place else args.output
        if not args.in_place and os.path.abspath(target) == os.path.abspath(args.file):
            raise InputError(args.file, "refusing to overwrite the input; use --in-place")
        try:
            write_atomically(target, data, args.file if args.in_place else None)
        except OSError as exc:
            raise InputError(target, f"cannot write: {exc.strerror or exc}") from None
    return EXIT_CLEAN


def _refused(ctx: Context) -> bool:
    """Say why no ORC was generated, as objtool would (it abandons the file)."""
    prog = ctx.prog
    reason = None
    if prog.aborted is not None:
        p = prog.aborted
        reason = ctx.finding_at(p.sec, p.off, p.rule, p.message)
    else:
        bad = unknown_cfa_base(prog, ctx.result)
        if bad is not None:
            g, base = bad
            reason = ctx.finding(g, "unknown-cfa-base-reg", f"unknown CFA base reg {base}")
        elif already_has_orc(prog):
            reason = ctx.finding(-1, "output-section-exists",
                                 "file already has .orc_unwind section, skipping")
    if reason is None:
        return False
    print(reason.text() + " (no ORC generated)", file=sys.stderr)
    return True
