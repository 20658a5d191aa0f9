"""The HTML report: one self-contained page a reviewer reads in a browser.

One section per function with findings (every function with ``--all``): its
annotated disassembly (address, bytes, instruction, CFA and saved registers, source
line), the findings inline under their instruction with the paths that lead there
highlighted, an SVG plot of the CFA offset along the function, and the emulation
trace or corrected CFI a finding carries.  A filter by rule and severity and a
grouping by function or by rule run in the page itself (no network, no files
beside it); the filter also reads ``#rule=ID&severity=S`` from the address.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Sequence
from typing import Any

from framevet import __version__
from framevet.findings import Finding
from framevet.report.text import detail_lines, sort_findings

#: one listing row: section, offset, address, bytes (hex), insn, state, cfa (int or
#: None when undefined), cfa_base (register name), line, source text
Row = dict[str, Any]
#: (input, function) -> its rows
Listings = dict[tuple[str, str], list[Row]]

_PLOT_H = 110


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def html_report(findings: Sequence[Finding], listings: Listings | None = None) -> str:
    findings = sort_findings(findings)
    listings = listings or {}
    by_func: dict[tuple[str, str], list[Finding]] = {}
    loose: list[Finding] = []
    for f in findings:
        key = (f.file, f.location.symbol or "") if f.location is not None else None
        if key is not None and key in listings:
            by_func.setdefault(key, []).append(f)
        else:
            loose.append(f)
    sections = [_function(key, listings[key], by_func.get(key, []))
                for key in sorted(listings, key=lambda k: (k[0], _first_addr(listings[k])))]
    rules = sorted({f.rule for f in findings})
    sevs = [s for s in ("error", "warning", "note") if any(f.severity == s for f in findings)]
    counts = ", ".join(f"{n} {s}{'s' if n != 1 else ''}"
                       for s in sevs if (n := sum(f.severity == s for f in findings)))
    return _PAGE.format(
        version=_e(__version__), total=len(findings), counts=_e(counts or "no findings"),
        rule_options="".join(f"<option value='{_e(r)}'>{_e(r)}</option>" for r in rules),
        sev_boxes="".join(f"<label><input type='checkbox' class='sev' value='{s}' checked> {s}"
                          f"</label> " for s in ("error", "warning", "note")),
        functions="\n".join(sections), loose=_loose(loose), by_rule=_by_rule(findings),
        style=_STYLE, script=_SCRIPT)


def _first_addr(rows: list[Row]) -> int:
    return rows[0]["address"] if rows else 0


def _function(key: tuple[str, str], rows: list[Row], found: list[Finding]) -> str:
    file, name = key
    at: dict[tuple[str, int], list[Finding]] = {}
    path1: set[tuple[str, int]] = set()
    path2: set[tuple[str, int]] = set()
    for f in found:
        assert f.location is not None
        at.setdefault((f.location.section, f.location.offset), []).append(f)
        for i, p in enumerate((f.details.get("explain") or {}).get("paths", ())):
            for s in p["steps"]:
                if "section" in s:
                    (path2 if i else path1).add((s["section"], s["offset"]))
    body = []
    for r in rows:
        place = (r["section"], r["offset"])
        here = at.get(place, [])
        cls = ["insn"]
        if place in path1:
            cls.append("path1")
        if place in path2:
            cls.append("path2")
        if here:
            cls.append("has-finding")
        line = f"{r['line']}" if r.get("line") else ""
        src = r.get("source") or ""
        body.append(
            f"<tr class='{' '.join(cls)}' id='{_e(_anchor(file, r['section'], r['offset']))}'>"
            f"<td class='addr'>{r['address']:#x}</td><td class='bytes'>{_e(r['bytes'])}</td>"
            f"<td class='asm'>{_e(r['insn'])}</td><td class='state'>{_e(r['state'])}</td>"
            f"<td class='line'>{_e(line)}</td><td class='src'>{_e(src)}</td></tr>")
        for f in here:
            body.append(_inline(f))
    rules = " ".join(sorted({f.rule for f in found}))
    sevs = " ".join(sorted({f.severity for f in found}))
    return (f"<section class='function' data-rules='{_e(rules)}' data-severities='{_e(sevs)}'>"
            f"<h2><code>{_e(name)}</code> <span class='file'>{_e(file)}</span></h2>"
            f"{_plot(rows, found)}"
            "<table class='listing'><thead><tr><th>address</th><th>bytes</th>"
            "<th>instruction</th><th>CFA and saved registers</th><th>line</th><th>source</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def _anchor(file: str, section: str, offset: int) -> str:
    key = zlib.crc32(f"{file}|{section}".encode())
    return f"i-{key:08x}-{offset:x}"


def _inline(f: Finding) -> str:
    extra = detail_lines(f)
    ex = f.details.get("explain")
    parts = [f"<span class='sev {f.severity}'>{f.severity}</span> "
             f"<code>{_e(f.location.text() if f.location else '')}</code>: {_e(f.message)} "
             f"<span class='rule'>[{_e(f.rule)}]</span>"]
    if extra:
        parts.append(f"<pre class='detail'>{_e(chr(10).join(x.strip() for x in extra))}</pre>")
    if ex:
        parts.append(_explain(ex))
    return (f"<tr class='finding {f.severity}' data-rule='{_e(f.rule)}' "
            f"data-severity='{f.severity}'><td colspan='6'>{''.join(parts)}</td></tr>")


def _explain(ex: dict[str, Any]) -> str:
    out = [f"<details class='explain'{' open' if ex.get('split') else ''}>"
           "<summary>how the walk got here"]
    if ex.get("split"):
        out.append(f" (paths split at <code>{_e(ex['split'])}</code>)")
    out.append("</summary>")
    for i, p in enumerate(ex.get("paths", ())):
        out.append(f"<div class='path path{i + 1}'><b>{_e(p['label'])}</b><table>")
        for s in p["steps"]:
            if s.get("elided"):
                out.append(f"<tr><td colspan='3'>… {s['elided']} instructions, state "
                           "unchanged</td></tr>")
                continue
            note = f" ({_e(s['note'])})" if s.get("note") else ""
            out.append(f"<tr><td><code>{_e(s['where'])}</code></td><td><code>{_e(s['insn'])}"
                       f"</code>{note}</td><td class='state'>{_e(s['state'])}</td></tr>")
        out.append("</table></div>")
    out.append("</details>")
    return "".join(out)


def _plot(rows: list[Row], found: list[Finding]) -> str:
    """Stack depth along the function: the CFA offset before each instruction."""
    if not rows:
        return ""
    step = max(4, min(24, 900 // max(len(rows), 1)))
    width = max(320, step * len(rows) + 60)
    vals = [r["cfa"] for r in rows]
    top = max([v for v in vals if v is not None] or [8])
    scale = (_PLOT_H - 30) / max(top, 8)
    bad = {(f.location.section, f.location.offset) for f in found if f.location is not None}
    pts: list[str] = []
    marks: list[str] = []
    for i, r in enumerate(rows):
        x = 40 + i * step
        v = r["cfa"]
        if v is None:
            if pts:
                marks.append(f"<polyline class='depth' points='{' '.join(pts)}'/>")
                pts = []
            continue
        y = _PLOT_H - 15 - v * scale
        pts.append(f"{x},{y:.1f} {x + step},{y:.1f}")
        if (r["section"], r["offset"]) in bad:
            marks.append(f"<circle class='bad' cx='{x + step / 2}' cy='{y:.1f}' r='4'>"
                         f"<title>{_e(r['insn'])}</title></circle>")
    if pts:
        marks.append(f"<polyline class='depth' points='{' '.join(pts)}'/>")
    return (f"<svg class='plot' width='{width}' height='{_PLOT_H}' "
            f"viewBox='0 0 {width} {_PLOT_H}' role='img' aria-label='CFA offset per "
            f"instruction'><text x='2' y='12'>CFA offset (max {top})</text>"
            f"<line class='axis' x1='38' y1='{_PLOT_H - 15}' x2='{width}' y2='{_PLOT_H - 15}'/>"
            f"{''.join(marks)}</svg>")


def _loose(found: list[Finding]) -> str:
    if not found:
        return ""
    rows = "".join(_inline(f).replace("<td colspan='6'>", f"<td>{_e(f.file)}</td><td>", 1)
                   for f in found)
    return ("<section class='function' id='other'><h2>other findings</h2>"
            f"<table class='other'>{rows}</table></section>")


def _by_rule(found: list[Finding]) -> str:
    groups: dict[str, list[Finding]] = {}
    for f in found:
        groups.setdefault(f.rule, []).append(f)
    out = []
    for rule, fs in sorted(groups.items()):
        items = "".join(
            f"<li class='finding {f.severity}' data-rule='{_e(f.rule)}' "
            f"data-severity='{f.severity}'><span class='sev {f.severity}'>{f.severity}</span> "
            f"<code>{_e(f.file)}: {_e(f.location.text() if f.location else '')}</code> "
            f"{_e(f.message)}</li>" for f in fs)
        out.append(f"<section class='rule-group' data-rules='{_e(rule)}'><h2>"
                   f"<code>{_e(rule)}</code> ({len(fs)})</h2><ul>{items}</ul></section>")
    return "".join(out)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
code,.asm,.state,.bytes,.addr,pre{font-family:ui-monospace,monospace;font-size:12px}
table.listing{border-collapse:collapse;margin-bottom:1em}
table.listing td,table.listing th{padding:1px 8px;text-align:left;white-space:pre}
tr.insn:nth-child(even){background:#f7f7f7}
tr.path1 td.asm{background:#dbeafe} tr.path2 td.asm{background:#fde68a}
tr.has-finding td{font-weight:bold}
tr.finding td{background:#fff1f1;white-space:normal;padding:4px 8px}
tr.finding.warning td{background:#fff8e1} tr.finding.note td{background:#eef6ff}
.sev{font-weight:bold;text-transform:uppercase;font-size:11px}
.sev.error{color:#b91c1c}.sev.warning{color:#a16207}.sev.note{color:#1d4ed8}
.rule{color:#555}.file{color:#666;font-weight:normal;font-size:14px}
h2 code{font-size:1em}
svg.plot{display:block;background:#fafafa;border:1px solid #ddd;margin:.5em 0}
svg .depth{fill:none;stroke:#2563eb;stroke-width:2} svg .axis{stroke:#999}
svg .bad{fill:#dc2626} svg text{font-size:11px;fill:#555}
.path{margin:.3em 0 .3em 1em}.path1 b{color:#1d4ed8}.path2 b{color:#a16207}
[hidden]{display:none!important} #controls{position:sticky;top:0;background:#fff;
padding:.5em 0;border-bottom:1px solid #ddd}
"""

