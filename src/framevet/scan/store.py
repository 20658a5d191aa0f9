"""The scan database (SQLite): what was analysed, what it found, and where it was seen.

An image's result is keyed by its content (sha256), the framevet version and the
options hash, so the same bytes under another path, in another package or in a later
scan are never analysed twice. Only the scanning process writes; it commits after every
analysed file in WAL mode, so a scan killed at any point (even ``kill -9``) keeps every
file it finished and a restart continues the same scan. docs/scan.md documents the
schema.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from framevet.scan.work import Outcome

SCHEMA_VERSION = "1"
FINDING_COLUMNS = ("check_name", "rule", "severity", "section", "symbol", "offset",
                   "section_offset", "address", "message", "source_path", "source_line",
                   "details")
#: how many cached (not analysed) file rows may wait for a commit; losing them costs nothing
CACHED_BATCH = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scans (
    id           INTEGER PRIMARY KEY,
    inputs       TEXT NOT NULL,
    version      TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    options      TEXT NOT NULL,
    started      REAL NOT NULL,
    finished     REAL
);
CREATE TABLE IF NOT EXISTS analyses (
    id           INTEGER PRIMARY KEY,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    version      TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'error', 'timeout', 'skipped')),
    reason       TEXT,
    profile      TEXT,
    seconds      REAL NOT NULL,
    timeout      REAL NOT NULL,
    attempts     INTEGER NOT NULL,
    analysed_at  REAL NOT NULL,
    scan_id      INTEGER REFERENCES scans(id),
    UNIQUE (sha256, version, options_hash)
);
CREATE TABLE IF NOT EXISTS findings (
    analysis_id    INTEGER NOT NULL REFERENCES analyses(id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    check_name     TEXT NOT NULL,
    rule           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    section        TEXT,
    symbol         TEXT,
    offset         INTEGER,
    section_offset INTEGER,
    address        INTEGER,
    message        TEXT NOT NULL,
    source_path    TEXT,
    source_line    INTEGER,
    details        TEXT,
    PRIMARY KEY (analysis_id, seq)
);
CREATE TABLE IF NOT EXISTS files (
    scan_id         INTEGER NOT NULL REFERENCES scans(id),
    package         TEXT NOT NULL,
    package_version TEXT NOT NULL,
    path            TEXT NOT NULL,
    sha256          TEXT,
    size            INTEGER,
    analysis_id     INTEGER REFERENCES analyses(id),
    error           TEXT,
    source          TEXT NOT NULL,
    PRIMARY KEY (scan_id, package, path)
);
CREATE TABLE IF NOT EXISTS sources (
    scan_id INTEGER NOT NULL REFERENCES scans(id),
    path    TEXT NOT NULL,
    sha256  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (scan_id, path)
);
CREATE INDEX IF NOT EXISTS sources_by_sha ON sources(sha256);
CREATE INDEX IF NOT EXISTS files_by_source ON files(scan_id, source);
CREATE INDEX IF NOT EXISTS files_by_analysis ON files(analysis_id);
CREATE INDEX IF NOT EXISTS findings_by_rule ON findings(rule);
CREATE VIEW IF NOT EXISTS file_findings AS
    SELECT f.scan_id, f.package, f.package_version, f.path, f.sha256, x.*
    FROM files f JOIN findings x ON x.analysis_id = f.analysis_id;
"""


@dataclass
class Cached:
    """A result already in the store for some content under the current version/options."""

    analysis_id: int
    status: str
    timeout: float
    reason: str


@dataclass
class Tally:
    """What this run did, for the summary."""

    analysed: int = 0
    cached: int = 0
    by_status: Counter[str] = field(default_factory=Counter)


