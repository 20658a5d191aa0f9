"""A scan from start to end: read the inputs, skip what the store already knows, send
the rest to a pool, and store every result as it arrives.

Two levels of reuse: an input file (a package, an archive, an ELF file) whose whole
content the store has seen complete under the same version and options is not even
opened -- its rows are copied -- and an ELF image whose content was analysed before is
not analysed again, wherever it appears.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from framevet.scan.pools import Pool
from framevet.scan.sources import Broken, Member, Source, iter_sources
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
    """Where the scan met an image: its package, path, and the input file it came from."""

    package: str
    package_version: str
    path: str
    display: str
    source: str


@dataclass
class _Job:
    """One image in flight, and every place the scan met the same bytes meanwhile."""

    sha256: str
    member: Member
    places: list[_Place] = field(default_factory=list)
    attempts: int = 0


@dataclass
class _Reading:
    """An input file whose images are not all stored yet."""

    source: Source
    pending: int = 0
    read: bool = False
    #: nothing in it failed: the next scan may copy its rows instead of reading it
    clean: bool = True


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
        self.reading: dict[str, _Reading] = {}
        self.seen: set[tuple[str, str]] = set()
        self.findings = 0
        self.done = 0

    def run(self, paths: list[str], version: str) -> Tally:
        inputs = [os.path.abspath(p) for p in paths]
        options = asdict(self.options)
        options["check"]["disabled"] = sorted(options["check"]["disabled"])
        self.store.begin_scan(inputs, version, self.options.digest(), options)
        try:
            met: set[str] = set()
            for source in iter_sources(paths):
                if isinstance(source, Broken):
                    self._broken(source, None)
                elif source.path not in met:
                    met.add(source.path)
                    if not self._reuse(source):
                        self._read(source)
            while self.pool.busy():
                self._collect()
        finally:
            self.pool.close()
        self.store.finish_scan(self.seen)
        return self.tally

    def _reuse(self, source: Source) -> bool:
        """Copy the rows of an input file seen complete before; False if there is none."""
        if not source.sha256:
            return False
        copied = self.store.copy_source(source.sha256, source.path, source.size)
        if copied is None:
            return False
        for package, path, findings in copied:
            self.seen.add((package, path))
            self.tally.cached += 1
            self._advance(findings)
        self.store.commit(force=False)
        return True

    def _read(self, source: Source) -> None:
        reading = self.reading[source.path] = _Reading(source)
        for item in source.items():
            if isinstance(item, Broken):
                self._broken(item, reading)
            else:
                self._member(item, reading)
            while self.pool.busy() >= self.pool.capacity:
                self._collect()
        reading.read = True
        self._settle(reading)

    def _broken(self, item: Broken, reading: _Reading | None) -> None:
        print(item.line(), file=sys.stderr)
        self.seen.add((item.package, item.path))
        source = reading.source.path if reading else item.path
        self.store.record_file(item.package, "", item.path, None, None, None, source,
                               item.reason)
        self.store.commit()
        if reading:
            reading.clean = False
        self._advance(0)

    def _member(self, m: Member, reading: _Reading) -> None:
        key = (m.package, m.path)
        if key in self.seen:
            return      # named twice on the command line
        self.seen.add(key)
        sha = hashlib.sha256(m.data).hexdigest()
        place = _Place(m.package, m.package_version, m.path, m.display, reading.source.path)
        job = self.jobs.get(sha)
        if job is not None:
            job.places.append(place)
            reading.pending += 1
            return
        cached = self.store.lookup(sha)
        if cached is not None and not self._retry(cached.status, cached.timeout):
            self.tally.cached += 1
            self.store.record_file(m.package, m.package_version, m.path, sha, len(m.data),
                                   cached.analysis_id, place.source)
            self.store.commit(force=False)
            if cached.status in ("error", "timeout"):
                print(f"{m.display}: error: {cached.reason}", file=sys.stderr)
                reading.clean = False
            self._advance(self.store.findings_of(cached.analysis_id))
            return
        job = _Job(sha, m, [place])
        reading.pending += 1
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
        for p in job.places:
            self.store.record_file(p.package, p.package_version, p.path, job.sha256, size, aid,
                                   p.source)
        self.store.commit()
        failed = outcome.status in ("error", "timeout")
        self.tally.analysed += 1
        self.tally.by_status[outcome.status] += 1
        for p in job.places:
            if failed:
                print(f"{p.display}: error: {outcome.reason}", file=sys.stderr)
            self._advance(len(outcome.findings))
        for p in job.places:
            reading = self.reading[p.source]
            reading.pending -= 1
            reading.clean = reading.clean and not failed
            self._settle(reading)

    def _settle(self, reading: _Reading) -> None:
        """Once every image of a file read to the end is stored, remember the file whole."""
        if not reading.read or reading.pending:
            return
        src = reading.source
        if reading.clean and src.sha256:
            self.store.record_source(src.path, src.sha256, src.size)
            self.store.commit(force=False)
        del self.reading[src.path]

    def _advance(self, findings: int) -> None:
        self.done += 1
        self.findings += findings
        if self.progress:
            self.progress(self.done, self.findings, self.tally.analysed)
