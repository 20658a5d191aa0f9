"""Render findings: framevet text, objtool text, JSON, SARIF 2.1.0, HTML."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from framevet import __version__, rules
from framevet.findings import Finding
from framevet.report.text import render_text, sort_findings

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "note": "note"}


def render(findings: list[Finding], fmt: str, explain: bool = False,
           colour: bool = False) -> str:
    """``findings`` in format ``fmt``; every format but objtool's own is sorted by
    input, then source line or address (objtool's keeps objtool's order)."""
    if fmt == "objtool":
        return "".join(f.objtool_text() + "\n" for f in findings)
    findings = sort_findings(findings)
    if fmt == "json":
        return json.dumps([f.to_json() for f in findings], indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(findings), indent=2) + "\n"
    if fmt == "html":
        return html_report(findings)
    return render_text(findings, explain=explain, colour=colour)


def sarif(findings: Iterable[Finding]) -> dict[str, Any]:
    findings = list(findings)
    used = sorted({f.rule for f in findings})
    known = rules.all_rules()
    rule_objs = []
    for rid in sorted(set(known) | set(used)):
        r = known.get(rid)
        obj: dict[str, Any] = {"id": rid}
        if r is not None:
            obj["shortDescription"] = {"text": r.summary}
            obj["fullDescription"] = {"text": r.what}
            obj["help"] = {"text": f"Why: {r.why}\nFix: {r.fix}"}
            obj["defaultConfiguration"] = {"level": _SARIF_LEVEL.get(r.severity, "warning")}
        rule_objs.append(obj)
    index = {r["id"]: i for i, r in enumerate(rule_objs)}
    results = []
    for f in findings:
        res: dict[str, Any] = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": _SARIF_LEVEL.get(f.severity, "warning"),
            "message": {"text": f.message},
        }
        locs: list[dict[str, Any]] = []
        if f.source is not None:
            locs.append({"physicalLocation": {
                "artifactLocation": {"uri": f.source[0]},
                "region": {"startLine": max(1, f.source[1])}}})
        elif f.location is not None:
            locs.append({"physicalLocation": {
                "artifactLocation": {"uri": f.file.split("(")[0]},
                "address": {"absoluteAddress": f.location.address,
                            "name": f.location.text()}}})
        if f.location is not None:
            if locs:
                locs[0]["logicalLocations"] = [{
                    "name": f.location.symbol or f.location.section,
                    "fullyQualifiedName": f"{f.file}:{f.location.text()}",
                    "kind": "function" if f.location.symbol else "module"}]
        else:
            locs.append({"physicalLocation": {"artifactLocation": {"uri": f.file.split("(")[0]}}})
        res["locations"] = locs
        if f.details:
            res["properties"] = f.details
        results.append(res)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "framevet", "version": __version__,
                "informationUri": "https://example.invalid/framevet",
                "rules": rule_objs}},
            "results": results,
        }],
    }


def html_report(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        where = f.location.text() if f.location else ""
        src = f"{f.source[0]}:{f.source[1]}" if f.source else ""
        rows.append(
            f"<tr class='{html.escape(f.severity)}'><td>{html.escape(f.file)}</td>"
            f"<td><code>{html.escape(where)}</code></td><td>{html.escape(src)}</td>"
            f"<td>{html.escape(f.severity)}</td><td><code>{html.escape(f.rule)}</code></td>"
            f"<td>{html.escape(f.message)}</td></tr>")
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.rule] = counts.get(f.rule, 0) + 1
    summary = "".join(f"<li><code>{html.escape(k)}</code>: {v}</li>"
                      for k, v in sorted(counts.items()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>framevet report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: .3em .5em; text-align: left; vertical-align: top; }}
tr.error td {{ background: #fde8e8; }} tr.warning td {{ background: #fff6dd; }}
</style></head><body>
<h1>framevet report</h1>
<p>{len(findings)} finding(s).</p><ul>{summary}</ul>
<table><tr><th>file</th><th>where</th><th>source</th><th>severity</th><th>rule</th>
<th>message</th></tr>
{''.join(rows)}
</table></body></html>
"""