class Store:
    def __init__(self, path: str) -> None:
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                            (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            from framevet.load.errors import InputError

            raise InputError(path, f"not a usable scan database ({exc})") from None
        self.scan_id = 0
        self.version = ""
        self.options_hash = ""
        self._uncommitted = 0
        self.db.execute("BEGIN")

    # -- scans ------------------------------------------------------------------------------

    def begin_scan(self, inputs: list[str], version: str, options_hash: str,
                   options: dict[str, Any]) -> bool:
        """Start a scan, or continue the last unfinished one over the same inputs with the
        same version and options; True when continuing."""
        self.version, self.options_hash = version, options_hash
        key = json.dumps(inputs)
        row = self.db.execute(
            "SELECT id FROM scans WHERE inputs = ? AND version = ? AND options_hash = ? "
            "AND finished IS NULL ORDER BY id DESC LIMIT 1",
            (key, version, options_hash)).fetchone()
        if row:
            self.scan_id = row[0]
        else:
            cur = self.db.execute(
                "INSERT INTO scans (inputs, version, options_hash, options, started) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, version, options_hash, json.dumps(options, sort_keys=True), time.time()))
            self.scan_id = int(cur.lastrowid or 0)
        self.commit()
        return bool(row)

    def finish_scan(self, seen: set[tuple[str, str]]) -> None:
        """Drop rows of files a continued scan no longer met, and mark the scan finished."""
        rows = self.db.execute("SELECT package, path FROM files WHERE scan_id = ?",
                               (self.scan_id,)).fetchall()
        gone = [r for r in rows if (r[0], r[1]) not in seen]
        self.db.executemany("DELETE FROM files WHERE scan_id = ? AND package = ? AND path = ?",
                            [(self.scan_id, p, q) for p, q in gone])
        self.db.execute("UPDATE scans SET finished = ? WHERE id = ?", (time.time(), self.scan_id))
        self.commit()

    # -- results ----------------------------------------------------------------------------

    def lookup(self, sha256: str) -> Cached | None:
        row = self.db.execute(
            "SELECT id, status, timeout, coalesce(reason, '') FROM analyses "
            "WHERE sha256 = ? AND version = ? AND options_hash = ?",
            (sha256, self.version, self.options_hash)).fetchone()
        return Cached(*row) if row else None

    def record_analysis(self, sha256: str, size: int, outcome: Outcome, timeout: float,
                        attempts: int) -> int:
        """Store one image's result (replacing a timed-out one) and return its id; the file
        rows that point at it follow with :meth:`record_file`, then :meth:`commit`."""
        old = self.lookup(sha256)
        if old is not None:
            self.db.execute("DELETE FROM findings WHERE analysis_id = ?", (old.analysis_id,))
            self.db.execute("UPDATE files SET analysis_id = NULL WHERE analysis_id = ?",
                            (old.analysis_id,))
            self.db.execute("DELETE FROM analyses WHERE id = ?", (old.analysis_id,))
        cur = self.db.execute(
            "INSERT INTO analyses (sha256, size, version, options_hash, status, reason, profile,"
            " seconds, timeout, attempts, analysed_at, scan_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sha256, size, self.version, self.options_hash, outcome.status,
             outcome.reason or None, outcome.profile or None, round(outcome.seconds, 6),
             timeout, attempts, time.time(), self.scan_id))
        aid = int(cur.lastrowid or 0)
        self.db.executemany(
            f"INSERT INTO findings (analysis_id, seq, {', '.join(FINDING_COLUMNS)}) "
            f"VALUES (?, ?, {', '.join('?' * len(FINDING_COLUMNS))})",
            [(aid, i, *(f.get(c if c != "check_name" else "check") for c in FINDING_COLUMNS))
             for i, f in enumerate(outcome.findings)])
        if old is not None:
            self.db.execute("UPDATE files SET analysis_id = ? WHERE analysis_id IS NULL "
                            "AND sha256 = ? AND error IS NULL", (aid, sha256))
        return aid

    def record_file(self, package: str, package_version: str, path: str,
                    sha256: str | None, size: int | None, analysis_id: int | None,
                    source: str, error: str | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.scan_id, package, package_version, path, sha256, size, analysis_id, error,
             source))
        self._uncommitted += 1

    def findings_of(self, analysis_id: int) -> int:
        row = self.db.execute("SELECT count(*) FROM findings WHERE analysis_id = ?",
                              (analysis_id,)).fetchone()
        return int(row[0])

    def record_source(self, path: str, sha256: str, size: int) -> None:
        """An input file all of whose images are stored, none of them failed."""
        self.db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)",
                        (self.scan_id, path, sha256, size))
        self._uncommitted += 1

    def copy_source(self, sha256: str, path: str, size: int) -> list[tuple[str, str, int]] | None:
        """The rows of the last complete reading of an input file with this content, under
        this version and these options, copied into this scan as coming from ``path``:
        (package, path, findings) of each; None when there is none."""
        row = self.db.execute(
            "SELECT s.scan_id, s.path FROM sources s JOIN scans c ON c.id = s.scan_id "
            "WHERE s.sha256 = ? AND c.version = ? AND c.options_hash = ? "
            "ORDER BY s.scan_id = ? DESC, s.scan_id DESC LIMIT 1",
            (sha256, self.version, self.options_hash, self.scan_id)).fetchone()
        if row is None:
            return None
        scan_id, old_path = row
        rows = self.db.execute(
            "SELECT package, package_version, path, sha256, size, analysis_id, error, "
            "(SELECT count(*) FROM findings x WHERE x.analysis_id = f.analysis_id) "
            "FROM files f WHERE scan_id = ? AND source = ?", (scan_id, old_path)).fetchall()
        # outside a package a file's name is the input's own path (``lib.a(m.o)``): it
        # follows the input to where it is now
        rows = [(r[0], r[1], path + r[2][len(old_path):], *r[3:])
                if not r[0] and r[2].startswith(old_path) else r for r in rows]
        self.db.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(self.scan_id, *r[:7], path) for r in rows])
        self._uncommitted += len(rows)
        self.record_source(path, sha256, size)
        return [(r[0], r[2], r[7]) for r in rows]

    def commit(self, force: bool = True) -> None:
        """Make everything so far durable; with ``force=False`` only once enough waits."""
        if force or self._uncommitted >= CACHED_BATCH:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._uncommitted = 0

    def close(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()

    # -- questions --------------------------------------------------------------------------

    def summary(self, tally: Tally) -> dict[str, Any]:
        """The figures ``--format json`` prints, for this scan's files."""
        q = self.db.execute
        sid = self.scan_id
        files = q("SELECT count(*) FROM files WHERE scan_id = ?", (sid,)).fetchone()[0]
        errors = q("SELECT count(*) FROM files f LEFT JOIN analyses a ON a.id = f.analysis_id "
                   "WHERE f.scan_id = ? AND (f.error IS NOT NULL OR a.status IN "
                   "('error', 'timeout'))", (sid,)).fetchone()[0]
        by_status = dict(q("SELECT coalesce(a.status, 'error'), count(*) FROM files f "
                           "LEFT JOIN analyses a ON a.id = f.analysis_id WHERE f.scan_id = ? "
                           "GROUP BY 1", (sid,)).fetchall())
        by_rule = dict(q("SELECT rule, count(*) FROM file_findings WHERE scan_id = ? "
                         "GROUP BY rule ORDER BY count(*) DESC, rule", (sid,)).fetchall())
        packages = q("SELECT count(DISTINCT package) FROM files WHERE scan_id = ? "
                     "AND package != ''", (sid,)).fetchone()[0]
        return {"scan": sid, "files": files, "analysed": tally.analysed,
                "cached": tally.cached, "errors": errors,
                "findings": sum(by_rule.values()), "by_rule": by_rule,
                "by_status": by_status, "packages": packages}
