"""Where the per-file work runs: forked children on this machine, or a Dask cluster.

Both pools take ``(key, image bytes, display name)`` and hand back ``(key, Outcome)``
pairs as files finish; only the scanning process sees the results, so only it writes
the database. A file whose child crashed comes back as a "crash" outcome, and the
scanner decides whether to try it again.
"""

from __future__ import annotations

import functools
import os
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from framevet import rules
from framevet.load.errors import InputError
from framevet.scan.isolate import TICK, Child, run_isolated
from framevet.scan.work import Outcome, ScanOptions, analyse_image

#: the analysis of one image; tests put a misbehaving one in its place
Analyse = Callable[[bytes, str, ScanOptions], Outcome]


class Pool(Protocol):
    #: how many files may be in flight at once
    capacity: int

    def submit(self, key: str, data: bytes, display: str) -> None: ...

    def wait(self) -> list[tuple[str, Outcome]]: ...

    def busy(self) -> int: ...

    def close(self) -> None: ...


class LocalPool:
    """Up to ``jobs`` forked children at once, one file each."""

    def __init__(self, jobs: int, options: ScanOptions, timeout: float, memory_mb: int,
                 analyse: Analyse = analyse_image) -> None:
        self.capacity = max(1, jobs or os.cpu_count() or 1)
        self.options = options
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.analyse = analyse
        self.running: dict[int, tuple[str, Child]] = {}

    def submit(self, key: str, data: bytes, display: str) -> None:
        job = functools.partial(self.analyse, data, display, self.options)
        child = Child(job, self.timeout, self.memory_mb)
        self.running[child.fd] = (key, child)

    def busy(self) -> int:
        return len(self.running)

    def wait(self) -> list[tuple[str, Outcome]]:
        """Block until at least one file finished (or timed out); return those that did."""
        done: list[tuple[str, Outcome]] = []
        while self.running and not done:
            now = time.monotonic()
            soonest = min(c.deadline for _, c in self.running.values())
            ready, _, _ = select.select(list(self.running), [], [],
                                        min(TICK, max(0.0, soonest - now)))
            for fd in ready:
                self.running[fd][1].read()
            now = time.monotonic()
            for fd, (key, child) in list(self.running.items()):
                if child.outcome is None and now >= child.deadline:
                    child.expire()
                if child.outcome is not None:
                    del self.running[fd]
                    done.append((key, child.outcome))
        return done

    def close(self) -> None:
        for _, child in self.running.values():
            child.kill()
        self.running.clear()


def run_image(data: bytes, display: str, options: ScanOptions, timeout: float,
              memory_mb: int, analyse: Analyse = analyse_image) -> Outcome:
    """A Dask task: one image analysed in a child of the worker, under the limits."""
    rules.all_rules()   # loaded once per worker, so every child inherits it
    return run_isolated(functools.partial(analyse, data, display, options), timeout, memory_mb)


class DaskPool:
    """Files sent to an existing ``dask.distributed`` cluster, a few per worker thread."""

    def __init__(self, address: str, options: ScanOptions, timeout: float, memory_mb: int,
                 analyse: Analyse = analyse_image) -> None:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise InputError("--scheduler", "Dask is not installed: "
                             "pip install 'framevet[dask]'") from None
        try:
            self.client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InputError(address, f"cannot reach the Dask scheduler ({exc})") from None
        threads = sum(self.client.nthreads().values()) or 1
        self.capacity = 2 * threads
        self.args = (options, timeout, memory_mb, analyse)
        self.pending: dict[Any, str] = {}
        self.finished = as_completed()

    def submit(self, key: str, data: bytes, display: str) -> None:
        fut = self.client.submit(run_image, data, display, *self.args, pure=False)
        self.pending[fut] = key
        self.finished.add(fut)

    def busy(self) -> int:
        return len(self.pending)

    def wait(self) -> list[tuple[str, Outcome]]:
        if not self.pending:
            return []
        done = []
        for fut in self.finished.next_batch(block=True):
            key = self.pending.pop(fut)
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost with the file: retried
                outcome = Outcome("crash", f"worker lost ({type(exc).__name__}: {exc})")
            done.append((key, outcome))
        return done

    def close(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.client.close()
