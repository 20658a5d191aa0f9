"""Render findings: framevet text, objtool text, JSON, SARIF 2.1.0, HTML."""

from __future__ import annotations

import json

from framevet.findings import Finding
from framevet.report.html import Listings, html_report
from framevet.report.sarif import sarif
from framevet.report.text import render_text, sort_findings


def render(findings: list[Finding], fmt: str, explain: bool = False,
           colour: bool = False, root: str = ".", listings: Listings | None = None,
           docs_url: str | None = None) -> str:
    """``findings`` in format ``fmt``; every format but objtool's own is sorted by
    input, then source line or address (objtool's keeps objtool's order)."""
    if fmt == "objtool":
        return "".join(f.objtool_text() + "\n" for f in findings)
    findings = sort_findings(findings)
    if fmt == "json":
        return json.dumps([f.to_json() for f in findings], indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(findings, root, docs_url), indent=2) + "\n"
    if fmt == "html":
        return html_report(findings, listings)
    return render_text(findings, explain=explain, colour=colour)
