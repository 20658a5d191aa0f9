"""The write-order protocols, checked by running the writer (``framevet abi``).

Each run allocates the area with random contents and its guard closed, and
wires it in the way the declaration says: the memory an ``area`` expression
names gets the area's address (``[rdi+0x40]``: rdi points to a fresh random
buffer whose +0x40 holds it), or a ``ret:FUNC`` stub returns it; every ``when``
term is made to hold.  Every store into the area is recorded, including those
of callees run in the emulator and of declared copy helpers (which copy for
real), the parts of one instruction merged into one store.  The guard's value
after each store says open or closed, and the same state machine as the static
rule (:mod:`framevet.stack.writejudge`) judges the sequence.
"""

from __future__ import annotations

import os
import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

from framevet.cfg.protocols import (
    Atom,
    Condition,
    CopyHelper,
    Expr,
    Protocol,
    WriteOrderDecls,
    read_write_order,
)
from framevet.emulate.findings import Finding, finding_at
from framevet.emulate.image import PAGE, Image, link
from framevet.emulate.machine import Machine
from framevet.emulate.spec import (
    BUF_BASE,
    ArgSpec,
    Budget,
    Buffer,
    InitialState,
    make_state,
    parse_args_spec,
)
from framevet.emulate.ucregs import UC_REGS
from framevet.load import LoadedObject
from framevet.load.errors import InputError
from framevet.stack.writejudge import Judge, Phase, Verdict

RULE, UNVERIFIED = "write-order", "write-order-unverified"
#: DWARF numbers (the emulator's register order) of the registers a declaration names
DWARF = {"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": 6, "rsp": 7,
         **{f"r{i}": i for i in range(8, 16)}}
ARGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
STRUCT = 0x4000           # bytes of each buffer an expression points into
MASK64 = (1 << 64) - 1


