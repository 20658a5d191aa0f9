"""Fingerprints: one finding recognised again in a later run of changed code.

A fingerprint hashes what survives unrelated edits: the rule, the input's path, the
function and the message -- not line numbers or offsets, which move whenever code
above changes.  Findings that would hash alike (the same message twice in one
function) are told apart by their order, which edits elsewhere do not change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from framevet.findings import Finding

VERSION = "framevet/v1"


def relative_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` with '/' separators (an archive member keeps its
    ``(member)`` suffix); unchanged when it lies outside ``root``."""
    base, paren, member = path.partition("(")
    rel = os.path.relpath(os.path.abspath(base), os.path.abspath(root))
    if rel.startswith(".."):
        rel = base
    return rel.replace(os.sep, "/") + paren + member


def fingerprints(findings: Sequence[Finding], root: str = ".") -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for f in findings:
        loc = f.location
        scope = (loc.symbol or loc.section) if loc is not None else ""
        key = "\0".join((f.rule, relative_path(f.file, root), scope, f.message))
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(hashlib.sha256(f"{key}\0{n}".encode()).hexdigest()[:32])
    return out