_SCRIPT = """
(function(){
  var ruleSel=document.getElementById('rule'), boxes=document.querySelectorAll('input.sev');
  var radios=document.querySelectorAll('input[name=group]');
  function apply(){
    var rule=ruleSel.value, sevs={};
    boxes.forEach(function(b){ if(b.checked) sevs[b.value]=1; });
    document.querySelectorAll('.finding').forEach(function(el){
      el.hidden=!((rule==='' || el.dataset.rule===rule) && sevs[el.dataset.severity]);
    });
    document.querySelectorAll('section.function,section.rule-group').forEach(function(s){
      var shown=s.querySelectorAll('.finding:not([hidden])').length;
      s.hidden=s.querySelectorAll('.finding').length>0 && shown===0;
    });
    var byRule=document.querySelector('input[name=group]:checked').value==='rule';
    document.getElementById('by-function').hidden=byRule;
    document.getElementById('by-rule').hidden=!byRule;
    var n=document.querySelectorAll((byRule?'#by-rule':'#by-function')+
                                    ' .finding:not([hidden])').length;
    document.getElementById('shown').textContent=n;
  }
  var h=new URLSearchParams(location.hash.slice(1));
  if(h.get('rule')) ruleSel.value=h.get('rule');
  if(h.get('severity')){ var want=h.get('severity').split(',');
    boxes.forEach(function(b){ b.checked=want.indexOf(b.value)>=0; }); }
  if(h.get('group')==='rule') document.querySelector('input[value=rule]').checked=true;
  ruleSel.addEventListener('change',apply);
  boxes.forEach(function(b){ b.addEventListener('change',apply); });
  radios.forEach(function(b){ b.addEventListener('change',apply); });
  apply();
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>framevet report</title>
<meta name="generator" content="framevet {version}">
<style>{style}</style></head><body>
<h1>framevet report</h1>
<p id="summary">{total} findings: {counts}. Showing <span id="shown">{total}</span>.</p>
<div id="controls">
<label>rule <select id="rule"><option value="">all rules</option>{rule_options}</select></label>
{sev_boxes}
<label><input type="radio" name="group" value="function" checked> by function</label>
<label><input type="radio" name="group" value="rule"> by rule</label>
</div>
<div id="by-function">
{functions}
{loose}
</div>
<div id="by-rule" hidden>
{by_rule}
</div>
<script>{script}</script>
</body></html>
"""
