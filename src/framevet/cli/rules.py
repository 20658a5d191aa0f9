"""``framevet rules``: list the rules, or print one rule's documentation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framevet.cli.common import EXIT_CLEAN, EXIT_ERROR
from framevet.rules import all_rules


def add_parser(sub: Any) -> None:
    r = sub.add_parser("rules", help="list the rules, or document one")
    r.add_argument("rule", nargs="?")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rules = all_rules()
    if args.rule:
        r = rules.get(args.rule)
        if r is None:
            print(f"framevet: error: unknown rule {args.rule!r} (see `framevet rules`)",
                  file=sys.stderr)
            return EXIT_ERROR
        print(r.doc())
        return EXIT_CLEAN
    width = max(len(k) for k in rules)
    for rid in sorted(rules, key=lambda k: (rules[k].family, k)):
        r = rules[rid]
        print(f"{rid:<{width}}  {r.family:<9} {r.severity:<7} {r.summary}")
    return EXIT_CLEAN
