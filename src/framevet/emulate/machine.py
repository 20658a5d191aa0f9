"""One emulated run of a function or stub under unicorn, observed at every instruction.

The machine maps an :class:`~framevet.emulate.image.Image`, a guarded stack
(nothing is mapped below it), the caller's frame above the return address,
argument buffers each followed by an unmapped guard page, and an exit page
holding the return address.  A code hook runs before every instruction: it
keeps a *shadow call stack* (the true CFA, return address and callee-saved
values of every active call), hands the state to an observer (the
unwind-at-every-step checker), redirects indirect calls and jumps that do not
land in code to the external stub, and records who last wrote each register.
Memory-write hooks judge every store against the frame it hits.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections import deque
from collections.abc import Callable

import unicorn.unicorn_const as uc_const
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from framevet.emulate import insn as I
from framevet.emulate.findings import ABI_VIOLATION, EMULATION_ERROR
from framevet.emulate.image import PAGE, Image, page_down, page_up
from framevet.emulate.places import alignment_message, unmapped_place
from framevet.emulate.records import Event, Fault, Frame, Observer, RunResult, Unmapped
from framevet.emulate.spec import (
    CALLEE_SAVED,
    CALLER_AREA,
    CALLER_SAVED,
    DF,
    EXIT_ADDR,
    FPCW_INIT,
    MXCSR_INIT,
    REG_NAMES,
    RFLAGS,
    STACK_TOP,
    Budget,
    InitialState,
)
from framevet.emulate.ucregs import UC_REGS as _UC_REGS
from framevet.emulate.ucregs import XMM as _XMM
from framevet.emulate.ucregs import RegFile
from framevet.load.errors import InputError

TRACE_LEN = 12
#: external symbols that change no register: ftrace entry and the return thunks
PRESERVING = frozenset({"__fentry__", "mcount", "__x86_return_thunk", "srso_return_thunk",
                        "srso_alias_return_thunk", "retbleed_return_thunk",
                        "entry_untrain_ret", "zen_untrain_ret", "__x86_return_skl"})
#: retpoline thunks: ``jmp *%reg`` (into code when the register points at code)
_THUNK = re.compile(r"__x86_indirect_(?:call_|jump_)?thunk_(r\w+)")
_REG_NUM = {n: i for i, n in enumerate(REG_NAMES[:16])}
#: VEX-encoded instructions unicorn 2.1 (QEMU 5 TCG) executes: BMI1/2 and vzero*
_VEX_OK = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx",
           "sarx", "shlx", "shrx", "vzeroupper", "vzeroall"}


class Machine:
    """Set up and run one emulation; see the module docstring."""

    def __init__(self, image: Image, state: InitialState, entry: int, budget: Budget,
                 profile: str = "user", observer: Observer | None = None,
                 record_pcs: bool = False, taint: set[int] | None = None,
                 check_nested: bool = False,
                 clobbers_at: dict[int, frozenset[int]] | None = None,
                 stack_args: int = 0) -> None:
        self.image, self.state, self.entry, self.budget = image, state, entry, budget
        self.profile = profile
        self.red_zone = 128 if profile == "user" else 0
        self.observer = observer
        self.check_nested = check_nested
        self.clobbers_at = clobbers_at or {}
        nsa = len(state.stack_args)
        self.E = ((STACK_TOP - CALLER_AREA - 8 * nsa) & ~15) - 8
        #: words above the return address the function may write: its stack arguments
        self.args_end = self.E + 8 + 8 * max(nsa, stack_args)
        self.stack_lo = page_down(self.E) - budget.stack
        self.events: list[Event] = []
        self.writes: list[tuple[int, int, int, int]] = []
        self.externs: list[tuple[str, int]] = []
        self.trace: deque[int] = deque(maxlen=TRACE_LEN)
        self.pcs: list[int] | None = [] if record_pcs else None
        self.insns: dict[int, I.Insn] = {}
        self.last_writer = [0] * 18
        self.df_writer = 0
        self.mmx_last = 0
        self.ctl_last = 0
        self.taint = set(taint or ())
        self.taint_hits: list[tuple[int, int, int]] = []
        self.steps = 0
        self.rep_iters = 0
        self.cur_pc = 0
        self.cur_kind = I.OTHER
        self.prev: list[int] | None = None
        self.fault: Fault | None = None
        self.returned = False
        self.world = random.Random(state.world_seed)
        self.io = random.Random(state.world_seed ^ 0x5EED)
        self.upper_last = 0
        self._setup_backend()
        canaries = tuple(state.regs[r] for r in CALLEE_SAVED)
        self.frames = [Frame(self.E + 8, EXIT_ADDR, canaries, entry, 0)]

    # -- setup -----------------------------------------------------------------
    def _setup_backend(self) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # virtual TLB: addresses above 2^47 (kernel, hypervisor) work too
        self.uc.ctl_set_tlb_mode(uc_const.UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        self._map()
        self.regfile = RegFile(self.uc)

    def _map_common(self, write: Callable[[int, bytes], None]) -> None:
        """The caller's frame, the return address and the stack arguments."""
        st = self.state
        write(self.E + 8, st.caller_frame[: STACK_TOP - self.E - 8])
        write(self.E, EXIT_ADDR.to_bytes(8, "little"))
        for i, v in enumerate(st.stack_args):
            write(self.E + 8 + 8 * i, v.to_bytes(8, "little"))

    def check_memory_budget(self, total: int) -> None:
        if total > self.budget.memory:
            raise InputError(self.image.objects[0].display if self.image.objects else "input",
                             f"emulation needs {total} bytes mapped, over the "
                             f"{self.budget.memory}-byte memory budget")

    def _map(self) -> None:
        uc, st = self.uc, self.state
        pages: dict[int, int] = {}
        for c in self.image.chunks:
            for p in range(page_down(c.addr), page_up(c.addr + max(len(c.data), 1)), PAGE):
                pages[p] = pages.get(p, 0) | c.perms
        total = len(pages) * PAGE
        for p in sorted(pages):
            uc.mem_map(p, PAGE, pages[p])
        for c in self.image.chunks:
            if c.perms & 4:   # pad code pages with int3 so running off the end traps
                lo, hi = page_down(c.addr), page_up(c.addr + len(c.data))
                pad = b"\xcc" * (hi - lo)
                uc.mem_write(lo, pad)
        for c in self.image.chunks:
            if c.data:
                uc.mem_write(c.addr, bytes(c.data))
        uc.mem_map(self.stack_lo, STACK_TOP - self.stack_lo, 3)
        self._map_common(uc.mem_write)
        for b in st.buffers:
            uc.mem_map(b.map_start, b.map_size, 3)
            uc.mem_write(b.addr, b.data)
            total += b.map_size
        uc.mem_map(EXIT_ADDR, PAGE, 5)
        uc.mem_write(EXIT_ADDR, b"\xf4" * PAGE)
        total += STACK_TOP - self.stack_lo + PAGE
        self.check_memory_budget(total)
        regs = list(st.regs)
        regs[7] = self.E
        for r in range(16):
            uc.reg_write(_UC_REGS[r], regs[r])
        uc.reg_write(X.UC_X86_REG_EFLAGS, st.rflags)
        for i, v in enumerate(st.xmm):
            uc.reg_write(_XMM[i], v)
        uc.reg_write(X.UC_X86_REG_FPTAG, 0xFFFF)
        uc.reg_write(X.UC_X86_REG_MXCSR, MXCSR_INIT)
        uc.reg_write(X.UC_X86_REG_FPCW, FPCW_INIT)
        uc.hook_add(UC_HOOK_CODE, self._on_code)
        uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_PROT, self._on_prot)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)

    # -- the backend: unicorn here, Bochs in framevet.emulate.bochs ---------------
    backend = "unicorn"
    #: runs VEX/EVEX instructions beyond BMI1/2 and vzeroupper/vzeroall
    executes_avx = False

    def read_mem(self, addr: int, size: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(addr, size))
        except (UcError, OverflowError):
            raise Unmapped(addr) from None

    def write_mem(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def set_gpr(self, reg: int, value: int) -> None:
        self.uc.reg_write(_UC_REGS[reg], value)

    def set_pc(self, addr: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_RIP, addr)

    def set_xmm(self, index: int, value: int) -> None:
        self.uc.reg_write(_XMM[index], value)

    def set_rflags(self, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, value)

    def _halt(self) -> None:
        self.uc.emu_stop()

    def _at_exit(self) -> None:
        self.uc.emu_stop()

    # -- helpers ---------------------------------------------------------------
    def read64(self, addr: int) -> int | None:
        try:
            return int.from_bytes(self.read_mem(addr, 8), "little")
        except Unmapped:
            return None

    def event(self, pc: int, message: str, key: str, severity: str = "error",
              rule: str = ABI_VIOLATION) -> None:
        self.events.append(Event(pc, rule, severity, message, key))

    def insn_at(self, addr: int) -> I.Insn:
        ins = self.insns.get(addr)
        if ins is None:
            n = min(15, page_up(addr + 1) - addr)
            code = self.read_mem(addr, n)
            if n < 15:
                with contextlib.suppress(Unmapped):
                    code += self.read_mem(addr + n, 15 - n)
            ins = self.insns[addr] = I.decode(code, addr)
        return ins

    def describe(self, addr: int) -> str:
        """Code addresses by symbol, data by the region they are in."""
        if addr == EXIT_ADDR:
            return "the caller"
        text = self.image.describe(addr)
        if not text.startswith("0x"):
            return text
        for b in self.state.buffers:
            if b.addr <= addr < b.addr + b.size:
                return f"argument {b.arg + 1}'s buffer+0x{addr - b.addr:x}"
        if self.stack_lo <= addr < self.E:
            return f"the stack at entry rsp-0x{self.E - addr:x}"
        if self.E <= addr < STACK_TOP:
            return f"the caller's frame at entry rsp+0x{addr - self.E:x}"
        return text

    def _stop(self, fault: Fault) -> None:
        if self.fault is None:
            self.fault = fault
        self._halt()

    # -- the per-instruction hook ---------------------------------------------
    def _on_code(self, uc: Uc, addr: int, size: int, _data: object) -> None:
        self._step(addr, self.regfile.read())

    def _step(self, addr: int, regs: list[int], repeat: bool = False) -> None:
        """Everything observed before the instruction at ``addr`` (or, ``repeat``, before a
        further iteration of the rep-prefixed instruction there) executes."""
        self.steps += 1
        if addr == EXIT_ADDR:
            self.returned = True
            self._at_exit()
            return
        if self.steps > self.budget.insns:
            self._stop(Fault("runaway", self.cur_pc, f"did not return within "
                             f"{self.budget.insns} instructions (runaway loop?)", EMULATION_ERROR))
            return
        if not self.steps & 0xFFF and time.monotonic() > self.deadline:
            self._stop(Fault("runaway", addr, f"did not return within "
                             f"{self.budget.seconds:g} s (runaway loop?)", EMULATION_ERROR))
            return
        prev = self.prev
        if prev is not None:
            pp = self.cur_pc
            lw = self.last_writer
            for i in range(16):
                if regs[i] != prev[i]:
                    lw[i] = pp
            if (regs[RFLAGS] ^ prev[RFLAGS]) & DF:
                self.df_writer = pp
        self.prev = regs
        same = repeat or addr == self.cur_pc
        self.cur_pc = addr
        self.trace.append(addr)
        if self.pcs is not None:
            self.pcs.append(addr)
        name = self.image.extern_at.get(addr)
        if name is not None:
            self.cur_kind = I.RET
            self._extern(name, addr, regs)
            return
        ins = self.insn_at(addr)
        self.cur_kind = ins.kind
        if same and ins.rep:
            self.rep_iters += 1
        if ins.vex and not self.executes_avx and ins.text.split()[0] not in _VEX_OK:
            self._stop(Fault("unsupported", addr, f"cannot emulate AVX instruction "
                             f"'{ins.text}': unicorn 2.1 (QEMU 5 TCG) has no AVX, so the run "
                             f"stops here (dirty upper halves are checked on the code instead)",
                             EMULATION_ERROR))
            return
        if self.observer is not None and self.frames:
            self.observer.step(self, addr, regs, self.frames[-1])
        if ins.align16:
            ea = ins.mem_addr(regs)
            if ea & 15:
                self._stop(Fault("trap", addr, alignment_message(ins, ea, regs, self.backend)))
                return
        if ins.upper:
            self.upper_last = addr if ins.upper > 0 else 0
        if ins.port:
            self._port(ins, addr, regs)
        if self.taint:
            for r in ins.reads64:
                if r in self.taint:
                    self.taint_hits.append((self.steps, addr, r))
                    self.taint.discard(r)
            for r in ins.writes32:
                self.taint.discard(r)
        if ins.ctl:
            self.ctl_last = addr
        if ins.mmx:
            self.mmx_last = addr
        elif ins.emms:
            self.mmx_last = 0
        if ins.kind:
            self._control(ins, addr, regs)

    def _port(self, ins: I.Insn, addr: int, regs: list[int]) -> None:
        """``in``/``out``: unicorn's own hooks answer them (see _on_in)."""

    def _control(self, ins: I.Insn, addr: int, regs: list[int]) -> None:
        kind = ins.kind
        nxt = addr + ins.length
        rsp = regs[7]
        if kind == I.CALL:
            self.frames.append(Frame(rsp, nxt, tuple(regs[r] for r in CALLEE_SAVED),
                                     ins.target, addr))
        elif kind in (I.CALL_IND, I.JMP_IND):
            target = ins.operand_target(regs, self.read64)
            code = target is not None and self.image.is_code(target)
            if kind == I.CALL_IND:
                self.frames.append(Frame(rsp, nxt, tuple(regs[r] for r in CALLEE_SAVED),
                                         target if code and target is not None
                                         else self.image.indirect_slot, addr))
            if not code:
                if kind == I.CALL_IND:
                    self.write_mem(rsp - 8, nxt.to_bytes(8, "little"))
                    self.set_gpr(7, rsp - 8)
                self.set_pc(self.image.indirect_slot)
        elif kind == I.RET:
            self._ret(ins, addr, regs)
        elif kind == I.SYSCALL:
            self._stop(Fault("syscall", addr, f"executes '{ins.text}': system calls are not "
                             f"emulated", EMULATION_ERROR))

    def _ret(self, ins: I.Insn, addr: int, regs: list[int]) -> None:
        target = self.read64(regs[7])
        if target is None:
            return
        after = regs[7] + 8 + ins.ret_pop
        frames = self.frames
        top = frames[-1] if frames else None
        if top is not None and target == top.ra:
            if after != top.cfa:
                d = after - top.cfa
                how = f"{-d} bytes below" if d < 0 else f"{d} bytes above"
                self.event(addr, f"ret returns to {self.describe(target)} with rsp {how} "
                           f"where the call left it (stack unbalanced)", "ret-rsp")
            if len(frames) > 1 and self.check_nested:
                self._check_saved(addr, regs, top)
            frames.pop()
            return
        for depth in range(len(frames) - 2, -1, -1):
            if frames[depth].ra == target:
                self.event(addr, f"ret returns {len(frames) - depth} frames up, to "
                           f"{self.describe(target)}, skipping the return address of "
                           f"{len(frames) - depth - 1} active call(s)", "ret-skip")
                del frames[depth:]
                return
        expect = self.describe(top.ra) if top is not None else "the caller"
        self.event(addr, f"ret does not return to its caller: it jumps to "
                   f"{self.describe(target)} instead of returning to {expect} "
                   f"(return-oriented control flow)", "ret-rop")

    def _check_saved(self, addr: int, regs: list[int], frame: Frame) -> None:
        callee = self.describe(frame.entry)
        skip = self.clobbers_at.get(frame.entry, frozenset())
        for r, v in zip(CALLEE_SAVED, frame.saved, strict=True):
            if regs[r] != v and r not in skip:
                self.event(addr, f"{callee} returns with callee-saved {REG_NAMES[r]} = "
                           f"0x{regs[r]:x}, not the 0x{v:x} its caller "
                           f"({self.describe(frame.call_pc)}) had", f"nested-saved-{r}",
                           "warning")

    def _extern(self, name: str, addr: int, regs: list[int]) -> None:
        top = self.frames[-1] if self.frames else None
        site = top.call_pc if top is not None and top.entry == addr else self.trace[-2] \
            if len(self.trace) > 1 else addr
        thunk = _THUNK.fullmatch(name)
        if thunk is not None:          # retpoline thunk: jmp *%reg
            target = regs[_REG_NUM[thunk.group(1)]]
            if self.image.is_code(target):
                if top is not None and top.entry == addr:
                    top.entry = target
                self.set_pc(target)
                return
        if name in PRESERVING:         # ftrace, return thunks: no register changes
            if top is not None and self.read64(regs[7]) == top.ra:
                self.frames.pop()
            return
        self.externs.append((name, site))
        if regs[RFLAGS] & DF:
            self.event(site, f"calls {name} with the direction flag set", "call-df")
        if self.profile == "user" and (regs[7] + 8) % 16:
            self.event(site, f"calls {name} with rsp misaligned (rsp % 16 = "
                       f"{(regs[7] + 8) % 16} at the call, the ABI wants 0)", "call-align",
                       "warning")
        self._extern_upper(name, site)
        w = self.world
        for r in CALLER_SAVED:
            self.set_gpr(r, w.getrandbits(64))
        for x in range(len(_XMM)):
            self.set_xmm(x, w.getrandbits(128))
        self.set_rflags(0x202 | (w.getrandbits(12) & 0x8D5))
        if top is not None and self.read64(regs[7]) == top.ra:
            self.frames.pop()

    def _extern_upper(self, name: str, site: int) -> None:
        """Calls with AVX upper halves dirty: unicorn cannot see them (checked statically)."""

    # -- memory hooks ----------------------------------------------------------
    def _on_write(self, uc: Uc, access: int, addr: int, size: int, value: int,
                  _d: object) -> None:
        self._on_store(addr, size, value)

    def _on_store(self, addr: int, size: int, value: int) -> None:
        pc = self.cur_pc
        self.writes.append((pc, addr, size, value))
        E = self.E
        if addr + size > E and addr < STACK_TOP:
            if addr < E + 8:
                self.event(pc, "overwrites its own return address", "ra-store")
            elif addr + size > self.args_end:
                self.event(pc, f"stores {size} bytes into its caller's frame at entry "
                           f"rsp+0x{addr - E:x} (outside its own frame and the argument "
                           f"buffers)", "caller-frame")
        elif self.stack_lo <= addr < E:
            if self.cur_kind not in (I.CALL, I.CALL_IND):
                for f in self.frames[1:]:
                    slot = f.cfa - 8
                    if addr < slot + 8 and addr + size > slot:
                        self.event(pc, f"overwrites the return address of the active call "
                                   f"to {self.describe(f.entry)} (from "
                                   f"{self.describe(f.call_pc)})", "nested-ra-store")
            if self.red_zone and self.prev is not None and \
                    addr < self.prev[7] - self.red_zone - 8:
                self.event(pc, f"stores at rsp{addr - self.prev[7]:+d}, below the "
                           f"{self.red_zone}-byte red zone (signal handlers may clobber it)",
                           "red-zone", "warning")

    def where(self, addr: int) -> str:
        """Plain words for an address outside mapped memory."""
        return unmapped_place(addr, self.stack_lo, self.budget, self.state)

    def _on_unmapped(self, uc: Uc, access: int, addr: int, size: int, value: int,
                     _d: object) -> bool:
        if access == uc_const.UC_MEM_FETCH_UNMAPPED:
            msg = f"jumps to {self.where(addr)}"
        else:
            what = "reads" if access == uc_const.UC_MEM_READ_UNMAPPED else "writes"
            msg = f"{what} {size} byte{'s' * (size != 1)} at {self.where(addr)}"
        self._stop(Fault("unmapped", self.cur_pc, msg))
        return False

    def _on_prot(self, uc: Uc, access: int, addr: int, size: int, value: int,
                 _d: object) -> bool:
        what = {uc_const.UC_MEM_WRITE_PROT: "writes to", uc_const.UC_MEM_READ_PROT: "reads",
                uc_const.UC_MEM_FETCH_PROT: "executes"}.get(access, "accesses")
        region = next((c.label for c in self.image.chunks
                       if c.addr <= addr < c.addr + max(len(c.data), 1)), "")
        if access == uc_const.UC_MEM_FETCH_PROT:
            msg = f"jumps to {self.describe(addr)}, which is not code"
        else:
            msg = f"{what} read-only {region or self.describe(addr)} at 0x{addr:x}"
        self._stop(Fault("protected", self.cur_pc, msg))
        return False

    def _on_intr(self, uc: Uc, intno: int, _d: object) -> None:
        names = {0: "#DE divide error", 1: "#DB debug trap", 3: "int3 breakpoint",
                 4: "#OF overflow", 5: "#BR bound range", 6: "#UD invalid opcode",
                 13: "#GP general protection fault", 14: "#PF page fault",
                 17: "#AC alignment check", 19: "#XM SIMD exception"}
        what = names.get(intno, f"interrupt {intno}")
        self._stop(Fault("trap", self.cur_pc, f"raises {what}"))

    def _on_in(self, uc: Uc, port: int, size: int, _d: object) -> int:
        return self.io.getrandbits(8 * size)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _d: object) -> None:
        return None

    def _on_syscall(self, uc: Uc, _d: object) -> None:
        self._stop(Fault("syscall", self.cur_pc, "executes syscall: system calls are not "
                         "emulated", EMULATION_ERROR))

    # -- running ---------------------------------------------------------------
    def run(self) -> RunResult:
        self.deadline = time.monotonic() + self.budget.seconds
        try:
            self.uc.emu_start(self.entry, EXIT_ADDR, timeout=int(self.budget.seconds * 1e6))
        except UcError as e:
            if self.fault is None:
                self.fault = self._uc_fault(e)
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if rip == EXIT_ADDR and self.fault is None:
            self.returned = True
        if not self.returned and self.fault is None:
            if self.steps > self.budget.insns:
                pass
            elif self.insns.get(self.cur_pc) and self.insn_at(self.cur_pc).text == "hlt":
                self.fault = Fault("halt", self.cur_pc, "executes hlt")
            else:
                self.fault = Fault("runaway", self.cur_pc, f"did not return within "
                                   f"{self.budget.seconds:g} s (stopped at 0x{rip:x} after "
                                   f"{self.steps} instructions; runaway loop?)",
                                   EMULATION_ERROR)
        return self._result()

    def _uc_fault(self, e: UcError) -> Fault:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if e.errno == uc_const.UC_ERR_INSN_INVALID:
            try:
                ins = self.insn_at(rip)
            except UcError:
                return Fault("invalid", self.cur_pc, f"invalid instruction at 0x{rip:x}")
            if not ins.valid:
                return Fault("invalid", rip, f"executes undecodable bytes ({ins.text})")
            if ins.text.startswith("ud"):
                return Fault("trap", rip, f"reaches '{ins.text}' (#UD trap)")
            return Fault("unsupported", rip, f"cannot emulate '{ins.text}': unicorn rejects "
                         f"it as an invalid instruction", EMULATION_ERROR)
        return Fault("error", self.cur_pc, f"emulation failed: {e}", EMULATION_ERROR)

    def _fp_state(self) -> tuple[int, int, int, list[int]]:
        """(x87 tag word, MXCSR, x87 control word, xmm0-15) at the end of the run."""
        uc = self.uc
        return (uc.reg_read(X.UC_X86_REG_FPTAG), uc.reg_read(X.UC_X86_REG_MXCSR),
                uc.reg_read(X.UC_X86_REG_FPCW), [int(uc.reg_read(x)) for x in _XMM])

    def _result(self) -> RunResult:
        regs = self.regfile.read()
        prev = self.prev
        if prev is not None:
            for i in range(16):
                if regs[i] != prev[i]:
                    self.last_writer[i] = self.cur_pc
            if (regs[RFLAGS] ^ prev[RFLAGS]) & DF:
                self.df_writer = self.cur_pc
        mem: dict[str, bytes] = {}
        where: dict[str, int] = {}
        for b in self.state.buffers:
            name = f"argument {b.arg + 1}'s buffer"
            mem[name], where[name] = self.read_mem(b.addr, b.size), b.addr
        mem["caller's frame"] = self.read_mem(self.E + 8, STACK_TOP - self.E - 8)
        where["caller's frame"] = self.E + 8
        for name, a in self.image.data_slots.items():
            if not name.startswith("<"):
                mem[name], where[name] = self.read_mem(a, 8), a
        fptag, mxcsr, fpcw, vector = self._fp_state()
        return RunResult(self.returned, self.fault, regs, self.steps, self.E, self.events,
                         self.writes, self.externs, list(self.trace), self.pcs,
                         self.last_writer, self.df_writer, self.mmx_last, fptag, mem,
                         self.taint_hits, self.insns, where, self.rep_iters, mxcsr, fpcw,
                         self.ctl_last, vector, None, self.upper_last, self.backend)
