"""Run emulation work in a forked child, so that an emulator crash costs one run, not framevet.

The Bochs backend is a C++ CPU inside the process: a bug in it, or a misuse the binding
does not catch, aborts the whole process, and its ``run()`` holds the GIL, so no thread
can interrupt it.  :class:`Supervisor` therefore forks a worker that inherits everything
already built (the linked image, the unwind tables), sends it one small request per run
(the run index) and reads back a picklable answer.  If the worker dies (a signal, an
abort) or stays silent past its deadline, it is killed and the caller gets a
:class:`Crash` for that request; the next request forks a fresh worker from the parent's
state.  Work that must keep state across requests returns a snapshot of it, and the
parent keeps the last good one.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any


@dataclass
class Crash:
    """A request the worker did not answer: ``reason`` in plain words."""

    reason: str


def _serve(conn: Connection, parent_end: Connection, work: Callable[[Any], Any],
           init: Callable[[], None] | None) -> None:
    """The worker's loop; it leaves with ``os._exit`` so no interpreter teardown runs
    (Bochs aborts if its callbacks are still registered at exit).

    The fork copied the parent's end of the pipe too: it is closed first, or the worker
    would never see end-of-file when the parent closes its end, and every close would
    wait out the join timeout."""
    parent_end.close()
    code = 0
    try:
        if init is not None:
            init()
        while True:
            try:
                request = conn.recv()
            except EOFError:
                break
            try:
                answer: tuple[str, Any] = ("ok", work(request))
            except Exception as exc:  # noqa: BLE001 - reported to the parent as a crash
                answer = ("error", "".join(traceback.format_exception_only(type(exc),
                                                                             exc)).strip())
            conn.send(answer)
    except BaseException:  # noqa: BLE001 - nothing may unwind out of a forked child
        code = 1
    finally:
        os._exit(code)


class Supervisor:
    """A forked worker answering ``work(request)``; see the module docstring."""

    def __init__(self, work: Callable[[Any], Any], timeout: float,
                 init: Callable[[], None] | None = None) -> None:
        self.work, self.timeout, self.init = work, timeout, init
        self.proc: Any = None
        self.conn: Connection | None = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, parent, self.work, self.init),
                                daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def call(self, request: Any) -> Any:
        """``work(request)`` as computed by the worker, or a :class:`Crash`."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        assert self.conn is not None
        try:
            self.conn.send(request)
            if self.conn.poll(self.timeout):
                status, value = self.conn.recv()
                if status == "ok":
                    return value
                self.close()
                return Crash(f"framevet failed inside the emulator process: {value}")
            self.close(kill=True)
            return Crash(f"the emulator process did not answer within {self.timeout:g} s "
                         f"and was killed")
        except (EOFError, OSError, BrokenPipeError):
            return Crash(self._death())

    def _death(self) -> str:
        proc = self.proc
        self.close()
        code = proc.exitcode if proc is not None else None
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the emulator process died ({name})"
        return f"the emulator process died (exit status {code})"

    def close(self, kill: bool = False) -> None:
        proc, conn = self.proc, self.conn
        self.proc = self.conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if kill and proc.is_alive():
                proc.kill()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
