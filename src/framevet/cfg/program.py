"""Control flow: functions, branch and call destinations, alternatives, jump tables.

All instructions of an object get one global number (``gid``); a section's
instructions are contiguous.  Per-instruction facts live in parallel lists on
:class:`Program`, so the CFA walk works on integers.

What objtool learns from ``.discard.*`` annotations that a linked ``.ko`` no
longer has is inferred here from what the link keeps:

* WARN()'s ``ud2`` is reachable when ``__bug_table`` flags it BUGFLAG_WARNING;
* a ``call`` to a local label (RSB stuffing) is an intra-function call: a jump
  that keeps its push;
* a ``.cold`` part's parent is looked up in the same source file first.

An unlinked kernel object is read the way objtool 6.1 reads it (``strict``): a
decode or annotation problem that makes objtool abandon the file is recorded as
a fatal :class:`Problem` (and no ORC is generated for the object), in the order
objtool's ``decode_sections()`` would meet it; the analysis keeps going where it
safely can.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import iced_x86

from framevet.cfg.coderanges import LeftOut
from framevet.decode import insn as d
from framevet.decode.insn import DecodedSection
from framevet.load.elf import (
    ElfObject,
    Symbol,
)

SKIP_ORC_SECTIONS = (".altinstr_replacement", ".altinstr_aux")
BUGFLAG_WARNING = 1

# objtool's reading phases, in order: a problem's phase orders it among the others
(P_ELF, P_DECODE, P_IGNORES, P_IGNORE_ALTS, P_NOENDBR, P_SPECIAL, P_JUMPS, P_INTRA, P_CALLS,
 P_DEAD_ENDS, P_JUMP_TABLES, P_HINTS, P_RETPOLINE, P_INSTR) = range(14)


@dataclass(slots=True)
class Problem:
    """Something objtool reports while reading the file (before any walk)."""

    rule: str
    message: str
    #: where: (section index, offset); section -1 for objtool's plain messages
    sec: int = -1
    off: int = 0
    #: objtool abandons the file here (kernel profile only)
    fatal: bool = False
    phase: int = 0


@dataclass
class Function:
    sym: Symbol
    sec: int
    start: int
    end: int
    name: str
    #: index of the parent function for ``X.cold`` parts (itself otherwise)
    parent: int = -1
    #: index of the ``.cold`` child, if any
    child: int = -1
    #: canonical alias (objtool walks only the canonical one)
    canonical: bool = True
    file_group: int = 0


@dataclass
class AltGroup:
    first: int
    last: int
    #: the original group for a replacement group (-1 for an original group)
    orig: int = -1
    size: int = 0
    #: per byte offset: interned CFA state of the instruction starting there
    cfi: list[object] = field(default_factory=list)


@dataclass
class Program:
    """An object's instructions with everything the walk needs, as gid-indexed lists."""

    elf: ElfObject
    sections: list[DecodedSection]
    base: dict[int, int]
    sec_of: list[int]
    off: list[int]
    length: list[int]
    kind: list[int]
    ops: list[tuple[d.StackOp, ...] | None]
    func: list[int]
    jump_dest: list[int]
    call_dest: list[Symbol | None]
    dead_end: bytearray
    alts: dict[int, list[tuple[int, bool]]]
    ignore_alts: bytearray
    alt_group: dict[int, int]
    groups: list[AltGroup]
    functions: list[Function]
    jump_table_insn: set[int]
    intra_calls: set[int]
    retpoline: set[int]
    notes: list[tuple[int, str]]
    #: jumps to __x86_return_thunk (returns, but retpoline-safe ones)
    return_thunks: set[int] = field(default_factory=set)
    #: functions declared noreturn (framevet.toml)
    declared_noreturn: set[str] = field(default_factory=set)
    #: gid -> callee-saved registers the instruction may write (see decode)
    cs_writes: dict[int, int] = field(default_factory=dict)
    #: gids that may store through an rsp/rbp-based memory operand (see decode)
    stack_stores: list[int] = field(default_factory=list)
    #: 1 for the last instruction of each section
    sec_last: bytearray = field(default_factory=bytearray)
    profile: str = "kernel"
    ignore_unreachables: bool = False
    secmap: dict[int, DecodedSection] = field(default_factory=dict)
    noreturn_cache: dict[int, bool] = field(default_factory=dict)
    #: linked images: defined functions by name (unversioned), filled on first use
    defined_functions: dict[str, Symbol] | None = None
    #: decode/annotation problems in objtool's order (``notes`` is the legacy form)
    problems: list[Problem] = field(default_factory=list)
    #: linked images: stretches of executable sections that are no x86-64 code
    #: (:mod:`framevet.cfg.coderanges`), and how many bytes were not decoded in all
    left_out: list[LeftOut] = field(default_factory=list)
    not_code_bytes: int = 0
    phase: int = P_ELF
    #: an unlinked kernel object: objtool's rules for what aborts the file apply as they
    #: are (a linked module has lost the annotations they depend on)
    strict: bool = False
    #: ``--uaccess``: the SMAP alternative is walked instead of the original
    uaccess: bool = False
    #: objtool's insn->ignore: STACK_FRAME_NON_STANDARD functions, ignored replacements
    ignored: set[int] = field(default_factory=set)
    #: ANNOTATE_RETPOLINE_SAFE instructions
    retpoline_safe: set[int] = field(default_factory=set)
    #: unwind hints: gid -> CFI tuple, and the SAVE/RESTORE instructions
    hint_cfi: dict[int, tuple[int, ...]] = field(default_factory=dict)
    hint_save: set[int] = field(default_factory=set)
    hint_restore: set[int] = field(default_factory=set)
    #: ANNOTATE_NOENDBR targets, instrumentation_begin/_end marks (+1/-1), --unret entry
    #: points; ``ibt``: --ibt in effect (hints are checked for ENDBR as they are read)
    noendbr: set[int] = field(default_factory=set)
    instr: dict[int, int] = field(default_factory=dict)
    entry: set[int] = field(default_factory=set)
    ibt: bool = False

    def problem(self, rule: str, message: str, g: int = -1, at: tuple[int, int] | None = None,
                fatal: bool = False) -> None:
        """Record a problem at instruction ``g``, at ``(section, offset)`` or nowhere."""
        sec, off = (self.sec_of[g], self.off[g]) if g >= 0 else at or (-1, 0)
        # objtool abandons an object, never a linked image (framevet goes on there)
        self.problems.append(Problem(rule, message, sec, off, fatal and self.profile == "kernel"
                                     and self.elf.relocatable, self.phase))

    @property
    def aborted(self) -> Problem | None:
        """The first problem on which objtool abandons the file, if any."""
        return next((p for p in self.problems if p.fatal), None)

    def gid(self, sec: int, off: int) -> int:
        ds = self.secmap.get(sec)
        if ds is None:
            return -1
        offs = ds.off       # ascending: a bisection, not a dict of every offset (memory)
        i = bisect_left(offs, off)
        return self.base[sec] + i if i < len(offs) and offs[i] == off else -1

    def instruction(self, g: int, address: bool = False) -> iced_x86.Instruction:
        """Instruction ``g`` decoded again with all of iced's detail (the compact records
        keep only what the walk needs); its ip is the section offset, or the address."""
        sec = self.elf.sections[self.sec_of[g]]
        off = self.off[g]
        ip = sec.addr + off if address else off
        return iced_x86.Decoder(64, sec.data[off:off + self.length[g]], ip=ip).decode()

    def writes(self, g: int, reg: int) -> bool:
        """Instruction ``g`` may write hardware register ``reg`` (iced, decoded again)."""
        ops = self.ops[g]
        if ops and any(op[0] == d.D_REG and op[1] == reg for op in ops):
            return True
        return bool(d.gprs_written(d.INFO.info(self.instruction(g))) >> reg & 1)

    def containing(self, sec: int, off: int) -> int:
        """The instruction whose bytes hold ``sec+off`` (a relocation, a jump into the
        middle of an instruction), or -1."""
        ds = self.secmap.get(sec)
        if ds is None:
            return -1
        i = bisect_right(ds.off, off) - 1
        if i < 0 or off >= ds.off[i] + ds.length[i]:
            return -1
        return self.base[sec] + i

    def next_same_sec(self, g: int) -> int:
        return -1 if self.sec_last[g] else g + 1

    def prev_same_sec(self, g: int) -> int:
        p = g - 1
        if p >= 0 and self.sec_of[p] == self.sec_of[g]:
            return p
        return -1

    def section_name(self, sec: int) -> str:
        return self.elf.sections[sec].name

    def func_insns(self, fi: int) -> list[int]:
        """objtool's func_for_each_insn: the function, then its ``.cold`` part."""
        out: list[int] = []
        seen: set[int] = set()
        while fi >= 0 and fi not in seen:
            seen.add(fi)
            f = self.functions[fi]
            g = self.gid(f.sec, f.start)
            while g >= 0 and self.func[g] == fi:
                out.append(g)
                g = self.next_same_sec(g)
            fi = f.child if f.child != fi else -1
        return out
