"""Emulation (design §7): prove the ABI contract and unwinding by running the code.

Three entry points, which ``framevet abi`` and ``framevet diff`` call:

:func:`run_abi`
    run a function of a loaded object under unicorn ``runs`` times with random
    argument registers, canaries in rbx/rbp/r12-r15, a guarded stack and a
    budget; report ``abi-violation`` (callee-saved not restored, rsp
    unbalanced, DF set, stores outside its own frame and the argument buffers,
    return-oriented rets, 32-bit arguments read with junk in the upper half,
    MMX state left without emms), ``unwind-failure`` (unwinding one frame at
    every instruction with framevet's CFA table and with the object's DWARF
    CFI does not recover the true return address, CFA and callee-saved
    registers) and ``emulation-error`` (the run could not be judged:
    unsupported instruction such as AVX, exhausted budget).
:func:`run_raw`
    the same for raw code bytes at a base address, plus ``stub-size`` and
    ``rel32-reach``.
:func:`diff`
    run two versions on the same states, report the first ``diff-divergence``.

All three return a list of :class:`Finding` (empty: clean) and raise
:class:`framevet.load.errors.InputError` for bad input (unknown function, bad
``--args``, unreadable file).  They never hang: every run has an instruction,
time and memory :class:`Budget`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from framevet.emulate.abi import AbiJudge, RunStats, clobber_sets
from framevet.emulate.backend import EMULATORS, choose
from framevet.emulate.bxlib import CPU_MODELS, DEFAULT_CPU
from framevet.emulate.diffing import Side, compared_regs, diff_sides
from framevet.emulate.findings import (
    ABI_VIOLATION,
    DIFF_DIVERGENCE,
    EMULATION_ERROR,
    REL32_REACH,
    RULES,
    STUB_SIZE,
    UNWIND_FAILURE,
    Finding,
)
from framevet.emulate.image import Image, link, place_raw
from framevet.emulate.raw import stub_checks
from framevet.emulate.spec import Budget, check_budget, parse_args_spec
from framevet.load import LoadedObject, load_path
from framevet.load.elf import STT_FUNC
from framevet.load.errors import InputError

__all__ = [
    "ABI_VIOLATION", "CPU_MODELS", "DEFAULT_CPU", "DIFF_DIVERGENCE", "EMULATION_ERROR",
    "EMULATORS", "REL32_REACH", "RULES", "STUB_SIZE",
    "UNWIND_FAILURE", "Budget", "Finding", "FunctionTarget", "RawTarget", "RunStats", "diff",
    "parse_int", "parse_symbols", "parse_target", "run_abi", "run_raw",
]


def parse_int(text: str, what: str = "number") -> int:
    """``0x...`` / decimal integer, or :class:`InputError` naming ``what``."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise InputError(what, f"bad number {text!r}") from None