@dataclass
class _Wiring:
    """The memory one run starts from, built from the declaration's expressions."""

    image: Image
    rng: random.Random
    regs: dict[str, int] = field(default_factory=dict)
    buffers: list[bytearray] = field(default_factory=list)
    addrs: list[int] = field(default_factory=list)
    maps: list[tuple[int, int]] = field(default_factory=list)
    cursor: int = BUF_BASE

    def buffer(self, size: int, data: bytes | None = None) -> int:
        """A buffer ending at a guard page, as the ABI check lays out pointer arguments."""
        span = (size + PAGE - 1) // PAGE * PAGE
        addr = self.cursor + span - ((size + 15) & ~15)
        self.buffers.append(bytearray(data if data is not None else self.rng.randbytes(size)))
        self.addrs.append(addr)
        self.maps.append((self.cursor, span))
        self.cursor += span + PAGE
        return addr

    def locate(self, addr: int) -> tuple[bytearray, int] | None:
        for buf, a in zip(self.buffers, self.addrs, strict=True):
            if a <= addr and addr + 8 <= a + len(buf):
                return buf, addr - a
        return None

    def address_of(self, e: Expr) -> int:
        """Make ``e`` evaluate to a pointer into memory we own; return its value."""
        base = 0
        for atom in e.atoms:
            base += self.pointer(atom)
        return (base + e.const) & MASK64

    def pointer(self, atom: Atom) -> int:
        if atom.kind == "reg":
            if atom.name not in self.regs:
                self.regs[atom.name] = self.buffer(STRUCT)
            return self.regs[atom.name]
        if atom.kind == "sym":
            a = self.image.function_addr(atom.name)
            if a is None:
                a = self.image.data_slots.get(atom.name)
            if a is None:
                raise InputError(atom.name, "symbol named in a protocol is not in the image")
            return a
        if atom.kind == "load" and atom.inner is not None:
            where = self.address_of(atom.inner)
            slot = self.locate(where)
            if slot is None:
                raise InputError(atom.inner.text(), "cannot place this load in memory")
            buf, off = slot
            value = int.from_bytes(buf[off:off + 8], "little")
            if not any(a <= value < a + len(b) for b, a in zip(self.buffers, self.addrs,
                                                                 strict=True)):
                value = self.buffer(STRUCT)
                buf[off:off + 8] = value.to_bytes(8, "little")
            return value
        raise InputError(atom.kind, "cannot wire this expression")

    def set_value(self, e: Expr, value: int) -> None:
        """Make ``e`` evaluate to ``value``. In a sum, a load (else the register that
        comes first in argument order) is the base and gets what remains; the other
        registers get small random offsets, which also fit an ``unsigned int``."""
        if not e.atoms:
            raise InputError(e.text(), "an expression to wire needs a register or a load")
        order = {n: i for i, n in enumerate(ARGS)}
        base = min(e.atoms, key=lambda a: (a.kind != "load", order.get(a.name, 99), a.name))
        want = (value - e.const) & MASK64
        for a in e.atoms:
            if a is base:
                continue
            if a.kind != "reg":
                raise InputError(e.text(), "only one term of a wired sum may be a load")
            if a.name not in self.regs:
                self.regs[a.name] = self.rng.randrange(0, 0x1000, 16)
            want = (want - self.regs[a.name]) & MASK64
        if base.kind == "reg":
            self.regs[base.name] = want
        elif base.kind == "load" and base.inner is not None:
            slot = self.locate(self.address_of(base.inner))
            if slot is None:
                raise InputError(e.text(), "cannot place this load in memory")
            buf, off = slot
            buf[off:off + 8] = want.to_bytes(8, "little")
        else:
            raise InputError(e.text(), "cannot wire this expression")

    def make_hold(self, c: Condition) -> None:
        mask = c.mask or MASK64
        atoms = c.value.atoms
        if len(atoms) == 1 and atoms[0].kind == "reg" and atoms[0].name not in self.regs:
            v = self.rng.getrandbits(64)
            self.regs[atoms[0].name] = ((v & ~mask if c.negated else v | mask)
                                        - c.value.const) & MASK64
            return
        if len(atoms) != 1 or atoms[0].kind != "load":
            cur = self.address_of(c.value) if atoms else c.value.const
        else:
            inner = c.value.atoms[0].inner
            assert inner is not None
            slot = self.locate(self.address_of(inner))
            assert slot is not None
            buf, off = slot
            cur = int.from_bytes(buf[off:off + 8], "little")
            cur = cur & ~mask if c.negated else cur | mask
            buf[off:off + 8] = cur.to_bytes(8, "little")
            return
        if bool(cur & mask) == c.negated:
            raise InputError(c.value.text(), "cannot make this `when` term hold")


