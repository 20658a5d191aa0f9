"""Render findings: framevet text, objtool text, JSON, SARIF 2.1.0, HTML."""

from __future__ import annotations

import html
import json

from framevet.findings import Finding
from framevet.report.sarif import sarif
from framevet.report.text import render_text, sort_findings


def render(findings: list[Finding], fmt: str, explain: bool = False,
           colour: bool = False, root: str = ".") -> str:
    """``findings`` in format ``fmt``; every format but objtool's own is sorted by
    input, then source line or address (objtool's keeps objtool's order)."""
    if fmt == "objtool":
        return "".join(f.objtool_text() + "\n" for f in findings)
    findings = sort_findings(findings)
    if fmt == "json":
        return json.dumps([f.to_json() for f in findings], indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(findings, root), indent=2) + "\n"
    if fmt == "html":
        return html_report(findings)
    return render_text(findings, explain=explain, colour=colour)


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