def parse_symbols(items: Sequence[str]) -> dict[str, int]:
    """``["name=0xaddr", ...]`` (``--symbol``) as a dict."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, addr = item.partition("=")
        if not sep or not name:
            raise InputError("--symbol", f"expected NAME=ADDR, got {item!r}")
        out[name] = parse_int(addr, "--symbol")
    return out


def _find_function(loaded: LoadedObject | Sequence[LoadedObject], function: str
                   ) -> LoadedObject:
    objs = [loaded] if isinstance(loaded, LoadedObject) else list(loaded)
    for lo in objs:
        for s in lo.elf.symbols:
            if s.name == function and s.defined and s.type == STT_FUNC:
                return lo
    for lo in objs:
        for s in lo.elf.symbols:
            if s.name == function and s.defined:
                return lo
    where = objs[0].display if objs else "input"
    raise InputError(where, f"no function {function!r} defined")


def _entry(image: Image, function: str, display: str) -> int:
    addr = image.function_addr(function)
    if addr is None:
        raise InputError(display, f"no function {function!r} defined")
    return addr


def run_abi(loaded: LoadedObject | Sequence[LoadedObject], function: str,
            args_spec: str | None = None, runs: int = 16, seed: int = 0, *,
            budget: Budget | None = None, profile: str = "user", unwind: bool = True,
            values: Mapping[str, int] | None = None, link_with: Sequence[LoadedObject] = (),
            check_nested: bool = False, clobbers: Mapping[str, Iterable[str]] | None = None,
            stack_args: int = 0, stats: RunStats | None = None, emulator: str = "auto",
            cpu: str | None = None, abi: str = "sysv") -> list[Finding]:
    """Check ``function`` of ``loaded`` against the x86-64 ABI by running it.

    loaded
        the object (or every member of an archive: the one defining
        ``function`` is used), as :func:`framevet.load.load_path` returns it.
    function
        symbol name (``--function``).
    args_spec
        ``--args``: ``"ptr:64,int:0..15"`` — see :mod:`framevet.emulate.spec`.
    runs, seed
        ``--runs`` random states, reproducible from ``--seed``.
    budget
        per-run limits (instructions, seconds, memory, stack size).
    profile
        ``"user"`` (128-byte red zone, 16-byte stack alignment at external
        calls) or ``"kernel"`` (neither).
    unwind
        unwind at every instruction with framevet's table and the DWARF CFI.
    values
        initial 8-byte values of undefined data symbols, e.g. glibc's
        ``{"__x86_shared_non_temporal_threshold": 0xc0000}``.
    link_with
        further objects to link in (their functions run instead of stubs).
    check_nested
        also require functions called inside the object to preserve
        callee-saved registers (warnings).
    clobbers
        non-standard conventions (design §6 hints): ``{"load_guest_gprs":
        ["rbx", "rbp", ...]}`` or ``["*"]`` — those callee-saved registers are
        not expected back from that function, nor recovered by unwinding in it.
    stack_args
        words above the return address ``function`` may write (its stack
        arguments; hints ``stack_args = N``); other stores there are into the
        caller's frame.
    stats
        a :class:`RunStats` to fill with figures (instructions stepped...).
    emulator, cpu
        ``"auto"`` (unicorn unless the code has AVX/AVX2/AVX-512 instructions, then
        Bochs), ``"unicorn"`` or ``"bochs"``; ``cpu`` (a :data:`CPU_MODELS` name) selects
        Bochs's CPU model, which ``cpuid`` reports.
    abi
        ``"sysv"`` or ``"ms"`` (Microsoft x64: xmm6-xmm15 are callee-saved too).
    """
    specs = parse_args_spec(args_spec)
    budget = budget or Budget()
    check_budget(specs, budget)
    if runs < 1:
        raise InputError("--runs", "must be at least 1")
    target = _find_function(loaded, function)
    image = link([target, *link_with], values)
    entry = _entry(image, function, target.display)
    st = stats if stats is not None else RunStats()
    backend, model = choose(emulator, cpu, [image], st.notes)
    judge = AbiJudge(image, entry, target.display, specs, budget, profile, unwind,
                     check_nested, st, _clobbers(clobbers), stack_args, backend, model,
                     _abi(abi))
    judge.run_all(runs, seed)
    return judge.findings(runs) + _reloc_notes(image, target.display)


def _abi(abi: str) -> str:
    if abi not in ("sysv", "ms"):
        raise InputError("--abi", f"unknown ABI {abi!r} (sysv or ms)")
    return abi


def _clobbers(clobbers: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[int]]:
    try:
        return clobber_sets(clobbers)
    except ValueError as exc:
        raise InputError("--hints", str(exc)) from None


def _reloc_notes(image: Image, display: str) -> list[Finding]:
    out = []
    for sec, off, typ in image.unsupported_relocs[:1]:
        out.append(Finding(display, sec, "", off, EMULATION_ERROR, "warning",
                           f"relocation type {typ} is not applied for emulation "
                           f"({len(image.unsupported_relocs)} such relocations); code using "
                           f"them reads the unrelocated bytes"))
    return out


def run_raw(code: bytes, base: int, entry: int = 0, *, symbols: Mapping[str, int] | None = None,
            max_size: int | None = None, args_spec: str | None = None, runs: int = 16,
            seed: int = 0, budget: Budget | None = None, profile: str = "kernel",
            unwind: bool = True, link_with: Sequence[LoadedObject] = (),
            values: Mapping[str, int] | None = None, path: str = "<raw>",
            name: str = "stub", clobbers: Mapping[str, Iterable[str]] | None = None,
            stats: RunStats | None = None, emulator: str = "auto", cpu: str | None = None,
            abi: str = "sysv") -> list[Finding]:
    """Check a raw stub: ``code`` placed at ``base`` (``--raw FILE --base ADDR``).

    entry
        offset of the entry point in ``code`` (``--entry``); the stub is
        reported as symbol ``name`` starting there.
    symbols
        ``--symbol name=addr``: call targets.  A name an object in
        ``link_with`` defines is placed at that address (its section moves
        with it) and runs; any other is an external stub there.
    max_size
        ``--max-size``: the stub buffer's size (``stub-size``).
    profile
        defaults to ``"kernel"``: stubs are hypervisor/kernel code.
    The rest as for :func:`run_abi`.  ``rel32-reach`` checks every rel32
    branch and RIP-relative operand against ``symbols``.
    """
    specs = parse_args_spec(args_spec)
    budget = budget or Budget()
    check_budget(specs, budget)
    if runs < 1:
        raise InputError("--runs", "must be at least 1")
    syms = dict(symbols or {})
    if not 0 <= entry < len(code):
        raise InputError(path, f"entry offset 0x{entry:x} is outside the {len(code)}-byte stub")
    found = stub_checks(code, base, syms, max_size, path, name, entry)
    image = place_raw(code, base, {name: entry}, path, syms, link_with, values)
    st = stats if stats is not None else RunStats()
    backend, model = choose(emulator, cpu, [image], st.notes)
    judge = AbiJudge(image, base + entry, path, specs, budget, profile, unwind,
                     False, st, _clobbers(clobbers), 0, backend, model, _abi(abi))
    judge.run_all(runs, seed)
    return found + judge.findings(runs)


@dataclass
class FunctionTarget:
    """One side of a diff: ``FILE:FUNCTION`` (FILE: .o/.a/.so or .S assembled with cflags)."""

    path: str
    function: str
    cflags: list[str] = field(default_factory=list)
    link_with: list[LoadedObject] = field(default_factory=list)
    #: the objects of ``path`` when already loaded (an archive member, say)
    loaded: list[LoadedObject] | None = None

    def side(self, label: str, values: Mapping[str, int] | None) -> Side:
        objs = self.loaded if self.loaded is not None else load_path(self.path, self.cflags)
        target = _find_function(objs, self.function)
        image = link([target, *self.link_with], values)
        return Side(label, f"{self.path}:{self.function}", image,
                    _entry(image, self.function, target.display), target.display)


@dataclass
class RawTarget:
    """One side of a diff: a raw stub (bytes, or read from ``path``) at ``base``."""

    path: str
    base: int
    entry: int = 0
    symbols: dict[str, int] = field(default_factory=dict)
    code: bytes | None = None
    link_with: list[LoadedObject] = field(default_factory=list)
    name: str = "stub"

    def side(self, label: str, values: Mapping[str, int] | None) -> Side:
        code = self.code
        if code is None:
            from framevet.load.object import read_file

            code = read_file(self.path)
        image = place_raw(code, self.base, {self.name: self.entry}, self.path, self.symbols,
                          self.link_with, values)
        return Side(label, f"{self.path}@0x{self.base:x}", image, self.base + self.entry,
                    self.path)


def parse_target(text: str, cflags: Sequence[str] = ()) -> FunctionTarget:
    """``FILE:FUNCTION`` as a :class:`FunctionTarget` (the last colon separates)."""
    path, sep, function = text.rpartition(":")
    if not sep or not path or not function:
        raise InputError(text, "expected FILE:FUNCTION")
    return FunctionTarget(path, function, list(cflags))


def diff(a_spec: str | FunctionTarget | RawTarget, b_spec: str | FunctionTarget | RawTarget,
         runs: int = 16, seed: int = 0, *, args_spec: str | None = None,
         budget: Budget | None = None, compare: str | Sequence[str] = "abi",
         cflags: Sequence[str] = (), values: Mapping[str, int] | None = None,
         profile: str = "user", stats: RunStats | None = None, emulator: str = "auto",
         cpu: str | None = None) -> list[Finding]:
    """Run A and B on the same ``runs`` random states; report their first divergence.

    a_spec, b_spec
        ``"FILE:FUNCTION"`` strings, or :class:`FunctionTarget` /
        :class:`RawTarget` (raw stubs: ``--raw``, ``--base``, ``--entry``,
        ``--symbol`` of each side).
    compare
        ``"abi"`` (rsp, callee-saved, rax, DF — what the ABI defines),
        ``"all"`` (every GPR and the status flags) or a list of register
        names (plus ``"flags"``).  Memory that outlives the call and the
        sequence of external calls are always compared.
    Returns ``[]`` when no run diverges, else one ``diff-divergence`` finding
    located at the instruction on B (else A) that produced the difference (severity
    warning, as in the rules registry),
    with both sides' last instructions as its trace.
    """
    specs = parse_args_spec(args_spec)
    budget = budget or Budget()
    check_budget(specs, budget)
    try:
        compared_regs(compare)
    except ValueError as exc:
        raise InputError("--compare", str(exc)) from None
    sides = []
    for label, spec in (("A", a_spec), ("B", b_spec)):
        t = parse_target(spec, cflags) if isinstance(spec, str) else spec
        sides.append(t.side(label, values))
    backend, model = choose(emulator, cpu, [s.image for s in sides],
                            stats.notes if stats is not None else None)
    if stats is not None:
        stats.backend = backend if backend == "unicorn" else f"bochs ({model})"
    return diff_sides(sides[0], sides[1], specs, runs, seed, budget, compare, profile, stats,
                      backend, model)