class _Recorder(Machine):
    """A Machine that keeps each instruction's stores into the area together and lets
    copy helpers copy and ``ret:`` stubs return the area."""

    def setup(self, area: int, size: int, helpers: dict[str, CopyHelper],
              ret_of: str | None, declared: set[str]) -> None:
        self.area, self.area_size = area, size
        self.helpers, self.ret_of, self.declared = helpers, ret_of, declared
        self.stores: list[tuple[int, int, int, bytes]] = []      # (pc, lo, hi, bytes)
        self.pending: list[tuple[int, int]] = []
        self.pending_pc = 0
        self.unverified: list[tuple[int, str, int]] = []

    def _flush(self) -> None:
        if self.pending:
            lo = min(a for a, _ in self.pending)
            hi = max(a + n for a, n in self.pending)
            data = bytes(self.uc.mem_read(self.area + lo, hi - lo))
            self.stores.append((self.pending_pc, lo, hi, data))
            self.pending = []

    def _on_code(self, uc: object, addr: int, size: int, data: object) -> None:
        if addr != self.cur_pc:
            self._flush()
        super()._on_code(uc, addr, size, data)  # type: ignore[arg-type]

    def _on_write(self, uc: object, access: int, addr: int, size: int, value: int,
                  d: object) -> None:
        super()._on_write(uc, access, addr, size, value, d)  # type: ignore[arg-type]
        if addr < self.area + self.area_size and addr + size > self.area:
            lo = max(addr, self.area) - self.area
            hi = min(addr + size, self.area + self.area_size) - self.area
            self.pending.append((lo, hi - lo))
            self.pending_pc = self.cur_pc

    def _extern(self, name: str, addr: int, regs: list[int]) -> None:
        top = self.frames[-1] if self.frames else None
        site = top.call_pc if top is not None and top.entry == addr else addr
        helper = self.helpers.get(name)
        self._flush()
        if helper is not None and helper.len is not None and helper.src is not None:
            dst, src = regs[DWARF[helper.dst]], regs[DWARF[helper.src]]
            n = regs[DWARF[helper.len]]
            if 0 < n <= 1 << 20:
                data = bytes(self.uc.mem_read(src, n))
                self.uc.mem_write(dst, data)
                if dst < self.area + self.area_size and dst + n > self.area:
                    lo = max(dst, self.area) - self.area
                    hi = min(dst + n, self.area + self.area_size) - self.area
                    self.stores.append((site, lo, hi, bytes(self.uc.mem_read(self.area + lo,
                                                                             hi - lo))))
        elif name not in self.declared and name != self.ret_of:
            for r in ARGS:
                v = regs[DWARF[r]]
                if self.area <= v < self.area + self.area_size:
                    self.unverified.append((site, name, v - self.area))
                    break
        super()._extern(name, addr, regs)
        if name == self.ret_of:
            self.uc.reg_write(UC_REGS[0], self.area)

    def finish(self) -> None:
        self._flush()


def run_write_order(objs: Sequence[LoadedObject], function: str, decls: WriteOrderDecls,
                    declared: set[str], runs: int = 8, seed: int = 1,
                    profile: str = "kernel", budget: Budget | None = None,
                    args_spec: str | None = None) -> list[Finding]:
    """Run ``function`` ``runs`` times per protocol; findings as ``framevet abi`` reports.
    ``args_spec`` (``--args``) gives the other pointer arguments their buffers."""
    protos = decls.for_function(function)
    if not protos:
        return []
    from framevet.emulate import _entry, _find_function

    specs = parse_args_spec(args_spec)
    target = _find_function(objs, function)
    image = link([target])
    entry = _entry(image, function, target.display)
    out: dict[tuple[int, str], Finding] = {}
    for p in protos:
        for run in range(runs):
            _one_run(image, entry, p, decls, declared | decls.declared_functions, run, seed,
                     profile, budget or Budget(), target.display, out, specs)
    return list(out.values())


