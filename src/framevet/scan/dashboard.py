"""``framevet scan --report``: one static HTML page about the database's latest scan.

Counts per package and per rule, the files with the most findings, the files that could
not be analysed, and a bar chart of findings by rule drawn as inline SVG: the page needs
no script, no network and no other file.
"""

from __future__ import annotations

import html
import sqlite3
from typing import Any

from framevet.load.errors import InputError

WORST = 25
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em}
th{border-bottom:2px solid #888}tr:nth-child(even){background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em 1.2em;min-width:7em}
.card b{display:block;font-size:1.6em}
svg text{font:12px system-ui,sans-serif}
"""


def write_dashboard(db: sqlite3.Connection, path: str) -> None:
    page = render(db)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None


def render(db: sqlite3.Connection) -> str:
    row = db.execute("SELECT id, version, started, finished FROM scans "
                     "ORDER BY finished IS NULL, id DESC LIMIT 1").fetchone()
    if row is None:
        return _page("framevet scan", "<p>The database holds no scan yet.</p>")
    sid = row[0]
    q = db.execute
    totals = q("SELECT count(*), count(DISTINCT nullif(package, '')), "
               "sum(f.error IS NOT NULL OR a.status IN ('error', 'timeout')) "
               "FROM files f LEFT JOIN analyses a ON a.id = f.analysis_id WHERE f.scan_id = ?",
               (sid,)).fetchone()
    findings = q("SELECT count(*) FROM file_findings WHERE scan_id = ?", (sid,)).fetchone()[0]
    by_rule = q("SELECT rule, severity, count(*), count(DISTINCT path || package) "
                "FROM file_findings WHERE scan_id = ? GROUP BY rule, severity "
                "ORDER BY 3 DESC, rule", (sid,)).fetchall()
    by_package = q(
        "SELECT f.package, f.package_version, count(*), "
        "sum((SELECT count(*) FROM findings x WHERE x.analysis_id = f.analysis_id)), "
        "sum(f.error IS NOT NULL OR a.status IN ('error', 'timeout')) "
        "FROM files f LEFT JOIN analyses a ON a.id = f.analysis_id "
        "WHERE f.scan_id = ? GROUP BY f.package ORDER BY 4 DESC, f.package", (sid,)).fetchall()
    worst = q("SELECT package, path, count(*), group_concat(DISTINCT rule) FROM file_findings "
              "WHERE scan_id = ? GROUP BY package, path ORDER BY 3 DESC, package, path "
              "LIMIT ?", (sid, WORST)).fetchall()
    failed = q("SELECT f.package, f.path, coalesce(f.error, a.status || ': ' || a.reason) "
               "FROM files f LEFT JOIN analyses a ON a.id = f.analysis_id WHERE f.scan_id = ? "
               "AND (f.error IS NOT NULL OR a.status IN ('error', 'timeout')) "
               "ORDER BY f.package, f.path", (sid,)).fetchall()
    cards = "".join(f'<div class="card" id="total-{k}"><b>{v or 0}</b>{k}</div>' for k, v in (
        ("files", totals[0]), ("packages", totals[1]), ("findings", findings),
        ("errors", totals[2])))
    body = [f"<p>Scan {sid}, framevet {html.escape(row[1])}.</p>",
            f'<div class="cards">{cards}</div>',
            "<h2>Findings by rule</h2>", _chart(by_rule),
            _table("rules", ("rule", "severity", "findings", "files"), by_rule),
            "<h2>Packages</h2>",
            _table("packages", ("package", "version", "files", "findings", "errors"),
                   [(p or "(loose files)", v, *rest) for p, v, *rest in by_package]),
            f"<h2>Files with the most findings (top {WORST})</h2>",
            _table("worst", ("package", "path", "findings", "rules"), worst),
            "<h2>Files that could not be analysed</h2>",
            _table("errors", ("package", "path", "why"), failed)]
    return _page(f"framevet scan {sid}", "\n".join(body))


def _page(title: str, body: str) -> str:
    t = html.escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head><body><h1>{t}</h1>\n{body}\n</body></html>\n")


def _table(name: str, head: tuple[str, ...], rows: list[Any]) -> str:
    if not rows:
        return f'<p id="{name}-none">None.</p>'
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for r in rows:
        tds = "".join(f'<td class="n">{c}</td>' if isinstance(c, int)
                      else f"<td>{html.escape(str(c or ''))}</td>" for c in r)
        trs.append(f"<tr>{tds}</tr>")
    return f'<table id="{name}"><tr>{th}</tr>{"".join(trs)}</table>'


def _chart(by_rule: list[Any]) -> str:
    """Horizontal bars, one per rule, scaled to the largest count."""
    counts: dict[str, int] = {}
    for rule, _sev, n, _files in by_rule:
        counts[rule] = counts.get(rule, 0) + n
    if not counts:
        return '<p id="chart-none">No findings.</p>'
    top = max(counts.values())
    bar_h, label_w, bar_w = 22, 260, 420
    parts = []
    for i, (rule, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        y = i * bar_h
        w = max(1, round(bar_w * n / top))
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
                     f"{html.escape(rule)}</text>"
                     f'<rect class="bar" data-rule="{html.escape(rule)}" data-count="{n}" '
                     f'x="{label_w}" y="{y + 3}" width="{w}" height="{bar_h - 6}" '
                     f'fill="#c0504d"/><text x="{label_w + w + 6}" y="{y + 15}">{n}</text>')
    height = len(counts) * bar_h
    width = label_w + bar_w + 60
    return (f'<svg id="chart" role="img" aria-label="findings by rule" width="{width}"'
            f' height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')
