"""The same run under Bochs's CPU: AVX, AVX2, FMA, BMI1/2 and AVX-512 execute.

:class:`BochsMachine` is a :class:`~framevet.emulate.machine.Machine` whose CPU is
``bochscpu-python``.  Everything the machine observes (shadow stack, unwinding at every
step, stores, external calls) is the shared logic; this module only maps memory, builds
the page tables, translates Bochs's callbacks, and reads the real vector state at the end.

Bochs differs from unicorn in ways the code below relies on (measured, see docs/emulate.md):

* ``before_execution`` runs before each instruction; stopping there leaves the instruction
  unexecuted.  Bochs then resumes wherever rip points, so a redirect (an external call's
  clobbers, an indirect jump to the stub, emulated port I/O) is: stop, change the state,
  resume, and skip the hook once if rip did not move.
* ``rep`` string instructions call ``before_execution`` once and ``repeat_iteration`` after
  each iteration; the iterations are steps (unwind points) as under unicorn.
* Exceptions arrive through one hook (vector, error code) and must stop the CPU; a page
  fault's address is cr2.  Alignment faults are the CPU's own.
* The binding's rflags carries stale arithmetic flags (Bochs evaluates them lazily), so the
  exit page is ``pushfq; hlt`` and the flags a function returns with are read from memory.
* Memory is host pages handed to Bochs by physical address; framevet writes the page
  tables itself (present, writable, no-execute per section) and reads guest memory
  straight from the host pages.  Physical addresses are never reused in a process, because
  Bochs keeps decoded instructions per physical page.
"""

from __future__ import annotations

import ctypes
import gc
import time
import traceback
from typing import Any

from framevet.emulate import bxlib
from framevet.emulate import insn as I
from framevet.emulate.findings import EMULATION_ERROR
from framevet.emulate.image import PAGE, page_down, page_up
from framevet.emulate.machine import FPCW_INIT, MXCSR_INIT, Fault, Machine, Unmapped
from framevet.emulate.places import alignment_message
from framevet.emulate.spec import EXIT_ADDR, RFLAGS, STACK_TOP

_P, _W, _NX = 1, 2, 1 << 63
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_EXIT_CODE = b"\x9c\xf4"              # pushfq; hlt: the real flags, then stop
_NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
          "r12", "r13", "r14", "r15"]
_EXC = {0: "#DE divide error", 1: "#DB debug trap", 3: "int3 breakpoint", 4: "#OF overflow",
        5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
        8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
        12: "#SS stack fault", 13: "#GP general protection fault", 14: "#PF page fault",
        16: "#MF x87 floating-point error", 17: "#AC alignment check",
        19: "#XM SIMD floating-point exception"}

#: next guest-physical page, process-wide: a fresh address for every page ever mapped
_next_gpa = [0x10_0000]


class _Memory:
    """Guest pages (virtual page -> host address) and the 4-level page tables."""

    def __init__(self, bx: Any) -> None:
        self.bx = bx
        self.host: dict[int, int] = {}        # guest-physical page -> host address
        self.pages: dict[int, int] = {}       # guest-virtual page -> host address
        self.pml4 = self._new_page()

    def _new_page(self) -> int:
        gpa = _next_gpa[0]
        _next_gpa[0] += PAGE
        hva = self.bx.memory.allocate_host_page()
        if not hva:
            raise MemoryError("cannot allocate a page for Bochs")
        self.bx.memory.page_insert(gpa, hva)
        ctypes.memset(hva, 0, PAGE)
        self.host[gpa] = hva
        return gpa

    def _entry(self, table: int, index: int) -> int:
        slot = ctypes.c_uint64.from_address(self.host[table] + 8 * index)
        if not slot.value & _P:
            slot.value = self._new_page() | _P | _W
        return int(slot.value & _ADDR_MASK)

    def map(self, va: int, perms: int) -> None:
        """Map the page at ``va`` (perms: 1 read, 2 write, 4 execute); idempotent."""
        if va in self.pages:
            return
        table = self.pml4
        for shift in (39, 30, 21):
            table = self._entry(table, (va >> shift) & 511)
        gpa = self._new_page()
        pte = gpa | _P | (_W if perms & 2 else 0) | (0 if perms & 4 else _NX)
        ctypes.c_uint64.from_address(self.host[table] + 8 * ((va >> 12) & 511)).value = pte
        self.pages[va] = self.host[gpa]

    def write(self, addr: int, data: bytes | bytearray) -> None:
        done = 0
        while done < len(data):
            a = addr + done
            n = min(len(data) - done, PAGE - (a & (PAGE - 1)))
            hva = self.pages.get(a & ~(PAGE - 1))
            if hva is None:
                raise Unmapped(a)
            ctypes.memmove(hva + (a & (PAGE - 1)), bytes(data[done:done + n]), n)
            done += n

    def read(self, addr: int, size: int) -> bytes:
        off = addr & (PAGE - 1)
        if off + size <= PAGE:
            hva = self.pages.get(addr - off)
            if hva is None:
                raise Unmapped(addr)
            return ctypes.string_at(hva + off, size)
        out = bytearray()
        while len(out) < size:
            a = addr + len(out)
            n = min(size - len(out), PAGE - (a & (PAGE - 1)))
            hva = self.pages.get(a & ~(PAGE - 1))
            if hva is None:
                raise Unmapped(a)
            out += ctypes.string_at(hva + (a & (PAGE - 1)), n)
        return bytes(out)

    def release(self) -> None:
        for gpa, hva in self.host.items():
            self.bx.memory.page_remove(gpa)
            self.bx.memory.release_host_page(hva)
        self.host.clear()
        self.pages.clear()


