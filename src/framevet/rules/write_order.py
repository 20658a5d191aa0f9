"""write-order: stores into a declared shared area in the order its protocol needs.

x86-64 makes stores visible in program order, so the emitted store sequence is
what a reader sees.  Every path through a declared function is walked with a
symbolic dataflow (:mod:`framevet.stack.writeflow`): which registers and slots
hold area+k, what value the guard gets, what ``when`` tests.  Each store is
judged by :class:`framevet.stack.writejudge.Judge` (see docs/write-order.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import iced_x86
from iced_x86 import ConditionCode

from framevet.cfg.noreturn import is_noreturn
from framevet.cfg.program import Program
from framevet.cfg.protocols import Atom, Expr, Protocol, WriteOrderDecls
from framevet.decode import insn as d
from framevet.findings import Finding
from framevet.rules.registry import Rule, register
from framevet.stack.writeflow import ARG_REGS, Bits, Cond, Flow, Part, Store, Value, known
from framevet.stack.writejudge import Judge, Phase, Verdict
from framevet.stack.writestep import InsnStepper

if TYPE_CHECKING:
    from framevet.pipeline import Context

#: path steps per function before the walk gives up (and says so)
BUDGET = 200_000


def check(ctx: Context) -> Iterator[Finding]:
    decls: WriteOrderDecls | None = getattr(ctx.hints, "write_order", None)
    if decls is None or not decls.protocols:
        return
    prog = ctx.prog
    for fi, f in enumerate(prog.functions):
        if f.parent != fi:
            continue
        # one walk per protocol: each assumes its own ``when`` holds
        for proto in decls.for_function(f.name):
            yield from _Walk(ctx, fi, [proto], decls).run()


def symbol_resolver(prog: Program) -> object:
    """RIP-relative operand -> ``symbol+k``, through the relocation in an object and
    through the symbol table in a linked image."""
    elf = prog.elf
    by_sec = elf.symbols_by_section()
    named = sorted((s.value, s.size, s.name) for s in elf.symbols
                   if s.name and s.defined and s.type in (0, 1, 2))

    def at(ins: iced_x86.Instruction, sec: int, off: int) -> Expr | None:
        if elf.relocatable:
            end = off + ins.len
            r = elf.reloc_in(sec, off, end)
            if r is None:
                return None
            sym = elf.symbols[r.sym]
            target = r.addend + (end - r.offset)
            name = sym.name
            if sym.type == 3 or not name:          # a section symbol: name the object
                for s in by_sec.get(sym.shndx, []):
                    if s.name and s.offset <= target < s.offset + max(s.size, 1) \
                            and s.type != 3:
                        name, target = s.name, target - s.offset
                        break
                else:
                    return None
            return Expr((Atom("sym", name),), target & ((1 << 64) - 1))
        addr = ins.ip_rel_memory_address
        for value, size, name in named:
            if value <= addr < value + max(size, 1):
                return Expr((Atom("sym", name),), addr - value)
        return None
    return at


@dataclass(frozen=True)
class _Path:
    g: int
    flow: Flow
    phases: tuple[Phase, ...]


class _Walk:
    def __init__(self, ctx: Context, fi: int, protos: list[Protocol],
                 decls: WriteOrderDecls) -> None:
        self.ctx, self.prog, self.fi = ctx, ctx.prog, fi
        self.protos, self.decls = protos, decls
        resolve = symbol_resolver(self.prog)
        self.cur = -1
        self.stepper = InsnStepper(lambda ins: resolve(  # type: ignore[operator]
            ins, self.prog.sec_of[self.cur], self.prog.off[self.cur]))
        self.judges = [Judge(p, self.describe) for p in protos]
        self.found: dict[tuple[int, str], Finding] = {}
        self.insns: dict[int, iced_x86.Instruction] = {}
        self.opened = [False] * len(protos)
        self.first_write = [-1] * len(protos)
        self.notes: set[tuple[int, str]] = set()

    def describe(self, g: int) -> str:
        return self.ctx.symbols.locate(self.prog.sec_of[g], self.prog.off[g]).text()

    def insn(self, g: int) -> iced_x86.Instruction:
        ins = self.insns.get(g)
        if ins is None:
            ins = self.insns[g] = self.prog.instruction(g)
        return ins

    def add(self, v: Verdict, rule: str = "write-order", severity: str | None = None) -> None:
        key = (v.loc, v.message)
        if key not in self.found:
            self.found[key] = self.ctx.finding(v.loc, rule, v.message, severity,
                                               protocol=v.key)

    # -- the walk ------------------------------------------------------------------
    def run(self) -> Iterator[Finding]:
        f = self.prog.functions[self.fi]
        g0 = self.prog.gid(f.sec, f.start)
        if g0 < 0:
            return
        flow = Flow.entry()
        for p in self.protos:
            self._seed(flow, p, Phase())
        work = [_Path(g0, flow, tuple(Phase() for _ in self.protos))]
        seen: set[tuple[object, ...]] = set()
        steps = 0
        while work and steps < BUDGET:
            path: _Path | None = work.pop()
            while path is not None and steps < BUDGET:
                steps += 1
                key = (path.g, path.flow.key(), path.phases)
                if key in seen:
                    break
                seen.add(key)
                path = self._visit(path, work)
        if steps >= BUDGET:
            self.add(Verdict(g0, f"write order not verified: more than {BUDGET} path steps",
                             "budget"), "write-order-unverified", "note")
        for i, p in enumerate(self.protos):
            if self.first_write[i] >= 0 and not self.opened[i]:
                what = ("never publishes the object it writes" if p.kind == "publish" else
                        "the update is never opened although the protocol applies")
                self.add(Verdict(self.first_write[i], f"{p.name}: {what}", "never"))
        yield from self.found.values()

    def _seed(self, flow: Flow, p: Protocol, ph: Phase) -> None:
        """The guard as this writer knows it: closed at entry, then as its phase says."""
        g = p.guard
        if g is None or p.ret_of is not None and not _has_ret(flow, p):
            return
        bit = g.bit if g.bit is not None else 0
        opened = ph.state == "open"
        flow.cells[p.area.plus(g.offset)] = (g.size, Bits(1 << bit, int(opened) << bit))

    def _visit(self, path: _Path, work: list[_Path]) -> _Path | None:
        prog, g = self.prog, path.g
        self.cur = g
        kind = prog.kind[g]
        ins = self.insn(g)
        flow, phases = path.flow, path.phases
        if kind in (d.CALL, d.CALL_DYNAMIC):
            callee = prog.call_dest[g]
            if callee is not None and callee.name in _FTRACE:
                return _Path(prog.next_same_sec(g), flow, phases)   # preserves everything
            flow = flow.copy()
            phases = self._call(g, ins, flow, phases)
            if is_noreturn(prog, callee):
                return None
            return _Path(prog.next_same_sec(g), flow, phases) \
                if prog.next_same_sec(g) >= 0 else None
        if kind == d.RETURN or g in prog.return_thunks:
            self._return(g, phases)
            return None
        if kind in (d.JUMP_UNCOND, d.JUMP_COND, d.JUMP_DYNAMIC) and \
                prog.call_dest[g] is not None:
            nxt = prog.next_same_sec(g)
            if kind == d.JUMP_COND and nxt >= 0:
                work.append(_Path(nxt, flow, phases))
            flow = flow.copy()
            self._return(g, self._call(g, ins, flow, phases))
            return None
        if kind in (d.JUMP_DYNAMIC, d.BUG, d.TRAP, d.CONTEXT_SWITCH):
            return None
        if kind == d.JUMP_UNCOND:
            dest = prog.jump_dest[g]
            return _Path(dest, flow, phases) if dest >= 0 else None
        if kind == d.JUMP_COND:
            taken, fall = self._decide(flow.cond, ins)
            nxt = prog.next_same_sec(g)
            if taken and prog.jump_dest[g] >= 0:
                if fall and nxt >= 0:
                    work.append(_Path(nxt, flow, phases))
                return _Path(prog.jump_dest[g], flow, phases)
            return _Path(nxt, flow, phases) if fall and nxt >= 0 else None
        flow = flow.copy()
        stores = self.stepper.step(flow, ins)
        for st in stores:
            phases = self._judge(g, st, flow, phases)
        nxt = prog.next_same_sec(g)
        return _Path(nxt, flow, phases) if nxt >= 0 and prog.func[nxt] == prog.func[g] \
            else None

    # -- branches on ``when`` --------------------------------------------------------
    def _decide(self, cond: Cond | None, ins: iced_x86.Instruction) -> tuple[bool, bool]:
        """(taken feasible, fall-through feasible) under "every ``when`` holds"."""
        if cond is None:
            return True, True
        cc = ins.condition_code
        if cond.carry and cc in (ConditionCode.B, ConditionCode.AE):
            nonzero_taken = cc == ConditionCode.B
        elif not cond.carry and cc in (ConditionCode.E, ConditionCode.NE):
            nonzero_taken = cc == ConditionCode.NE
        else:
            return True, True
        for p in self.protos:
            if not cond.carry and _offset_in(cond.value, p) is not None:
                # a pointer into the area is not NULL where the protocol applies
                return nonzero_taken, not nonzero_taken
            for w in p.when:
                if _matches(cond, w.value, w.mask):
                    taken = nonzero_taken != w.negated
                    return taken, not taken
        return True, True

    # -- calls -----------------------------------------------------------------------
    def _call(self, g: int, ins: iced_x86.Instruction, flow: Flow,
              phases: tuple[Phase, ...]) -> tuple[Phase, ...]:
        dest = self.prog.call_dest[g]
        name = dest.name if dest is not None else ""
        helper = self.decls.helpers.get(name)
        regs = {n: flow.regs[i] for i, n in enumerate(_NAMES)}
        if helper is not None:
            dst = regs[helper.dst]
            n = known(regs[helper.len])[1] if helper.len and known(regs[helper.len])[0] \
                == (1 << 64) - 1 else None
            src = regs[helper.src] if helper.src else None
            qw: tuple[Value, ...] = ()
            if isinstance(src, Expr) and n is not None and n <= 4096:
                qw = tuple(flow.read(src.plus(i), min(8, n - i)) for i in range(0, n, 8))
            st = Store(dst if isinstance(dst, Expr) else None, n, None, qw,
                       src if isinstance(src, Expr) else None, name)
            flow.write(st.addr, st.size, qw)
            phases = self._judge(g, st, flow, phases)
        elif name not in self.decls.declared_functions and \
                name not in self.ctx.hints.functions:
            self._unverified(g, name, flow)
        keep = dict(flow.cells) if helper is not None else None
        flow.forget_memory()
        if keep is not None:
            flow.cells = keep
        for i, p in enumerate(self.protos):
            if p.ret_of is not None and p.ret_of == name:
                flow.regs[0] = p.area
            self._seed(flow, p, phases[i])
        return phases

    def _unverified(self, g: int, name: str, flow: Flow) -> None:
        for r in ARG_REGS:
            v = flow.regs[r]
            for p in self.protos:
                k = _offset_in(v, p)
                if k is None:
                    continue
                callee = name or "an indirect call"
                self.add(Verdict(g, f"{callee} receives {p.name}+{k:#x} in {_NAMES[r]}: "
                                 f"its stores are not verified (declare it in framevet.toml)",
                                 "unverified"), "write-order-unverified", "note")
                return

    # -- judging ---------------------------------------------------------------------
    def _judge(self, g: int, st: Store, flow: Flow,
               phases: tuple[Phase, ...]) -> tuple[Phase, ...]:
        out = list(phases)
        for i, p in enumerate(self.protos):
            if st.addr is None:
                continue
            if p.kind == "publish" and p.slot is not None and st.addr == p.slot:
                if isinstance(st.value, Expr) and st.value == p.area:
                    out[i] = self.judges[i].published(out[i], g)
                    self.opened[i] = True
                continue
            k = st.addr.minus_base(p.area)
            if k is None:
                continue
            size = st.size if st.size is not None else p.size - k
            lo, hi = max(k, 0), min(k + size, p.size)
            if lo >= hi:
                continue
            judge = self.judges[i]
            if judge.data_in(lo, hi) is not None and self.first_write[i] < 0:
                self.first_write[i] = g
            if p.kind == "publish":
                for v in judge.publish_store(out[i], g, lo):
                    self.add(v)
                continue
            opens = self._guard_state(p, st, k, flow)
            ph, verdicts = judge.store(out[i], g, lo, hi, opens)
            if ph.state == "open":
                self.opened[i] = True
            out[i] = ph
            for v in verdicts:
                self.add(v)
        return tuple(out)

    def _guard_state(self, p: Protocol, st: Store, k: int, flow: Flow) -> bool | None:
        g = p.guard
        assert g is not None
        bit = g.bit if g.bit is not None else 0
        rel = g.offset + bit // 8 - k
        if rel < 0 or st.size is not None and rel >= st.size:
            return None
        if st.qwords and rel // 8 < len(st.qwords):
            m, v = known(st.qwords[rel // 8])
            pos = (rel % 8) * 8 + bit % 8
        elif st.value is not None:
            m, v = known(st.value)
            pos = rel * 8 + bit % 8
        else:
            return None
        if not (m >> pos) & 1:
            return None
        return bool((v >> pos) & 1)

    def _return(self, g: int, phases: tuple[Phase, ...]) -> None:
        for i, _ in enumerate(self.protos):
            for v in self.judges[i].at_return(phases[i], g):
                self.add(v)


#: the compiler's profiling hooks (-pg, -mfentry): they preserve every register
_FTRACE = frozenset({"__fentry__", "mcount", "__mcount"})
_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def _has_ret(flow: Flow, p: Protocol) -> bool:
    return p.area in flow.regs


def _offset_in(v: Value, p: Protocol) -> int | None:
    if not isinstance(v, Expr):
        return None
    k = v.minus_base(p.area)
    return k if k is not None and 0 <= k < p.size else None


def _matches(cond: Cond, value: Expr, mask: int) -> bool:
    """Does the branch test ``when``'s ``value & mask``?"""
    v = cond.value
    if len(value.atoms) == 1 and value.atoms[0].kind == "load" and value.const == 0:
        base = value.atoms[0].inner
        assert base is not None
        if isinstance(v, Part):
            addr, size = v.addr, v.size
        elif isinstance(v, Expr) and len(v.atoms) == 1 and v.atoms[0].kind == "load" \
                and v.const == 0 and v.atoms[0].inner is not None:
            addr, size = v.atoms[0].inner, 8
        else:
            return False
        delta = addr.minus_base(base)
        if delta is None or not 0 <= delta < 8:
            return False
        shifted = (cond.mask & ((1 << 8 * size) - 1)) << 8 * delta
        return shifted & ((1 << 64) - 1) == (mask or (1 << 64) - 1)
    return v == value and cond.mask == (mask or (1 << 64) - 1)


