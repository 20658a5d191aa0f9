"""What one emulated run records: the true call frames, events, faults and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from framevet.emulate import insn as I
from framevet.emulate.findings import ABI_VIOLATION
from framevet.emulate.spec import FPCW_INIT, MXCSR_INIT

if TYPE_CHECKING:
    from framevet.emulate.machine import Machine


@dataclass
class Frame:
    """One active call, as the hardware really made it."""

    cfa: int                      # caller's rsp after the return
    ra: int                       # return address
    saved: tuple[int, ...]        # callee-saved values at the call (CALLEE_SAVED order)
    entry: int                    # call target
    call_pc: int                  # address of the call instruction (0: the harness)


@dataclass
class Event:
    pc: int
    rule: str
    severity: str
    message: str
    key: str


@dataclass
class Fault:
    kind: str        # unmapped / protected / trap / invalid / unsupported / syscall / halt /
                     # runaway (instruction or time budget exhausted) / error
    pc: int
    message: str
    rule: str = ABI_VIOLATION


class Unmapped(Exception):
    """A read or write of guest memory that is not mapped."""


class Observer(Protocol):
    def step(self, m: Machine, pc: int, regs: list[int], frame: Frame) -> None: ...


@dataclass
class RunResult:
    returned: bool
    fault: Fault | None
    regs: list[int]
    steps: int
    entry_rsp: int
    events: list[Event]
    writes: list[tuple[int, int, int, int]]
    externs: list[tuple[str, int]]
    trace: list[int]
    pcs: list[int] | None
    last_writer: list[int]
    df_writer: int
    mmx_last: int
    fptag: int
    memory: dict[str, bytes]
    taint: list[tuple[int, int, int]] = field(default_factory=list)   # (step, pc, reg)
    insns: dict[int, I.Insn] = field(default_factory=dict)
    memory_addr: dict[str, int] = field(default_factory=dict)
    #: hook calls that were further iterations of a rep-prefixed string instruction
    rep_iters: int = 0
    mxcsr: int = MXCSR_INIT
    fpcw: int = FPCW_INIT
    ctl_last: int = 0
    #: final xmm0-15 (unicorn) or zmm0-31 (Bochs) values, low lane first
    vector: list[int] = field(default_factory=list)
    #: the upper halves of ymm/zmm0-15 at return: None when the backend cannot see them
    upper_dirty: bool | None = None
    #: last instruction that wrote a ymm/zmm register (0: none, or vzeroupper since)
    upper_last: int = 0
    backend: str = "unicorn"

    def text_at(self, pc: int) -> str:
        ins = self.insns.get(pc)
        return ins.text if ins is not None else "?"
