"""One file's analysis in a child process of its own, under a time and a memory limit.

A child is forked per file: whatever it does -- runs out of memory, loops, crashes the
interpreter -- only that file is affected, and the parent knows exactly which file it
was. The child inherits the parent's memory (the analysis modules and the file's bytes
are already loaded, nothing is pickled on the way in) and sends one pickled
:class:`~framevet.scan.work.Outcome` back through a pipe. Plain ``os.fork`` is used
rather than :mod:`multiprocessing` because Dask runs its tasks in daemonic processes,
which ``multiprocessing`` does not let have children.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import pickle
import resource
import select
import signal
import time
from collections.abc import Callable

from framevet.scan.work import Outcome

#: how often a waiting parent looks at its children's deadlines
TICK = 0.5


class Child:
    """A forked child computing ``job()``; poll :meth:`read` until :attr:`outcome` is set."""

    def __init__(self, job: Callable[[], Outcome], timeout: float, memory_mb: int) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout if timeout > 0 else float("inf")
        self.timeout = timeout
        self.outcome: Outcome | None = None
        self._chunks: list[bytes] = []
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:        # the child never returns from here
            os.close(rfd)
            _child(job, wfd, memory_mb)
        os.close(wfd)
        self.pid = pid
        self.fd = rfd

    def read(self) -> None:
        """Take what the child wrote; once it closed the pipe, reap it and set the outcome."""
        chunk = os.read(self.fd, 1 << 20)
        if chunk:
            self._chunks.append(chunk)
            return
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        self.outcome = self._decode(status)

    def expire(self) -> None:
        """Kill a child past its deadline: the file's outcome is "timeout"."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.outcome = Outcome("timeout", f"no result after {self.timeout:g} s",
                               seconds=time.monotonic() - self.started)

    def kill(self) -> None:
        """Stop a child whose result is no longer wanted (the scan is being interrupted)."""
        if self.outcome is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            os.close(self.fd)

    def _decode(self, status: int) -> Outcome:
        data = b"".join(self._chunks)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and data:
            try:
                out = pickle.loads(data)
            except Exception:  # noqa: BLE001 - a garbled result is a crash
                out = None
            if isinstance(out, Outcome):
                return out
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            why = f"killed by signal {sig} ({signal.Signals(sig).name})"
        else:
            why = f"exited with status {os.WEXITSTATUS(status)} and no result"
        return Outcome("crash", why, seconds=time.monotonic() - self.started)


def _child(job: Callable[[], Outcome], wfd: int, memory_mb: int) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # what the child inherited (a Dask worker's whole heap, say) is not its garbage:
        # the collector need not walk it, and touching it would copy its pages
        gc.freeze()
        faulthandler.disable()      # a crash is reported by the parent, in one line
        if memory_mb > 0:
            _limit_memory(memory_mb)
        try:
            outcome = job()
        except MemoryError:
            outcome = Outcome("error", f"memory limit ({memory_mb} MiB) exceeded")
        except RecursionError:
            outcome = Outcome("error", "internal error (RecursionError)")
        except Exception as exc:  # noqa: BLE001 - one line per file, never a traceback
            outcome = Outcome("error", f"internal error ({type(exc).__name__}: {exc})")
        data = pickle.dumps(outcome)
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]
    except BaseException:  # noqa: BLE001 - the parent sees a child without a result
        code = 3
    finally:
        os._exit(code)


def _limit_memory(memory_mb: int) -> None:
    """Let the address space grow by ``memory_mb`` beyond what the fork inherited (Linux)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[0])
        now = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        now = 0
    limit = now + (memory_mb << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_isolated(job: Callable[[], Outcome], timeout: float, memory_mb: int) -> Outcome:
    """Run ``job`` in a child and wait for it (what a Dask task does)."""
    child = Child(job, timeout, memory_mb)
    while child.outcome is None:
        wait = min(TICK, max(0.0, child.deadline - time.monotonic()))
        ready, _, _ = select.select([child.fd], [], [], wait)
        if ready:
            child.read()
        elif time.monotonic() >= child.deadline:
            child.expire()
    return child.outcome
