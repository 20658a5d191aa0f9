"""The ABI contract, judged over a number of random runs of one entry point.

Each run starts from :func:`~framevet.emulate.spec.make_state`; 32-bit integer
arguments get a clean upper half in the judged run and junk in a second run,
and the two must behave the same (checkasm's and abi_test's trick).  Events
seen during runs and the end-of-run checks become :class:`Finding` s, one per
(instruction, kind of problem), with how many runs showed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from framevet.emulate.bochs import BochsMachine
from framevet.emulate.bxlib import DEFAULT_CPU, select_model
from framevet.emulate.child import Crash, Supervisor
from framevet.emulate.findings import (
    ABI_VIOLATION,
    EMULATION_ERROR,
    UNWIND_FAILURE,
    Finding,
    finding_at,
)
from framevet.emulate.image import Image
from framevet.emulate.machine import Machine
from framevet.emulate.records import RunResult
from framevet.emulate.spec import (
    ARG_REGS,
    CALLEE_SAVED,
    DF,
    FPCW_INIT,
    MXCSR_INIT,
    REG_NAMES,
    RFLAGS,
    ArgSpec,
    Budget,
    InitialState,
    make_state,
)
from framevet.emulate.unwind import FRAMEVET, UnwindChecker, UnwindStats

_REG32 = {0: "eax", 1: "edx", 2: "ecx", 3: "ebx", 4: "esi", 5: "edi", 6: "ebp",
          8: "r8d", 9: "r9d", 10: "r10d", 11: "r11d", 12: "r12d", 13: "r13d", 14: "r14d",
          15: "r15d"}


@dataclass
class RunStats:
    """Figures of an emulation: filled in when passed to the API functions."""

    runs: int = 0
    returned: int = 0
    #: instructions executed, every run (judged runs and the junk-upper-half reruns);
    #: unicorn reports each iteration of a rep-prefixed instruction separately ...
    instructions: int = 0
    #: ... and this many of them were such further iterations
    rep_iterations: int = 0
    unwind: UnwindStats = field(default_factory=UnwindStats)
    notes: list[str] = field(default_factory=list)
    #: the emulator that ran the code: "unicorn" or "bochs (MODEL)"
    backend: str = ""


@dataclass
class _Agg:
    pc: int
    rule: str
    severity: str
    message: str
    trace: list[str]
    runs: set[int] = field(default_factory=set)


def clobber_sets(clobbers: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[int]]:
    """``{"load_guest_gprs": ["rbx", ...]}`` (design §6 hints) as DWARF register sets;
    ``"*"`` or ``"all"`` means every callee-saved register."""
    out: dict[str, frozenset[int]] = {}
    for fn, regs in (clobbers or {}).items():
        nums: set[int] = set()
        for r in regs:
            if r in ("*", "all"):
                nums.update(CALLEE_SAVED)
            elif r in REG_NAMES[:16]:
                nums.add(REG_NAMES.index(r))
            else:
                raise ValueError(f"unknown register {r!r} in clobbers of {fn}")
        out[fn] = frozenset(nums)
    return out


_ADDRESS = re.compile(r"(?<![$\w])0x([0-9a-f]{4,})\b")


def _named(image: Image, text: str) -> str:
    """An instruction's branch targets and memory addresses by name (``jb memcpy+0x200``,
    ``cmp __x86_shared_non_temporal_threshold,%rdx``) where the image knows them."""
    def name(m: re.Match[str]) -> str:
        addr = int(m.group(1), 16)
        where = image.describe(addr)
        return m.group(0) if where.startswith("0x") else where

    return _ADDRESS.sub(name, text)


def trace_lines(image: Image, res: RunResult, pcs: list[int] | None = None,
                prefix: str = "") -> list[str]:
    """Disassembly of the last instructions a run executed, oldest first."""
    out: list[str] = []
    repeat = 0
    for pc in pcs if pcs is not None else res.trace:
        text = ("(external call stub)" if pc in image.extern_at
                else _named(image, res.text_at(pc)))
        line = f"{prefix}{image.describe(pc)}: {text}"
        if out and out[-1] == line:
            repeat += 1
            continue
        if repeat:
            out.append(f"{prefix}  ... repeated {repeat} more time{'s' * (repeat > 1)}")
            repeat = 0
        out.append(line)
    if repeat:
        out.append(f"{prefix}  ... repeated {repeat} more time{'s' * (repeat > 1)}")
    return out


MAX_RUNAWAY = 2


class AbiJudge:
    """Runs one entry point ``runs`` times and collects findings."""

    def __init__(self, image: Image, entry: int, display: str, specs: list[ArgSpec],
                 budget: Budget, profile: str, unwind: bool, check_nested: bool,
                 stats: RunStats, clobbers: Mapping[str, frozenset[int]] | None = None,
                 stack_args: int = 0, backend: str = "unicorn", cpu: str = DEFAULT_CPU,
                 abi: str = "sysv") -> None:
        self.image, self.entry, self.display, self.specs = image, entry, display, specs
        self.budget, self.profile, self.check_nested = budget, profile, check_nested
        self.stats = stats
        self.found: dict[str, _Agg] = {}
        self.clobbers = dict(clobbers or {})
        self.stack_args = stack_args
        self.backend, self.cpu, self.abi = backend, cpu, abi
        stats.backend = backend if backend == "unicorn" else f"bochs ({cpu})"
        self.runs_done: int | None = None
        self.checker = UnwindChecker(image, profile, stats.notes, clobbers) if unwind else None
        if self.checker is not None:
            self.checker.stats = stats.unwind

    def add(self, run: int, key: str, pc: int, message: str, rule: str = ABI_VIOLATION,
            severity: str = "error", trace: list[str] | None = None) -> None:
        a = self.found.get(key)
        if a is None:
            a = self.found[key] = _Agg(pc, rule, severity, message, trace or [])
        a.runs.add(run)

    def machine(self, state: InitialState, observe: bool, **kw: object) -> Machine:
        at = {a: regs for fn, regs in self.clobbers.items()
              if (a := self.image.function_addr(fn)) is not None}
        cls = BochsMachine if self.backend == "bochs" else Machine
        return cls(self.image, state, self.entry, self.budget, self.profile,
                       self.checker if observe else None, check_nested=self.check_nested,
                       clobbers_at=at, stack_args=self.stack_args, **kw)  # type: ignore[arg-type]

    def run_all(self, runs: int, seed: int) -> None:
        """``runs`` runs; after :data:`MAX_RUNAWAY` runs that exhaust their budget the
        rest are skipped (noted in ``stats.notes``): runaway code costs the whole
        budget each time and more runs would say nothing new.  Under Bochs every run
        happens in a supervised child process (:mod:`framevet.emulate.child`)."""
        runaway = 0
        sup = None
        if self.backend == "bochs":
            cpu = self.cpu
            sup = Supervisor(self._run_in_child, 2 * self.budget.seconds + 60,
                             lambda: select_model(cpu))
        try:
            for run in range(runs):
                if runaway >= MAX_RUNAWAY:
                    self.stats.notes.append(f"stopped after {run} of {runs} runs: "
                                            f"{runaway} runs exhausted their budget")
                    self.runs_done = run
                    return
                runaway += self._supervised(sup, run, seed) if sup else self.run_one(run, seed)
        finally:
            if sup is not None:
                sup.close()

    def _supervised(self, sup: Supervisor, run: int, seed: int) -> bool:
        got = sup.call((run, seed))
        if isinstance(got, Crash):
            self.add(run, "emulator-crash", self.entry, f"the run could not be judged: "
                     f"{got.reason}", EMULATION_ERROR, "warning")
            return False
        ran_away, found, failures, stats = got
        self.found = found
        self.stats.__dict__.update(stats.__dict__)
        if self.checker is not None:
            self.checker.failures = failures
            self.checker.stats = self.stats.unwind
        return bool(ran_away)

    def _run_in_child(self, request: tuple[int, int]) -> tuple[bool, Any, Any, RunStats]:
        run, seed = request
        ran_away = self.run_one(run, seed)
        failures = self.checker.failures if self.checker is not None else {}
        return ran_away, self.found, failures, self.stats

    def run_one(self, run: int, seed: int) -> bool:
        """One run (and its junk-upper-half rerun); True when it exhausted its budget."""
        state = make_state(self.specs, seed, run)
        clean = state.with_clean_ints() if state.int_args else state
        if self.checker is not None:
            self.checker.run = run
        res = self.machine(clean, True, record_pcs=bool(state.int_args)).run()
        self.stats.runs += 1
        self.stats.instructions += res.steps
        self.stats.rep_iterations += res.rep_iters
        self.stats.returned += res.returned
        self.judge(run, clean, res)
        if res.fault is not None and res.fault.kind == "runaway":
            return True
        if state.int_args:
            junk = self.machine(state, False, record_pcs=True,
                                taint=set(state.int_args)).run()
            self.stats.instructions += junk.steps
            self.stats.rep_iterations += junk.rep_iters
            self.judge_ints(run, state, res, junk)
        return False

    def judge(self, run: int, state: InitialState, res: RunResult) -> None:
        for ev in res.events:
            self.add(run, f"{ev.key}@{ev.pc:x}", ev.pc, ev.message, ev.rule, ev.severity)
        if not res.returned:
            f = res.fault
            if f is not None:
                sev = "warning" if f.rule == EMULATION_ERROR else "error"
                self.add(run, f"fault:{f.kind}@{f.pc:x}", f.pc, f.message, f.rule, sev,
                         trace_lines(self.image, res))
            return
        last = res.trace[-1] if res.trace else self.entry
        want = res.entry_rsp + 8
        if res.regs[7] != want:
            d = res.regs[7] - want
            self.add(run, f"rsp@{last:x}", last, f"returns with rsp unbalanced by {d:+d} bytes")
        for r in CALLEE_SAVED:
            if res.regs[r] != state.regs[r]:
                pc = res.last_writer[r] or last
                self.add(run, f"saved-{r}@{pc:x}", pc,
                         f"callee-saved {REG_NAMES[r]} not restored: the function returns "
                         f"0x{res.regs[r]:x} in it instead of the caller's 0x{state.regs[r]:x} "
                         f"(last written here)")
        if res.regs[RFLAGS] & DF:
            pc = res.df_writer or last
            self.add(run, f"df@{pc:x}", pc, "returns with the direction flag set (set here, "
                     "never cleared)")
        if (res.mxcsr ^ MXCSR_INIT) & 0xFFC0 or (res.fpcw ^ FPCW_INIT) & 0x1F3F:
            pc = res.ctl_last or last
            self.add(run, f"ctl@{pc:x}", pc, f"returns with changed floating-point control "
                     f"bits (MXCSR 0x{MXCSR_INIT:04x} -> 0x{res.mxcsr:04x}, x87 control word "
                     f"0x{FPCW_INIT:04x} -> 0x{res.fpcw:04x}), which the ABI makes callee-saved")
        if res.fptag != 0xFFFF:
            pc = res.mmx_last or last
            self.add(run, f"mmx@{pc:x}", pc, f"returns with MMX/x87 state in use (FPU tag word "
                     f"0x{res.fptag:04x}, not empty): no emms after this instruction")
        if res.upper_dirty or (res.upper_dirty is not None and res.upper_last):
            dirt = f"ymm/zmm written at {self.image.describe(res.upper_last)}, " \
                if res.upper_last else ""
            seen = "observed in the registers" if res.upper_dirty else \
                "the upper bits happen to be zero, but only vzeroupper makes the state clean"
            self.add(run, f"upper@{last:x}", last, f"return with AVX upper halves dirty "
                     f"({dirt}no vzeroupper on the way; {seen}): SSE code after it pays "
                     f"the transition penalty")
        if self.abi == "ms":
            self._judge_ms_xmm(run, state, res, last)

    def _judge_ms_xmm(self, run: int, state: InitialState, res: RunResult, last: int) -> None:
        """The Microsoft x64 ABI makes xmm6-xmm15 callee-saved (SysV makes none of them)."""
        for i in range(6, min(16, len(res.vector), len(state.xmm))):
            got = res.vector[i] & (1 << 128) - 1
            if got != state.xmm[i]:
                self.add(run, f"xmm{i}@{last:x}", last,
                         f"callee-saved xmm{i} not restored (--abi ms: xmm6-xmm15 are "
                         f"callee-saved): it returns 0x{got:032x} instead of the caller's "
                         f"0x{state.xmm[i]:032x}")

    def judge_ints(self, run: int, state: InitialState, clean: RunResult,
                   junk: RunResult) -> None:
        why = _divergence(clean, junk)
        if why is None:
            return
        step, what = why
        hit = next(((s, pc, r) for s, pc, r in junk.taint if s <= step), None)
        if hit is not None:
            _s, pc, reg = hit
        else:
            pcs = junk.pcs or []
            pc = pcs[step - 2] if 1 < step <= len(pcs) + 1 else (junk.trace[-1] if junk.trace
                                                                   else self.entry)
            reg = next(iter(state.int_args))
        idx = ARG_REGS.index(reg) + 1 if reg in ARG_REGS else 0
        self.add(run, f"int32-{reg}", pc,
                 f"reads 32-bit argument {idx} as {REG_NAMES[reg]}, not {_REG32[reg]}: with junk "
                 f"in the upper half of {REG_NAMES[reg]} (which the ABI allows) {what}",
                 trace=trace_lines(self.image, junk, prefix="junk: "))

    def findings(self, runs: int) -> list[Finding]:
        runs = self.runs_done if self.runs_done is not None else runs
        out = []
        for a in self.found.values():
            msg = a.message if runs <= 1 else f"{a.message} (in {len(a.runs)} of {runs} runs)"
            out.append(finding_at(self.image, a.pc, a.rule, a.severity, msg, a.trace,
                                  self.display))
        if self.checker is not None:
            for f in self.checker.failures.values():
                more = len(f.pcs) - 1
                also = f" and at {more} later instruction{'s' * (more > 1)} of this function" \
                    if more > 0 else ""
                right = [t for t in self._tables_at(f.pc) if t != f.table
                         and not any(g.table == t and f.pc in g.pcs
                                     for g in self.checker.failures.values())]
                verdict = f"; {right[0]} unwinds correctly here" if right else ""
                msg = (f"unwinding with {f.table} fails here{also}: it "
                       f"{'; it '.join(f.problems)} [rule {f.rule}]{verdict}")
                if runs > 1:
                    msg += f" (in {len(f.runs)} of {runs} runs)"
                out.append(finding_at(self.image, f.pc, UNWIND_FAILURE, "error", msg, [],
                                      self.display))
        out.sort(key=lambda f: (f.address or 0, f.rule))
        return out

    def _tables_at(self, pc: int) -> list[str]:
        assert self.checker is not None
        return [name for name, rule in self.checker._rules(pc) if rule is not None]


def _divergence(a: RunResult, b: RunResult) -> tuple[int, str] | None:
    """(step, words) of the first difference between two runs of the same code
    (None also when either run was inconclusive: budget, unsupported instruction)."""
    if any(r.fault is not None and r.fault.rule == EMULATION_ERROR for r in (a, b)):
        return None
    pa, pb = a.pcs or [], b.pcs or []
    n = min(len(pa), len(pb))
    for i in range(n):
        if pa[i] != pb[i]:
            return i + 1, (f"the run takes a different path after {len(pa[:i])} instructions "
                           f"(0x{pa[i]:x} vs 0x{pb[i]:x})")
    if a.returned != b.returned or (a.fault and b.fault and a.fault.kind != b.fault.kind):
        fa = a.fault.message if a.fault else "returns"
        fb = b.fault.message if b.fault else "returns"
        return n, f"the run ends differently: {fb} (clean: {fa})"
    if len(pa) != len(pb):
        return n + 1, "the run executes a different number of instructions"
    for r in (0, *CALLEE_SAVED, 7):
        if a.regs[r] != b.regs[r]:
            return n, f"it returns a different {REG_NAMES[r]} (0x{b.regs[r]:x} vs 0x{a.regs[r]:x})"
    for name, data in a.memory.items():
        if b.memory.get(name) != data:
            return n, f"it leaves different contents in {name}"
    return None


__all__ = ["AbiJudge", "RunStats", "FRAMEVET", "trace_lines"]
