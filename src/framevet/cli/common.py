"""What every command shares: exit codes, the shared options, writing a report."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Any

from framevet.findings import Finding
from framevet.load.errors import InputError
from framevet.load.inputs import ASM_SUFFIXES
from framevet.report.formats import render
from framevet.report.html import Listings
from framevet.report.suppress import (
    inline_ignored,
    inline_rule_ids,
    new_findings,
    read_baseline,
    write_baseline,
)
from framevet.report.text import sort_findings, summary
from framevet.rules import all_rules

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
_SEVERITY_RANK = {"note": 0, "warning": 1, "error": 2}
FAIL_ON = ("note", "warning", "error", "never")
FORMATS = ("text", "json", "sarif", "html")


def add_common(p: argparse.ArgumentParser, profile: str = "kernel") -> None:
    """--profile, --hints and --cflags, as ``check`` and ``orc`` take them (``check``:
    the profile is chosen from each input unless --profile says otherwise)."""
    if profile == "auto":
        p.add_argument("--profile", choices=("auto", "kernel", "user"), default="auto",
                       help="conventions to check against (default: kernel for kernel "
                       "objects, user for any other ELF file)")
    else:
        p.add_argument("--profile", choices=("kernel", "user"), default=profile)
    p.add_argument("--hints", metavar="TOML", help="declarations (default: framevet.toml beside "
                   "the input)")
    p.add_argument("--cflags", default="", help="extra flags for assembling .S inputs")


def add_report_options(p: argparse.ArgumentParser, formats: tuple[str, ...] = FORMATS,
                       explain: bool = False) -> None:
    """--format, -o, --fail-on, --quiet and --color: how a command reports findings."""
    p.add_argument("--format", choices=formats, default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of "
                   "stdout")
    p.add_argument("--fail-on", choices=FAIL_ON, default="warning",
                   help="exit 1 when a finding is at least this severe (default: warning)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print the findings and nothing else (no summary, no progress bar)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text report (auto: on a terminal, unless NO_COLOR is set)")
    p.add_argument("--sarif-root", metavar="DIR", default=".",
                   help="SARIF URIs are relative to DIR (uriBaseId SRCROOT; default: the "
                        "current directory), as GitHub code scanning wants the repository root")
    p.add_argument("--rule-docs-url", metavar="URL",
                   help="SARIF helpUri: the rule pages' web address, RULE-ID.md appended "
                        "(default: $FRAMEVET_RULE_DOCS_URL; see docs/ci.md)")
    p.add_argument("--baseline", metavar="FILE",
                   help="report only findings that are not in this baseline")
    p.add_argument("--write-baseline", metavar="FILE",
                   help="record today's findings (by fingerprint) in FILE and exit 0")
    if explain:
        p.add_argument("--explain", action="store_true",
                       help="under each finding, the paths that lead to it with the stack "
                            "state at every instruction, and the follow-on findings")


def _colour(args: argparse.Namespace) -> bool:
    how = getattr(args, "color", "auto")
    if how != "auto":
        return bool(how == "always")
    return (getattr(args, "output", None) is None and sys.stdout.isatty()
            and not os.environ.get("NO_COLOR"))


def write_output(path: str, text: str) -> None:
    """Write a report; a path that cannot be written is the user's error, named."""
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise InputError(path, f"cannot write the report: {exc.strerror or exc}") from None


