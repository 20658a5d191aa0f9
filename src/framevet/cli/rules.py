"""``framevet rules``: list the rules, or print one rule's documentation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framevet.cli.common import EXIT_CLEAN, EXIT_ERROR, show
from framevet.rules import all_rules


def add_parser(sub: Any) -> None:
    r = sub.add_parser("rules", help="list the rules, or document one")
    r.add_argument("rule", nargs="?")
    r.add_argument("--markdown", action="store_true", help="the rule's page in markdown")
    r.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rules = all_rules()
    if args.rule:
        r = rules.get(args.rule)
        if r is None:
            print(f"framevet: error: unknown rule {args.rule!r} (see `framevet rules`)",
                  file=sys.stderr)
            return EXIT_ERROR
        show(r.markdown() if args.markdown else r.doc() + "\n", args.output)
        return EXIT_CLEAN
    width = max(len(k) for k in rules)
    show("".join(f"{rid:<{width}}  {rules[rid].family:<9} {rules[rid].severity:<7} "
                 f"{rules[rid].summary}\n"
                 for rid in sorted(rules, key=lambda k: (rules[k].family, k))), args.output)
    return EXIT_CLEAN