class _Regs:
    """``read()`` of the 16 GPRs, rip and rflags (DWARF order), as unicorn's RegFile."""

    def __init__(self, machine: BochsMachine) -> None:
        self.m = machine
        self.view: bxlib.RegView | None = None

    def read(self) -> list[int]:
        cpu = self.m.cpu
        view = self.view
        regs = view.read() if view is not None and view.slots is not None else \
            [getattr(cpu, n) for n in (*_NAMES, "rip")]
        regs.append(cpu.rflags)
        return regs


class BochsMachine(Machine):
    """One run under Bochs; same observations as :class:`Machine` (see the module doc)."""

    backend = "bochs"
    executes_avx = True

    def _setup_backend(self) -> None:
        self.bx = bxlib.load()
        self.vectors = bxlib.Vectors()
        self.cpu_model = bxlib.current_model()
        self.mem = _Memory(self.bx)
        self.regfile = _Regs(self)   # type: ignore[assignment]
        self.pending: dict[str, Any] = {}
        self.skip_once = False
        self.upper_dirty_at_exit = False
        self.final_flags: int | None = None
        self.store_fixups: list[int] = []
        self._map()

    # -- memory and state ---------------------------------------------------------
    def _map(self) -> None:
        m, st = self.mem, self.state
        for c in self.image.chunks:
            for p in range(page_down(c.addr), page_up(c.addr + max(len(c.data), 1)), PAGE):
                m.map(p, c.perms)
        for c in self.image.chunks:
            if c.perms & 4:
                lo, hi = page_down(c.addr), page_up(c.addr + len(c.data))
                m.write(lo, b"\xcc" * (hi - lo))
        for c in self.image.chunks:
            if c.data:
                m.write(c.addr, bytes(c.data))
        for p in range(self.stack_lo, STACK_TOP, PAGE):
            m.map(p, 3)
        self._map_common(m.write)
        for b in st.buffers:
            for p in range(b.map_start, b.map_start + b.map_size, PAGE):
                m.map(p, 3)
            m.write(b.addr, b.data)
        m.map(EXIT_ADDR, 5)
        m.write(EXIT_ADDR, _EXIT_CODE + b"\xf4" * (PAGE - len(_EXIT_CODE)))
        self.check_memory_budget(len(m.pages) * PAGE)

    def read_mem(self, addr: int, size: int) -> bytes:
        return self.mem.read(addr, size)

    def write_mem(self, addr: int, data: bytes) -> None:
        self.mem.write(addr, data)

    def set_gpr(self, reg: int, value: int) -> None:
        self.pending.setdefault("regs", {})[_NAMES[reg]] = value
        self._halt()

    def set_pc(self, addr: int) -> None:
        self.pending["rip"] = addr
        self._halt()

    def set_xmm(self, index: int, value: int) -> None:
        self.pending.setdefault("xmm", {})[index] = value
        self._halt()

    def set_rflags(self, value: int) -> None:
        self.pending["rflags"] = value
        self._halt()

    def _halt(self) -> None:
        self.session.stop()

    def _at_exit(self) -> None:
        """Returned: let ``pushfq`` run so the real flags land on the stack.  The exit is
        not an instruction of the run (unicorn stops before it)."""
        self.steps -= 1

    # -- callbacks (an exception must never escape into Bochs) ---------------------
    def _guard(self, what: str, exc: BaseException) -> None:
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        self.fault = self.fault or Fault("error", self.cur_pc, f"framevet failed in the "
                                         f"{what} callback: {tb}", EMULATION_ERROR)
        self.session.stop()

    def _before(self, sess: Any, cpu_id: int, insn: Any) -> None:
        try:
            if self.skip_once:
                self.skip_once = False
                return
            self._fix_stores()
            regs = self.regfile.read()
            pc = regs[16]
            if self.returned:
                if pc == EXIT_ADDR + 1:      # after pushfq: the flags, then undo the push
                    self.final_flags = int.from_bytes(self.mem.read(regs[7], 8), "little")
                    self.cpu.rsp = regs[7] + 8
                    self.cpu.rip = EXIT_ADDR
                sess.stop()
                return
            self._step(pc, regs)
        except Exception as exc:  # noqa: BLE001 - see _guard
            self._guard("instruction", exc)

    def _repeat(self, sess: Any, cpu_id: int, insn: Any) -> None:
        try:
            if self.fault is None and not self.returned:
                self._fix_stores()
                self._step(self.cur_pc, self.regfile.read(), repeat=True)
        except Exception as exc:  # noqa: BLE001
            self._guard("rep iteration", exc)

    def _access(self, sess: Any, cpu_id: int, lin: int, phy: int, size: int, memtype: int,
                rw: int) -> None:
        try:
            if rw in (1, 3) and not self.returned and self.fault is None:
                self.store_fixups.append(len(self.writes))
                self._on_store(lin, size, 0)
        except Exception as exc:  # noqa: BLE001
            self._guard("memory", exc)

    def _fix_stores(self) -> None:
        """Stores are reported before they happen: read their values one step later."""
        if not self.store_fixups:
            return
        for i in self.store_fixups:
            pc, addr, size, _ = self.writes[i]
            try:
                value = int.from_bytes(self.mem.read(addr, min(size, 64)), "little")
            except Unmapped:
                value = 0
            self.writes[i] = (pc, addr, size, value)
        self.store_fixups.clear()

    def _exception(self, sess: Any, cpu_id: int, vector: int, error: int) -> None:
        try:
            if self.fault is None and not self.returned:
                self.fault = self._describe_exception(vector, error)
        except Exception as exc:  # noqa: BLE001
            self._guard("exception", exc)
        sess.stop()

    def _interrupt(self, sess: Any, cpu_id: int, vector: int) -> None:
        try:
            if self.fault is None and not self.returned:
                self.fault = self._describe_exception(vector, 0)
        except Exception as exc:  # noqa: BLE001
            self._guard("interrupt", exc)
        sess.stop()

    def _hlt(self, sess: Any, cpu_id: int) -> None:
        if self.fault is None and not self.returned:
            self.fault = Fault("halt", self.cur_pc, "executes hlt")
        sess.stop()

    def _missing(self, gpa: int) -> None:
        # every page framevet maps is present; Bochs asks only for physical pages it
        # walks to that do not exist, which the page tables never point at
        self.fault = self.fault or Fault("error", self.cur_pc, f"Bochs asked for unmapped "
                                         f"physical page 0x{gpa:x}", EMULATION_ERROR)

    def _describe_exception(self, vector: int, error: int) -> Fault:
        pc = self.cur_pc
        ins = self.insns.get(pc)
        if vector == 14:
            addr = int(self.session.cpu.cr2)
            if error & 0x10:
                if error & 1:
                    return Fault("protected", pc, f"jumps to {self.describe(addr)}, which is "
                                 f"not code")
                return Fault("unmapped", pc, f"jumps to {self.where(addr)}")
            size = ins.mem_size if ins is not None and ins.mem_size else 8
            if error & 1 and error & 2:
                region = next((c.label for c in self.image.chunks
                               if c.addr <= addr < c.addr + max(len(c.data), 1)), "")
                return Fault("protected", pc, f"writes to read-only "
                             f"{region or self.describe(addr)} at 0x{addr:x}")
            what = "writes" if error & 2 else "reads"
            return Fault("unmapped", pc, f"{what} {size} byte{'s' * (size != 1)} at "
                         f"{self.where(addr)}")
        if vector == 6 and ins is not None:
            if not ins.valid:
                return Fault("invalid", pc, f"executes undecodable bytes ({ins.text})")
            if ins.text.startswith("ud"):
                return Fault("trap", pc, f"reaches '{ins.text}' (#UD trap)")
            return Fault("trap", pc, f"raises #UD: '{ins.text}' is not an instruction of the "
                         f"emulated CPU ({self.cpu_model}); code that uses it must check "
                         f"cpuid first")
        if vector == 13 and ins is not None and ins.align16:
            regs = self.prev or [0] * 18
            ea = ins.mem_addr(regs)
            if ea & 15:
                return Fault("trap", pc, alignment_message(ins, ea, regs, self.backend))
        what = _EXC.get(vector, f"exception {vector}")
        where = f" at '{ins.text}'" if ins is not None else ""
        return Fault("trap", pc, f"raises {what}{where}")

    # -- running ----------------------------------------------------------------
    def _initial_state(self) -> Any:
        bx, st = self.bx, self.state
        s = bx.State()
        s.cr0 = 0x8005_0033              # PG WP NE ET MP PE
        s.cr4 = 0x0004_0620              # OSXSAVE OSXMMEXCPT OSFXSR PAE
        s.efer = 0xD00                   # NXE LMA LME
        s.xcr0 = 0xE7                    # x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM
        s.cr3 = self.mem.pml4
        s.cs = _segment(bx, 0x10, 0x209B)
        for name in ("ds", "es", "ss", "fs", "gs"):
            setattr(s, name, _segment(bx, 0x18, 0xC093))
        regs = list(st.regs)
        regs[7] = self.E
        for i, n in enumerate(_NAMES):
            setattr(s, n, regs[i])
        s.rip = self.entry
        s.rflags = st.rflags
        s.mxcsr, s.fpcw, s.fptw = MXCSR_INIT, FPCW_INIT, 0xFFFF   # x87 stack empty
        s.mxcsr_mask = 0xFFFF            # every MXCSR bit writable (DAZ too)
        return s

    def run(self) -> Any:
        self.deadline = time.monotonic() + self.budget.seconds
        bx = self.bx
        self.session = bx.Session()
        self.session.missing_page_handler = self._missing
        self.cpu = self.session.cpu
        hook = bx.Hook()
        try:
            self.cpu.state = self._initial_state()
            for i in range(32):
                self.vectors.set(i, self.state.xmm[i] if i < len(self.state.xmm) else 0)
            if self.regfile.view is None:  # type: ignore[attr-defined]
                regs = list(self.state.regs)
                regs[7] = self.E
                self.regfile.view = bxlib.find_registers(regs + [self.entry])  # type: ignore
            hook.before_execution = self._before
            hook.repeat_iteration = self._repeat
            hook.lin_access = self._access
            hook.exception = self._exception
            hook.interrupt = self._interrupt
            hook.hlt = self._hlt
            self._loop(hook)
            if not self.returned and self.fault is None:
                self.fault = Fault("error", self.cur_pc, "Bochs stopped without a reason",
                                   EMULATION_ERROR)
            return self._finish()
        finally:
            # the callbacks hold this machine: drop them before the next Session
            del hook
            self.cpu = None
            self.session = None
            gc.collect()
            self.mem.release()

    def _loop(self, hook: Any) -> None:
        while True:
            self.pending = {}
            self.session.run([hook])
            if not self.pending or self.fault is not None:
                return
            cpu = self.cpu
            before = cpu.rip
            for name, value in self.pending.get("regs", {}).items():
                setattr(cpu, name, value)
            for i, value in self.pending.get("xmm", {}).items():
                self.vectors.set(i, value)
            if "rflags" in self.pending:
                cpu.rflags = self.pending["rflags"]
            if "rip" in self.pending:
                cpu.rip = self.pending["rip"]
            self.skip_once = cpu.rip == before

    def _finish(self) -> Any:
        self._fix_stores()
        res = self._result()
        if self.final_flags is not None:
            res.regs[RFLAGS] = self.final_flags
        res.upper_dirty = self._upper_dirty(res.vector)
        return res

    def _fp_state(self) -> tuple[int, int, int, list[int]]:
        state = self.cpu.state
        vector = [self.vectors.get(i) for i in range(32)]
        return int(state.fptw), int(state.mxcsr), int(state.fpcw), vector

    @staticmethod
    def _upper_dirty(vector: list[int]) -> bool:
        """Bits 128 and up of zmm0-15: what vzeroupper clears (zmm16-31 do not count)."""
        return any(v >> 128 for v in vector[:16])

    def _extern_upper(self, name: str, site: int) -> None:
        if self.upper_last or self._upper_dirty([self.vectors.get(i) for i in range(16)]):
            dirt = f" (ymm/zmm written at {self.describe(self.upper_last)})" \
                if self.upper_last else ""
            self.event(site, f"calls {name} with AVX upper halves dirty{dirt}, no vzeroupper "
                       f"on the way: SSE code in it pays the transition penalty",
                       "call-upper")

    def _port(self, ins: I.Insn, addr: int, regs: list[int]) -> None:
        """Port I/O never reaches Bochs's devices: ``in`` reads seed-derived values."""
        if ins.port == 1:
            size = I.port_size(ins)
            value = self.io.getrandbits(8 * size)
            keep = regs[0] & ~((1 << (8 * size)) - 1) if size < 4 else 0
            self.set_gpr(0, keep | value)
        self.set_pc(addr + ins.length)


def _segment(bx: Any, selector: int, attr: int) -> Any:
    s = bx.Segment()
    s.present, s.selector, s.base, s.limit, s.attr = True, selector, 0, 0xFFFF_FFFF, attr
    return s


__all__ = ["BochsMachine"]