def known_findings(findings: list[Finding], args: argparse.Namespace,
                   sources: list[str]) -> tuple[list[Finding], int]:
    """The findings left after inline ``framevet: ignore[RULE]`` comments and
    ``--baseline``, and how many those suppressed; ``--write-baseline`` records them."""
    for path in sources:
        if path.endswith(ASM_SUFFIXES):
            known = all_rules()
            for line, rid in inline_rule_ids(path):
                if rid not in known:
                    print(f"{path}:{line}: warning: unknown rule id {rid!r} in "
                          "framevet: ignore[...]", file=sys.stderr)
    # (the order is the renderer's business: objtool's format keeps objtool's order)
    kept = [f for f in findings if not inline_ignored(f)]
    root = getattr(args, "sarif_root", ".")
    if getattr(args, "write_baseline", None):
        try:
            write_baseline(args.write_baseline, sort_findings(kept), root)
        except OSError as exc:
            raise InputError(args.write_baseline, f"cannot write the baseline: "
                             f"{exc.strerror or exc}") from None
    if getattr(args, "baseline", None):
        new = {id(f) for f in new_findings(sort_findings(kept), read_baseline(args.baseline),
                                           root)}
        kept = [f for f in kept if id(f) in new]
    return kept, len(findings) - len(kept)


def show(text: str, output: str | None) -> None:
    """``text`` to ``-o FILE``, else stdout."""
    if output:
        write_output(output, text)
    else:
        sys.stdout.write(text)


def emit(findings: list[Finding], args: argparse.Namespace, inputs: int = 1,
         suppressed: int = 0, errors: int = 0, listings: Listings | None = None) -> None:
    """Render ``findings`` as ``args`` asks, to ``-o FILE`` or stdout; the text format
    ends with a one-line summary on stderr (not with ``--quiet``, and not after an
    input error, whose one line is then all stderr says)."""
    fmt = getattr(args, "format", "text")
    text = render(findings, fmt, explain=bool(getattr(args, "explain", False)),
                  colour=fmt == "text" and _colour(args),
                  root=getattr(args, "sarif_root", "."), listings=listings,
                  docs_url=getattr(args, "rule_docs_url", None))
    output = getattr(args, "output", None)
    if output:
        write_output(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if fmt == "text" and not getattr(args, "quiet", False) and not errors:
        print(summary(findings, inputs, suppressed), file=sys.stderr)


def rule_ids(text: str, option: str) -> frozenset[str]:
    """Comma-separated rule ids, every one of them known; a typo is an error, not a rule
    silently left on."""
    ids = frozenset(x.strip() for x in text.split(",") if x.strip())
    known = all_rules()
    for rid in sorted(ids):
        if rid not in known:
            close = difflib.get_close_matches(rid, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (see `framevet rules`)"
            raise InputError(option, f"unknown rule id {rid!r}{hint}")
    return ids


def exit_code(findings: list[Any], errors: int, fail_on: str,
              args: argparse.Namespace | None = None) -> int:
    """2 after an input error, 1 for a finding at ``fail_on`` or worse, else 0 (also
    after ``--write-baseline``: the findings are recorded, not failed on)."""
    if errors:
        return EXIT_ERROR
    if fail_on == "never" or getattr(args, "write_baseline", None):
        return EXIT_CLEAN
    rank = _SEVERITY_RANK[fail_on]
    if any(_SEVERITY_RANK.get(f.severity, 1) >= rank for f in findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


#: ``--cpu`` choices (framevet.emulate.bxlib.CPU_MODELS; listed here so that building the
#: parser does not import the emulators)
CPU_CHOICES = ("sandybridge", "ivybridge", "haswell", "broadwell", "ryzen", "skylake-x",
               "cannonlake", "icelake", "tigerlake", "sapphirerapids", "arrowlake")


def add_emulator_arguments(p: Any) -> None:
    """``--emulator`` and ``--cpu`` of ``framevet abi`` and ``framevet diff``."""
    p.add_argument("--emulator", choices=("auto", "unicorn", "bochs"), default="auto",
                   help="unicorn, or Bochs (AVX/AVX2/AVX-512); auto: Bochs when the code "
                   "has AVX instructions unicorn cannot run")
    p.add_argument("--cpu", choices=CPU_CHOICES, default=None, metavar="MODEL",
                   help="Bochs CPU model cpuid reports (implies --emulator bochs; default "
                   "tigerlake): " + ", ".join(CPU_CHOICES))
