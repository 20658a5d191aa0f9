"""Findings a team has already looked at: baselines and inline suppressions.

A baseline (``--write-baseline FILE``) records the fingerprints of today's
findings; ``--baseline FILE`` then reports only findings that are not in it, so a
project adopts framevet without fixing its past first.  In an assembly source, a
``framevet: ignore[RULE,...]`` comment on a line suppresses those rules' findings
reported at that line.
"""

from __future__ import annotations

import json
import linecache
import re
from collections.abc import Sequence
from typing import Any

from framevet.findings import Finding
from framevet.load.errors import InputError
from framevet.report.fingerprint import VERSION, fingerprints

_IGNORE = re.compile(r"framevet:\s*ignore\[([^\]]*)\]")


def inline_ignored(f: Finding) -> bool:
    """Whether the source line of ``f`` carries ``framevet: ignore[...]`` naming its rule."""
    if f.source is None:
        return False
    m = _IGNORE.search(linecache.getline(f.source[0], f.source[1]))
    if m is None:
        return False
    return f.rule in {r.strip() for r in m.group(1).split(",")}


def inline_rule_ids(path: str) -> list[tuple[int, str]]:
    """(line, rule id) of every inline suppression in a source file."""
    out: list[tuple[int, str]] = []
    for n, line in enumerate(linecache.getlines(path), 1):
        for m in _IGNORE.finditer(line):
            out.extend((n, r.strip()) for r in m.group(1).split(",") if r.strip())
    return out


def write_baseline(path: str, findings: Sequence[Finding], root: str) -> None:
    entries = [{"fingerprint": fp, "rule": f.rule, "file": f.file,
                "where": f.location.text() if f.location else "", "message": f.message}
               for f, fp in zip(findings, fingerprints(findings, root), strict=True)]
    data = {"version": VERSION, "findings": entries}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def read_baseline(path: str) -> set[str]:
    try:
        with open(path) as fh:
            data: Any = json.load(fh)
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not a framevet baseline: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise InputError(path, f"not a framevet baseline (expected version {VERSION!r})")
    return {e["fingerprint"] for e in data.get("findings", ()) if isinstance(e, dict)
            and isinstance(e.get("fingerprint"), str)}


def new_findings(findings: Sequence[Finding], known: set[str], root: str) -> list[Finding]:
    return [f for f, fp in zip(findings, fingerprints(findings, root), strict=True)
            if fp not in known]