def _one_run(image: Image, entry: int, p: Protocol, decls: WriteOrderDecls,
             declared: set[str], run: int, seed: int, profile: str, budget: Budget,
             display: str, out: dict[tuple[int, str], Finding],
             specs: list[ArgSpec]) -> None:
    base = make_state(specs, seed, run)
    rng = random.Random(f"framevet-write-order:{seed}:{run}:{p.name}")
    w = _Wiring(image, rng)
    w.cursor = max((b.map_start + b.map_size + PAGE for b in base.buffers), default=BUF_BASE)
    area_init = bytearray(rng.randbytes(p.size))
    if p.guard is not None:
        g = p.guard
        v = int.from_bytes(area_init[g.offset:g.offset + g.size], "little")
        v &= ~(1 << (g.bit if g.bit is not None else 0))
        area_init[g.offset:g.offset + g.size] = v.to_bytes(g.size, "little")
    area = w.buffer(p.size, bytes(area_init))
    if p.ret_of is None:
        w.set_value(p.area, area)
    for c in p.when:
        w.make_hold(c)
    slot = w.address_of(p.slot) if p.slot is not None else None
    regs = list(base.regs)
    for name, v in w.regs.items():
        regs[DWARF[name]] = v
    bufs = list(base.buffers) + [
        Buffer(len(specs) + i, a, len(b), bytes(b), start, span)
        for i, (b, a, (start, span)) in enumerate(zip(w.buffers, w.addrs, w.maps, strict=True))]
    state = InitialState(regs, base.rflags, base.xmm, bufs, [], base.caller_frame, {},
                         base.world_seed)
    m = _Recorder(image, state, entry, budget, profile)
    m.setup(area, p.size, decls.helpers, p.ret_of, declared)
    res = m.run()
    m.finish()
    verdicts = _judge(p, m, res.returned, slot, area)
    trace = _trace(image, p, m.stores)

    def add(v: Verdict, rule: str = RULE, severity: str = "error") -> None:
        key = (v.loc, v.message)
        if key not in out:
            out[key] = finding_at(image, v.loc, rule, severity,
                                  f"{v.message} (run {run})", trace, display)

    for verdict in verdicts:
        add(verdict)
    for site, name, k in m.unverified:
        add(Verdict(site, f"{name} receives {p.name}+{k:#x}: its stores are not verified "
                          f"(declare it in framevet.toml)", "unverified"), UNVERIFIED, "note")
    if res.fault is not None:
        add(Verdict(res.fault.pc, f"{p.name}: the run stopped before returning, the order "
                    f"after it is not verified: {res.fault.message}", "fault"),
            UNVERIFIED, "note")


def _judge(p: Protocol, m: _Recorder, returned: bool, slot: int | None,
           area: int) -> list[Verdict]:
    judge = Judge(p, lambda pc: m.image.describe(pc))
    ph = Phase()
    out: list[Verdict] = []
    first_data = -1
    if p.kind == "publish":
        for pc, addr, size, value in m.writes:
            if slot is not None and addr == slot and size == 8 and value == area:
                ph = judge.published(ph, pc)
            elif area <= addr < area + p.size:
                if first_data < 0:
                    first_data = pc
                out.extend(judge.publish_store(ph, pc, addr - area))
        if first_data >= 0 and ph.state != "published" and returned:
            out.append(Verdict(first_data, f"{p.name}: never publishes the object it writes",
                               "never"))
        return out
    g = p.guard
    assert g is not None
    bit = g.bit if g.bit is not None else 0
    gbyte = g.offset + bit // 8
    opened = False
    for pc, lo, hi, data in m.stores:
        opens = None
        if lo <= gbyte < hi:
            opens = bool(data[gbyte - lo] >> (bit % 8) & 1)
        if first_data < 0 and judge.data_in(lo, hi) is not None:
            first_data = pc
        ph, verdicts = judge.store(ph, pc, lo, hi, opens)
        opened = opened or ph.state == "open"
        out.extend(verdicts)
    if returned:
        out.extend(judge.at_return(ph, m.cur_pc))
        if first_data >= 0 and not opened:
            out.append(Verdict(first_data, f"{p.name}: the update is never opened although "
                               f"the protocol applies", "never"))
    return out


def _trace(image: Image, p: Protocol, stores: list[tuple[int, int, int, bytes]]) -> list[str]:
    lines = []
    for pc, lo, hi, data in stores[:24]:
        lines.append(f"{image.describe(pc)}: {p.name}+{lo:#x}..+{hi:#x} = {data.hex()}")
    return lines


def read_declarations(path: str | None, near: str | None) -> tuple[WriteOrderDecls, set[str]]:
    """The write-order declarations of a sidecar (``--hints``, else ``framevet.toml`` beside
    the input), and the names of every function it declares."""
    if path is None and near:
        cand = os.path.join(os.path.dirname(os.path.abspath(near)), "framevet.toml")
        path = cand if os.path.isfile(cand) else None
    if path is None:
        return WriteOrderDecls(), set()
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        data = tomllib.loads(text)
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"invalid TOML: {exc}") from None
    decls = read_write_order(path, text, data)
    return decls, {n for n, v in data.items() if n != "framevet" and isinstance(v, dict)}