WRITE_ORDER = register(Rule(
    "write-order", "stores into a shared area out of protocol order",
    "a store into a declared shared area (framevet.toml [FUNCTION.protocol.NAME]) that a "
    "reader can see outside the protocol: data written before the update flag is set or the "
    "sequence made odd, or after it is cleared or made even, one store that moves the guard "
    "and writes data, a seqcount that goes from even to even, a return with the update open, "
    "or a store into an object after its pointer was published",
    "x86-64 makes stores visible in program order, so the order of the emitted stores is "
    "exactly what a reader on another CPU (or the guest) sees; a missing smp_wmb() lets the "
    "compiler move, merge or delete stores and readers take torn data as consistent",
    "put the barrier the protocol needs (smp_wmb(), WRITE_ONCE on both sides, "
    "smp_store_release/rcu_assign_pointer), store the guard on its own, and re-check",
    severity="error", family="framevet", check=check))
UNVERIFIED = register(Rule(
    "write-order-unverified", "a write-order protocol that could not be verified",
    "a call that receives a pointer into a declared shared area (its stores are not seen), "
    "or a function with more paths than the walk's budget",
    "stores the callee makes are part of the protocol and are not checked",
    "declare the callee as a copy helper ([framevet.copy_helpers]) or give it its own "
    "protocol declaration",
    severity="note", family="framevet"))
