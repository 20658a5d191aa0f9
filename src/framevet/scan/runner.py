"""A scan from start to end: read the inputs, skip what the store already knows, send
the rest to a pool, and store every result as it arrives."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from framevet.scan.pools import Pool
from framevet.scan.sources import Broken, Member, iter_inputs
from framevet.scan.store import Store, Tally
from framevet.scan.work import Outcome, ScanOptions, skip_reason

#: a file whose child crashed this often is recorded as an error
CRASH_LIMIT = 2


@dataclass
class Limits:
    timeout: float = 600.0
    memory_mb: int = 4096


@dataclass(frozen=True)
class _Place:
    package: str
    package_version: str
    path: str
    display: str


@dataclass
class _Job:
    """One image in flight, and every place the scan met the same bytes meanwhile."""

    sha256: str
    member: Member
    places: list[_Place] = field(default_factory=list)
    attempts: int = 0


Progress = Callable[[int, int, int], None]


class Scanner:
    def __init__(self, store: Store, pool: Pool, options: ScanOptions, limits: Limits,
                 progress: Progress | None = None) -> None:
        self.store = store
        self.pool = pool
        self.options = options
        self.limits = limits
        self.progress = progress
        self.tally = Tally()
        self.jobs: dict[str, _Job] = {}
        self.seen: set[tuple[str, str]] = set()
        self.findings = 0
        self.done = 0

    def run(self, paths: list[str], version: str) -> Tally:
        inputs = [os.path.abspath(p) for p in paths]
        options = asdict(self.options)
        options["check"]["disabled"] = sorted(options["check"]["disabled"])
        self.store.begin_scan(inputs, version, self.options.digest(), options)
        try:
            for item in iter_inputs(paths):
                if isinstance(item, Broken):
                    self._broken(item)
                else:
                    self._member(item)
                while self.pool.busy() >= self.pool.capacity:
                    self._collect()
            while self.pool.busy():
                self._collect()
        finally:
            self.pool.close()
        self.store.finish_scan(self.seen)
        return self.tally

    def _broken(self, item: Broken) -> None:
        print(item.line(), file=sys.stderr)
        self.seen.add((item.package, item.path))
        self.store.record_file(item.package, "", item.path, None, None, None, item.reason)
        self.store.commit()
        self._advance(0)

    def _member(self, m: Member) -> None:
        key = (m.package, m.path)
        if key in self.seen:
            return      # named twice on the command line
        self.seen.add(key)
        sha = hashlib.sha256(m.data).hexdigest()
        place = _Place(m.package, m.package_version, m.path, m.display)
        job = self.jobs.get(sha)
        if job is not None:
            job.places.append(place)
            return
        cached = self.store.lookup(sha)
        if cached is not None and not self._retry(cached.status, cached.timeout):
            self.tally.cached += 1
            self.store.record_file(m.package, m.package_version, m.path, sha, len(m.data),
                                   cached.analysis_id)
            self.store.commit(force=False)
            self._advance(self._count(cached.analysis_id))
            return
        job = _Job(sha, m, [place])
        reason = skip_reason(m.data)
        if reason:
            self._store(job, Outcome("skipped", reason))
            return
        self.jobs[sha] = job
        self._submit(job)

    def _retry(self, status: str, timeout: float) -> bool:
        """A timed-out file is tried again when the new limit is longer."""
        if status != "timeout":
            return False
        return self.limits.timeout <= 0 or self.limits.timeout > timeout

    def _submit(self, job: _Job) -> None:
        job.attempts += 1
        self.pool.submit(job.sha256, job.member.data, job.member.display)

    def _collect(self) -> None:
        for sha, outcome in self.pool.wait():
            job = self.jobs[sha]
            if outcome.status == "crash":
                if job.attempts < CRASH_LIMIT:
                    self._submit(job)
                    continue
                outcome = Outcome("error", f"crashed {job.attempts} times "
                                  f"(last: {outcome.reason})", seconds=outcome.seconds)
            del self.jobs[sha]
            self._store(job, outcome)

    def _store(self, job: _Job, outcome: Outcome) -> None:
        size = len(job.member.data)
        aid = self.store.record_analysis(job.sha256, size, outcome, self.limits.timeout,
                                         max(job.attempts, 1))
        for m in job.places:
            self.store.record_file(m.package, m.package_version, m.path, job.sha256, size, aid)
        self.store.commit()
        if outcome.status in ("error", "timeout"):
            for m in job.places:
                print(f"{m.display}: error: {outcome.reason}", file=sys.stderr)
        self.tally.analysed += 1
        self.tally.by_status[outcome.status] += 1
        for _ in job.places:
            self._advance(len(outcome.findings))

    def _count(self, analysis_id: int) -> int:
        row = self.store.db.execute("SELECT count(*) FROM findings WHERE analysis_id = ?",
                                    (analysis_id,)).fetchone()
        return int(row[0])

    def _advance(self, findings: int) -> None:
        self.done += 1
        self.findings += findings
        if self.progress:
            self.progress(self.done, self.findings, self.tally.analysed)
