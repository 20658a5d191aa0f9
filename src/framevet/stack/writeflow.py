"""Symbolic values for the write-order rule: which registers, stack slots and
memory cells hold an area address (area+k), a value loaded from the entry state,
or an integer with some known bits (the guard value being built).

One :class:`Flow` is the state on one path.  :func:`step` applies one
instruction and returns what it stored (:class:`Store`), so the rule can judge
stores in program order.  Values are

- :class:`~framevet.cfg.protocols.Expr`: a sum of entry-state atoms and a
  constant (a pointer such as ``[rdi+0x40]+8``, the entry rsp, a symbol's
  address, or an exact integer when it has no atoms);
- :class:`Part`: ``size`` bytes loaded from an address (for ``when`` tests);
- :class:`Bits`: an integer of which the bits in ``mask`` are known;
- ``None``: unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import iced_x86
from iced_x86 import OpKind

from framevet.cfg.protocols import Atom, Expr, load

RSP = 4
ARG_REGS = (7, 6, 2, 1, 8, 9)                 # rdi rsi rdx rcx r8 r9 (x86 numbering)
CALLER_SAVED = (0, 1, 2, 6, 7, 8, 9, 10, 11)
ENTRY_RSP = Expr((Atom("reg", "rsp"),))
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True)
class Part:
    addr: Expr
    size: int


@dataclass(frozen=True)
class Masked:
    """``value & mask`` where ``value`` is symbolic (a ``when`` test in two steps)."""

    value: Part
    mask: int


@dataclass(frozen=True)
class Bits:
    mask: int
    val: int


Value = Expr | Part | Masked | Bits | None
#: an xmm register: its two quadwords
Xmm = tuple[Value, Value] | None


def known(v: Value, size: int = 8) -> tuple[int, int]:
    """(mask, value) of the known bits of ``v`` truncated to ``size`` bytes."""
    m = (1 << 8 * size) - 1
    if isinstance(v, Expr) and v.is_const:
        return m, v.const & m
    if isinstance(v, Bits):
        return v.mask & m, v.val & m
    return 0, 0


def narrow(v: Value, size: int) -> Value:
    """The low ``size`` bytes of ``v``."""
    if isinstance(v, Expr) and not v.is_const:
        inner = v.atoms[0].inner if len(v.atoms) == 1 and v.atoms[0].kind == "load" \
            and not v.const else None
        return Part(inner, size) if inner is not None else None
    if isinstance(v, Part):
        return Part(v.addr, min(size, v.size))
    if isinstance(v, Masked):
        return v if v.mask < 1 << 8 * size else None
    return as_bits(*known(v, size), size)


def as_bits(mask: int, val: int, size: int = 8) -> Value:
    m = (1 << 8 * size) - 1
    mask &= m
    if mask == m:
        return Expr((), val & mask)
    return Bits(mask, val & mask) if mask else None


@dataclass(frozen=True)
class Cond:
    """What the flags say: ``value & mask`` is zero (ZF) or bit set (CF for bt)."""

    value: Value
    mask: int
    carry: bool = False


@dataclass
class Store:
    """One instruction's store: ``size`` bytes at ``addr``; ``value`` for GPR stores
    (``qwords`` for wider ones: the value of each 8 bytes); ``src`` the address the
    bytes were copied from (rep movs, copy helpers)."""

    addr: Expr | None
    size: int | None
    value: Value = None
    qwords: tuple[Value, ...] = ()
    src: Expr | None = None
    what: str = "store"


@dataclass
class Flow:
    regs: list[Value]
    xmm: list[Xmm]
    cells: dict[Expr, tuple[int, Value]]
    cond: Cond | None = None

    @staticmethod
    def entry() -> Flow:
        regs: list[Value] = [Expr((Atom("reg", n),)) for n in REG_NAMES]
        return Flow(regs, [None] * 16, {})

    def copy(self) -> Flow:
        return Flow(list(self.regs), list(self.xmm), dict(self.cells), self.cond)

    def key(self) -> tuple[object, ...]:
        return (tuple(self.regs), tuple(self.xmm), tuple(sorted(self.cells.items())),
                self.cond)

    # -- memory ------------------------------------------------------------------
    def read(self, addr: Expr, size: int) -> Value:
        for caddr, (csize, v) in self.cells.items():
            d = addr.minus_base(caddr)
            if d is None or d < 0 or d + size > csize:
                continue
            if d == 0 and size == csize:
                return v
            m, val = known(v, csize)
            return as_bits(m >> 8 * d, val >> 8 * d, size)
        if self._overlaps(addr, size):
            return None
        return load(addr) if size == 8 else Part(addr, size)

    def _overlaps(self, addr: Expr, size: int) -> list[Expr]:
        out = []
        for caddr, (csize, _) in self.cells.items():
            d = addr.minus_base(caddr)
            if d is not None and -size < d < csize:
                out.append(caddr)
        return out

    def write(self, addr: Expr | None, size: int | None, qwords: tuple[Value, ...]) -> None:
        if addr is None:
            return       # an unknown address: assumed not to alias what we track
        if size is None:
            for c in [c for c in self.cells if c.atoms == addr.atoms]:
                del self.cells[c]
            return
        for c in self._overlaps(addr, size):
            del self.cells[c]
        if size <= 8:
            self.cells[addr] = (size, qwords[0] if qwords else None)
            return
        for i in range(0, size, 8):
            q = qwords[i // 8] if i // 8 < len(qwords) else None
            self.cells[addr.plus(i)] = (min(8, size - i), q)

    def forget_memory(self) -> None:
        """A call: memory other than our own stack may have changed."""
        rsp = self.regs[RSP]
        for c in list(self.cells):
            if c.atoms != ENTRY_RSP.atoms:
                del self.cells[c]
            elif isinstance(rsp, Expr) and rsp.atoms == c.atoms:
                pass
        for r in CALLER_SAVED:
            self.regs[r] = None
        self.xmm = [None] * 16
        self.cond = None


# -- operands ---------------------------------------------------------------------
def _gpr(reg: int) -> tuple[int, int] | None:
    """(index, size in bytes) of a general-purpose register operand."""
    info = iced_x86.RegisterInfo(reg)  # type: ignore[arg-type]
    full = iced_x86.RegisterInfo(info.full_register)
    if full.size != 8 or not iced_x86.Register.RAX <= info.full_register <= iced_x86.Register.R15:
        return None
    return info.full_register - iced_x86.Register.RAX, info.size


def _xmm(reg: int) -> int | None:
    if iced_x86.Register.XMM0 <= reg <= iced_x86.Register.XMM15:
        return reg - iced_x86.Register.XMM0
    return None


SymbolAt = Callable[[iced_x86.Instruction], Expr | None]


class Stepper:
    """Applies instructions to a :class:`Flow`; ``symbol_at`` resolves RIP-relative
    operands (relocation or absolute address) to ``symbol+k``."""

    def __init__(self, symbol_at: SymbolAt) -> None:
        self.symbol_at = symbol_at

    def address(self, f: Flow, ins: iced_x86.Instruction) -> Expr | None:
        if ins.is_ip_rel_memory_operand:
            return self.symbol_at(ins)
        base = ins.memory_base
        if base == iced_x86.Register.NONE:
            a: Expr | None = Expr()
        else:
            b = _gpr(base)
            v = f.regs[b[0]] if b is not None else None
            a = v if isinstance(v, Expr) else None
        if a is None:
            return None
        if ins.memory_index != iced_x86.Register.NONE:
            i = _gpr(ins.memory_index)
            iv = f.regs[i[0]] if i is not None else None
            if not isinstance(iv, Expr):
                return None
            if iv.is_const:
                a = a.plus(iv.const * ins.memory_index_scale)
            elif ins.memory_index_scale == 1:
                a = a.add(iv)              # EXPR+REG: base and index both symbolic
            else:
                return None
        return a.plus(ins.memory_displacement)

    def get(self, f: Flow, ins: iced_x86.Instruction, op: int, size: int) -> Value:
        kind = ins.op_kind(op)
        if kind == OpKind.REGISTER:
            g = _gpr(ins.op_register(op))
            if g is None:
                return None
            v = f.regs[g[0]]
            if g[1] == 8:
                return v
            return narrow(v, g[1])
        if kind == OpKind.MEMORY:
            a = self.address(f, ins)
            return f.read(a, size) if a is not None else None
        if kind in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32,
                    OpKind.IMMEDIATE64, OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32,
                    OpKind.IMMEDIATE8TO64, OpKind.IMMEDIATE32TO64):
            return Expr((), ins.immediate(op) & ((1 << 8 * size) - 1))
        return None

    def put(self, f: Flow, ins: iced_x86.Instruction, op: int, v: Value,
            size: int) -> Store | None:
        kind = ins.op_kind(op)
        if kind == OpKind.REGISTER:
            g = _gpr(ins.op_register(op))
            if g is None:
                return None
            r, rsize = g
            if rsize == 8:
                f.regs[r] = v
            elif rsize == 4:
                f.regs[r] = v if isinstance(v, Part | Masked) or isinstance(v, Expr) and \
                    len(v.atoms) == 1 and v.atoms[0].kind == "reg" and not v.const \
                    else as_bits(*known(v, 4), 8)
                if isinstance(v, Expr) and v.is_const:
                    f.regs[r] = Expr((), v.const & 0xFFFF_FFFF)
            else:
                m = (1 << 8 * rsize) - 1
                om, ov = known(f.regs[r])
                nm, nv = known(v, rsize)
                f.regs[r] = as_bits((om & ~m) | nm, (ov & ~m) | nv)
            return None
        if kind == OpKind.MEMORY:
            a = self.address(f, ins)
            f.write(a, size, (v,))
            return Store(a, size, v, (v,))
        return None


def operand_size(ins: iced_x86.Instruction) -> int:
    if ins.op_count and ins.op_kind(0) == OpKind.REGISTER:
        return max(1, iced_x86.RegisterInfo(ins.op_register(0)).size)
    return max(1, iced_x86.MemorySizeInfo(ins.memory_size).size)
