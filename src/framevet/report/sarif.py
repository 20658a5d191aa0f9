"""SARIF 2.1.0 as GitHub code scanning consumes it.

Every result has a location (the source line, else the input file with the
instruction as a logical location and its address), a stable fingerprint, and a
rule with markdown help; corrected CFI becomes a SARIF ``fix``.  URIs are relative
to ``--sarif-root`` and carry ``uriBaseId`` so the viewer can resolve them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framevet import __version__, rules
from framevet.findings import Finding
from framevet.report.fingerprint import VERSION, fingerprints, relative_path
from framevet.rules.registry import DOCS, Rule, doc_uri

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
ROOT_ID = "SRCROOT"
_LEVEL = {"error": "error", "warning": "warning", "note": "note"}


#: the environment variable that sets the rule pages' web address (``--rule-docs-url``)
DOCS_URL_ENV = "FRAMEVET_RULE_DOCS_URL"


def rule_docs_url(given: str | None, root: str = ".") -> str | None:
    """Where a browser finds the rule pages (``RULE-ID.md`` is appended): ``given``
    (``--rule-docs-url``), else ``$FRAMEVET_RULE_DOCS_URL``, else, in a GitHub Actions
    job whose checkout holds framevet's pages under ``root``, their blob URL at the
    commit being checked; None: the shipped pages' ``file:`` URIs."""
    url = given or os.environ.get(DOCS_URL_ENV)
    if url:
        return url if url.endswith("/") else url + "/"
    server, repo, sha = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
                                                      "GITHUB_SHA"))
    rel = os.path.relpath(DOCS, os.path.abspath(root))
    if server and repo and sha and not rel.startswith(".."):
        return f"{server}/{repo}/blob/{sha}/{rel.replace(os.sep, '/')}/"
    return None


def sarif(findings: Sequence[Finding], root: str = ".",
          docs_url: str | None = None) -> dict[str, Any]:
    """``docs_url``: the rule pages' web address (see :func:`rule_docs_url`)."""
    base = rule_docs_url(docs_url, root)
    rule_objs = [_rule(r, base) for _, r in sorted(rules.all_rules().items())]
    index = {r["id"]: i for i, r in enumerate(rule_objs)}
    for f in findings:
        if f.rule not in index:
            index[f.rule] = len(rule_objs)
            rule_objs.append({"id": f.rule})
    results = []
    for f, fp in zip(findings, fingerprints(findings, root), strict=True):
        res: dict[str, Any] = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": _LEVEL.get(f.severity, "warning"),
            "message": {"text": _message(f)},
            "locations": [_location(f, root)],
            "partialFingerprints": {VERSION: fp},
        }
        fix = _fix(f, root)
        if fix is not None:
            res["fixes"] = [fix]
        if f.details or f.profile:
            res["properties"] = {k: v for k, v in f.details.items()
                                 if k not in ("fix", "fix_end", "fix_end_at")}
            if f.profile:
                res["properties"]["profile"] = f.profile
        results.append(res)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "framevet", "version": __version__, "semanticVersion": __version__,
                "informationUri": f"{base}index.md" if base else doc_uri(),
                "rules": rule_objs}},
            "originalUriBaseIds": {ROOT_ID: {
                "uri": Path(os.path.abspath(root)).as_uri().rstrip("/") + "/"}},
            "results": results,
        }],
    }


def _message(f: Finding) -> str:
    where = f.location.text() if f.location is not None else ""
    return f"{where}: {f.message}" if where else f.message


def _artifact(path: str, root: str) -> dict[str, Any]:
    return {"uri": relative_path(path.partition("(")[0], root), "uriBaseId": ROOT_ID}


def _location(f: Finding, root: str) -> dict[str, Any]:
    loc: dict[str, Any] = {}
    phys: dict[str, Any]
    if f.source is not None:
        phys = {"artifactLocation": _artifact(f.source[0], root),
                "region": {"startLine": max(1, f.source[1]),
                           "startColumn": f.source_column()}}
    else:
        phys = {"artifactLocation": _artifact(f.file, root)}
        if f.location is not None:
            phys["address"] = {"absoluteAddress": f.location.address,
                               "name": f.location.text()}
    loc["physicalLocation"] = phys
    if f.location is not None:
        loc["logicalLocations"] = [{
            "name": f.location.text(),
            "fullyQualifiedName": f"{f.file}:{f.location.text()}",
            "kind": "function" if f.location.symbol else "module"}]
    return loc


def _rule(r: Rule, base: str | None) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": "".join(p.capitalize() for p in r.id.split("-")),
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.what},
        "help": {"text": r.doc(), "markdown": r.markdown()},
        "helpUri": f"{base}{r.id}.md" if base else doc_uri(r.id),
        "defaultConfiguration": {"level": _LEVEL.get(r.severity, "warning")},
        "properties": {"tags": [r.family]},
    }


def _fix(f: Finding, root: str) -> dict[str, Any] | None:
    """Corrected CFI (``framevet cfi``) as a SARIF fix: the directives to insert before
    the finding's line (and, when the CFI must change back, before a later line)."""
    fix = f.details.get("fix")
    if not fix or f.source is None:
        return None
    edits = [_insert(f.source[1], fix)]
    end_at = str(f.details.get("fix_end_at") or "")
    end_line = end_at.rpartition(":")[2]
    if f.details.get("fix_end") and end_line.isdigit():
        edits.append(_insert(int(end_line), f.details["fix_end"]))
    return {
        "description": {"text": "insert the CFI directives that describe the code"},
        "artifactChanges": [{"artifactLocation": _artifact(f.source[0], root),
                             "replacements": edits}],
    }


def _insert(line: int, directives: list[str]) -> dict[str, Any]:
    line = max(1, line)
    return {"deletedRegion": {"startLine": line, "startColumn": 1, "endLine": line,
                              "endColumn": 1},
            "insertedContent": {"text": "".join(f"\t{t}\n" for t in directives)}}
