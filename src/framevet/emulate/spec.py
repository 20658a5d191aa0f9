"""Argument specs, budgets and the random initial state of one run.

An argument spec is a comma-separated list, one item per integer argument in
SysV order (rdi, rsi, rdx, rcx, r8, r9, then the stack):

``ptr:N``        pointer to a zero-filled buffer of N bytes
``ptr:N:rand``   ... filled with random bytes
``ptr:N:str``    ... holding a NUL-terminated string of random non-zero bytes
``ptr:N:copy``   ... a copy of the previous pointer argument's bytes, in half
                 of the runs with one byte (before any NUL) changed: for
                 memcmp/strcmp-like functions to run to the end
``int``          32-bit integer; the register's upper half holds junk
``int:A..B``     32-bit integer in [A, B] (decimal or 0x hex), upper half junk
``long``         64-bit integer;  ``long:A..B`` in [A, B]
``any``          random 64-bit value (the default for unlisted registers)

Every run is generated from ``(seed, run index)`` alone, so two versions of a
routine (``diff``) and a run's re-runs see exactly the same state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from framevet.load.errors import InputError

PAGE = 0x1000

#: integer argument registers in SysV order, by DWARF number
ARG_REGS = (5, 4, 1, 2, 8, 9)        # rdi rsi rdx rcx r8 r9
#: callee-saved registers (DWARF numbers): rbx rbp r12 r13 r14 r15
CALLEE_SAVED = (3, 6, 12, 13, 14, 15)
#: caller-saved GPRs an external call may clobber (DWARF numbers, rax first)
CALLER_SAVED = (0, 1, 2, 4, 5, 8, 9, 10, 11)
REG_NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
RIP, RFLAGS = 16, 17
DF = 0x400

#: fixed user-space layout shared by every run (and both sides of a diff)
BUF_BASE = 0x7E00_0000_0000
STACK_TOP = 0x7FF0_0000_0000
CALLER_AREA = 0x1000      # bytes of caller frame mapped above the return address
EXIT_ADDR = 0x7EAD_0000_0000


@dataclass(frozen=True)
class Budget:
    """Limits of one run: instructions, wall-clock seconds, bytes of memory mapped."""

    insns: int = 500_000
    seconds: float = 5.0
    memory: int = 64 << 20
    stack: int = 256 << 10


@dataclass(frozen=True)
class ArgSpec:
    kind: str            # ptr / int / long / any
    size: int = 0        # ptr: buffer bytes
    fill: str = "zero"   # ptr: zero / rand / str
    lo: int | None = None
    hi: int | None = None

    def text(self) -> str:
        if self.kind == "ptr":
            return f"ptr:{self.size}" + ("" if self.fill == "zero" else f":{self.fill}")
        if self.lo is not None:
            return f"{self.kind}:{self.lo}..{self.hi}"
        return self.kind


def _int(text: str, spec: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InputError("--args", f"bad number {text!r} in {spec!r}") from None


def parse_args_spec(spec: str | None) -> list[ArgSpec]:
    """Parse ``--args``; raise :class:`InputError` naming the bad item."""
    if not spec:
        return []
    out: list[ArgSpec] = []
    for item in (s.strip() for s in spec.split(",")):
        parts = item.split(":")
        kind = parts[0]
        if kind == "ptr":
            if len(parts) not in (2, 3):
                raise InputError("--args", f"{item!r}: expected ptr:N[:rand|str|copy|zero]")
            size = _int(parts[1], item)
            fill = parts[2] if len(parts) == 3 else "zero"
            if size <= 0 or fill not in ("zero", "rand", "str", "copy"):
                raise InputError("--args", f"{item!r}: size must be > 0, fill "
                                           f"zero|rand|str|copy")
            if fill == "copy" and not any(a.kind == "ptr" for a in out):
                raise InputError("--args", f"{item!r}: no earlier pointer argument to copy")
            out.append(ArgSpec("ptr", size, fill))
        elif kind in ("int", "long"):
            if len(parts) == 1:
                out.append(ArgSpec(kind))
                continue
            rng = parts[1].split("..")
            if len(parts) != 2 or len(rng) != 2:
                raise InputError("--args", f"{item!r}: expected {kind}:A..B")
            lo, hi = _int(rng[0], item), _int(rng[1], item)
            bits = 32 if kind == "int" else 64
            if lo > hi or lo < -(1 << (bits - 1)) or hi >= (1 << bits):
                raise InputError("--args", f"{item!r}: empty or out-of-range interval")
            out.append(ArgSpec(kind, lo=lo, hi=hi))
        elif kind == "any" and len(parts) == 1:
            out.append(ArgSpec("any"))
        else:
            raise InputError("--args", f"unknown argument spec {item!r} "
                                       "(ptr:N[:rand|:str], int[:A..B], long[:A..B], any)")
    return out


@dataclass
class Buffer:
    arg: int             # argument index (0-based)
    addr: int
    size: int
    data: bytes
    map_start: int
    map_size: int


@dataclass
class InitialState:
    """Everything a run starts from; generated from (seed, run) only."""

    regs: list[int]                      # 16 GPRs, DWARF order (rsp filled by the machine)
    rflags: int
    xmm: list[int]
    buffers: list[Buffer]
    stack_args: list[int]
    caller_frame: bytes
    #: DWARF reg -> value with a clean (zero) upper half, for 32-bit arguments
    int_args: dict[int, int] = field(default_factory=dict)
    world_seed: int = 0                  # seeds external-call and port-I/O values

    def with_clean_ints(self) -> InitialState:
        regs = list(self.regs)
        for r, v in self.int_args.items():
            regs[r] = v
        return InitialState(regs, self.rflags, self.xmm, self.buffers, self.stack_args,
                            self.caller_frame, {}, self.world_seed)


def _rand_str(rng: random.Random, size: int) -> bytes:
    n = rng.randrange(0, size)
    body = bytes(rng.randrange(1, 256) for _ in range(n))
    return body + b"\0" + rng.randbytes(size - n - 1)


def _copy(rng: random.Random, src: bytes, size: int) -> bytes:
    data = bytearray(src[:size].ljust(size, b"\0"))
    n = data.find(0)
    n = size if n < 0 else n
    if n and rng.random() < 0.5:
        i = rng.randrange(n)
        data[i] = (data[i] + rng.randrange(1, 255)) % 256 or 1
    return bytes(data)


def _int_value(rng: random.Random, a: ArgSpec) -> int:
    if a.lo is not None and a.hi is not None:
        v = rng.randint(a.lo, a.hi)
    else:
        v = rng.getrandbits(32 if a.kind == "int" else 64)
    return v & (0xFFFF_FFFF if a.kind == "int" else (1 << 64) - 1)


def memory_needed(specs: list[ArgSpec], budget: Budget) -> int:
    bufs = sum((s.size + 2 * PAGE - 1) // PAGE * PAGE for s in specs if s.kind == "ptr")
    return bufs + budget.stack + CALLER_AREA + 2 * PAGE


def check_budget(specs: list[ArgSpec], budget: Budget) -> None:
    """Refuse, before allocating anything, argument buffers over the memory budget."""
    need = memory_needed(specs, budget)
    if need > budget.memory:
        raise InputError("--args", f"argument buffers and stack need {need} bytes, over the "
                                   f"{budget.memory}-byte memory budget")
    if budget.insns < 1 or budget.seconds <= 0 or budget.stack < PAGE:
        raise InputError("--budget", "instruction, time and stack budgets must be positive")


def make_state(specs: list[ArgSpec], seed: int, run: int) -> InitialState:
    """The random initial state of run ``run`` under ``seed``."""
    rng = random.Random(f"framevet-emulate:{seed}:{run}")
    regs = [rng.getrandbits(64) for _ in range(16)]
    for r in CALLEE_SAVED:               # canaries: recognisable, distinct, never tiny
        regs[r] = 0xCA11_0000_0000_0000 | (r << 40) | rng.getrandbits(40)
    rflags = 0x202 | (rng.getrandbits(8) & 0xD5)   # IF + random CF/PF/AF/ZF/SF, DF clear
    xmm = [rng.getrandbits(128) for _ in range(16)]
    buffers: list[Buffer] = []
    stack_args: list[int] = []
    int_args: dict[int, int] = {}
    cursor = BUF_BASE
    for i, a in enumerate(specs):
        if a.kind == "ptr":
            span = (a.size + PAGE - 1) // PAGE * PAGE
            # the buffer ends at (or within 15 bytes of) a page end with a guard
            # page above, so overruns fault; the start stays 16-byte aligned
            addr = cursor + span - ((a.size + 15) & ~15)
            if a.fill == "rand":
                data = rng.randbytes(a.size)
            elif a.fill == "str":
                data = _rand_str(rng, a.size)
            elif a.fill == "copy":
                data = _copy(rng, buffers[-1].data, a.size)
            else:
                data = bytes(a.size)
            buffers.append(Buffer(i, addr, a.size, data, cursor, span))
            value = addr
            cursor += span + PAGE
        elif a.kind in ("int", "long"):
            value = _int_value(rng, a)
            if a.kind == "int":
                junk = rng.getrandbits(32) | 0x8000_0000
                if i < len(ARG_REGS):
                    int_args[ARG_REGS[i]] = value
                value |= junk << 32
        else:
            value = rng.getrandbits(64)
        if i < len(ARG_REGS):
            regs[ARG_REGS[i]] = value
        else:
            stack_args.append(value)
    caller = rng.randbytes(CALLER_AREA)
    return InitialState(regs, rflags, xmm, buffers, stack_args, caller, int_args,
                        rng.getrandbits(64))


MXCSR_INIT, FPCW_INIT = 0x1F80, 0x037F
