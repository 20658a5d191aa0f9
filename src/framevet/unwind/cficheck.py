"""DWARF CFI against the code: ``framevet cfi``.

    check_cfi(obj: framevet.load.LoadedObject, table: CfaTable | None = None,
              ) -> list[CfiFinding]

``CfiFinding`` is a :class:`framevet.findings.Finding` (file, rule,
severity, message, location -> section / symbol / offset, source) with a
``fix`` field; ``details`` carries ``fix``, ``cfi``, ``code`` and ``insns`` too,
so they survive :func:`dataclasses.asdict`.  Findings:

``cfi-mismatch`` (error)
    At some instruction the CFI's CFA rule or a saved-register rule (rbx, rbp,
    r12-r15, return address) differs from framevet's analysis (profile
    ``user``, :func:`framevet.unwind.cfatable.cfa_table`).  One finding per
    disagreeing range, at its first instruction: what the CFI says, what the
    code does, and the instruction that explains it.  For assembly sources
    (``.S``) ``fix`` holds the ``.cfi_*`` directives that make the CFI right
    there (to be placed before that instruction).
``cfi-missing`` (warning)
    A function no FDE covers (or only partly), an FDE that covers no function,
    unreadable CFI.

Not compared (framevet cannot know better, or it makes no difference):
instructions framevet never reached or whose CFA it lost; CFA expressions other
than ``*(reg+off)``; registers the CFI keeps in another register or computes
with an expression framevet does not model; a CFI that still names a register's
save slot after the epilogue restored it (the slot still holds the value: GCC
never emits ``.cfi_restore`` there); frames whose return address is
``undefined`` (outermost frames: thread and context starts).  A CFA rule on a
register or stack slot framevet knows holds a copy of the CFA (``mov %rsp, %rbx``,
``mov %rax, 16(%rsp)``) is the same rule; one naming a register reloaded from, or
a slot in, stack memory framevet does not track gets one ``cfa-unmodelled`` note
per function and is not compared.  Registers a local helper's callers never read
after the call (:mod:`framevet.unwind.localconv`) are not compared in the helper.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import iced_x86

from framevet.cfg.program import Function, Program
from framevet.decode import insn as d
from framevet.findings import Finding, Location, SymbolIndex
from framevet.load.elf import STT_FUNC
from framevet.load.object import LoadedObject
from framevet.unwind.cfarule import (
    CFA_DEREF,
    CFA_EXPR,
    CFA_UNDEFINED,
    DWARF_NAMES,
    CfaRule,
    reg_name,
)
from framevet.unwind.cfatable import CfaTable, cfa_table
from framevet.unwind.cfifix import (
    CHECKED_REGS,
    RA,
    REG_BY_NAME,
    _directives,
    _reset,
)
from framevet.unwind.cfiplaces import RegisterPlaces
from framevet.unwind.dwarf import FdeTable, read_cfi
from framevet.unwind.loaderrun import loader_run_functions

MISMATCH, MISSING, UNMODELLED = "cfi-mismatch", "cfi-missing", "cfa-unmodelled"

_PADDING = (d.NOP, d.TRAP)


@dataclass(slots=True)


class CfiFinding(Finding):
    """A :class:`Finding` with the ``.cfi_*`` directives that would fix it."""

    fix: list[str] = field(default_factory=list)

    @property
    def section(self) -> str | None:
        return self.location.section if self.location else None

    @property
    def symbol(self) -> str | None:
        return self.location.symbol if self.location else None

    @property
    def offset(self) -> int | None:
        """Offset in the symbol (in the section when there is no symbol)."""
        loc = self.location
        if loc is None:
            return None
        return loc.symbol_offset if loc.symbol is not None else loc.offset

    def text(self) -> str:
        out = Finding.text(self)
        if self.fix:
            at = f"{self.source[0]}:{self.source[1]}" if self.source else "here"
            out += f"\n    fix, before {at}:"
            out += "".join(f"\n        {line}" for line in self.fix)
            end = self.details.get("fix_end")
            if end:
                out += f"\n    and before {self.details.get('fix_end_at')}:"
                out += "".join(f"\n        {line}" for line in end)
        return out


def check_cfi(obj: LoadedObject, table: CfaTable | None = None) -> list[CfiFinding]:
    """Compare ``obj``'s ``.eh_frame``/``.debug_frame`` with framevet's analysis."""
    return _Checker(obj, table or cfa_table(obj.elf, "user")).run()


# ---------------------------------------------------------------------------

class _Checker:
    def __init__(self, obj: LoadedObject, table: CfaTable) -> None:
        self.obj = obj
        self.elf = obj.elf
        self.table = table
        self.prog = table.prog
        self.syms = SymbolIndex(obj.elf)
        self.out: list[CfiFinding] = []
        self.fmt = iced_x86.Formatter(iced_x86.FormatterSyntax.GAS)
        self.regs_at = RegisterPlaces(self.prog, table)
        self._reg_cache: dict[int, dict[int, str]] = {}
        self._keep: list[CfaRule] = []
        self._current_fde: FdeTable | None = None
        self._noted: set[int] = set()          # functions with a cfa-unmodelled note

    # -- findings --------------------------------------------------------------
    def _where(self, sec: int, off: int) -> tuple[Location, tuple[str, int] | None]:
        loc = self.syms.locate(sec, off)
        return loc, self.obj.source_of(self.elf.sections[sec].name, off)

    def _column(self, sec: int, off: int) -> int:
        return self.obj.column_of(self.elf.sections[sec].name, off)

    def _add(self, rule: str, severity: str, sec: int, off: int, message: str,
             fix: list[str] | None = None, **details: object) -> None:
        loc, src = self._where(sec, off)
        det = dict(details)
        if fix:
            det["fix"] = list(fix)
        self.out.append(CfiFinding(self.obj.display, rule, message, severity, loc, src, det,
                                   column=self._column(sec, off) if src else 0,
                                   fix=list(fix or [])))

    # -- driver ------------------------------------------------------------------
    def run(self) -> list[CfiFinding]:
        info = read_cfi(self.elf)
        for err in info.errors:
            self.out.append(CfiFinding(self.obj.display, MISSING,
                                       f"can't read the CFI: {err}", "warning"))
        fdes = _pick(info.fdes)
        self._missing(fdes)
        for fde in fdes:
            # PLT stubs: their CFI is an expression of rip by design (not modelled)
            if fde.section in self.prog.secmap and not fde.section_name.startswith(".plt"):
                self._compare(fde)
        self.out.sort(key=lambda f: (f.location.section if f.location else "",
                                     f.location.offset if f.location else -1))
        return self.out

    # -- cfi-missing ---------------------------------------------------------------
    def _missing(self, fdes: list[FdeTable]) -> None:
        prog = self.prog
        by_sec: dict[int, list[FdeTable]] = {}
        for f in fdes:
            by_sec.setdefault(f.section, []).append(f)
        has_symtab = any(s.type == 2 for s in self.elf.sections)   # SHT_SYMTAB
        spans = _FunctionSpans(prog.functions)
        for fde in fdes:
            if fde.section < 0 or fde.section not in prog.secmap:
                where = (f"{fde.section_name}+0x{fde.start:x}" if fde.section >= 0
                         else "an address in no code section")
                self.out.append(CfiFinding(
                    self.obj.display, MISSING,
                    f"FDE at {fde.frame_section}+0x{fde.fde_offset:x} covers {where}: "
                    f"no code there", "warning"))
                continue
            if prog.gid(fde.section, fde.start) < 0 and fde.end > fde.start \
                    and not self._in_padding(fde.section, fde.start):
                self._add(MISSING, "warning", fde.section, fde.start,
                          f"FDE at {fde.frame_section}+0x{fde.fde_offset:x} starts inside "
                          f"an instruction")
            if has_symtab and not spans.overlaps(fde.section, fde.start, fde.end):
                self._add(MISSING, "warning", fde.section, fde.start,
                          f"FDE at {fde.frame_section}+0x{fde.fde_offset:x} covers "
                          f"{fde.section_name}+0x{fde.start:x}..0x{fde.end:x}, which holds "
                          f"no function")
        covers: dict[int, tuple[list[tuple[int, int]], list[int]]] = {}
        named = len(self.elf.symbols)
        loader_run = loader_run_functions(prog, {
            fi for fi, fn in enumerate(prog.functions)
            if any(x.start < fn.end and fn.start < x.end for x in by_sec.get(fn.sec, ()))})
        for fi, fn in enumerate(prog.functions):
            if fi in loader_run:
                continue    # the C runtime's glue the loader runs, built without CFI
            # (functions framevet found in a stripped image -- PLT stubs, FDE ranges, the
            # CRT's entry points, which GCC builds without CFI -- are not the file's own)
            if not fn.canonical or fn.sym.type != STT_FUNC or fn.sym.index >= named:
                continue
            insns = [g for g in _range(prog, fn.sec, fn.start, fn.end)
                     if prog.kind[g] not in _PADDING]
            if not insns:
                continue
            merged = covers.get(fn.sec)
            if merged is None:
                cover = _merge([(x.start, x.end) for x in by_sec.get(fn.sec, [])])
                merged = covers[fn.sec] = (cover, [a for a, _ in cover])
            cover, starts = merged
            uncovered = [g for g in insns if not _covered(cover, starts, prog.off[g])]
            if not uncovered:
                continue
            if len(uncovered) == len(insns):
                self._add(MISSING, "warning", fn.sec, fn.start,
                          f"{fn.name}() has no CFI: no FDE in .eh_frame or .debug_frame "
                          f"covers it, so nothing can unwind through it")
            else:
                g = uncovered[0]
                self._add(MISSING, "warning", fn.sec, prog.off[g],
                          f"{len(uncovered)} instructions of {fn.name}() are outside its FDE")

    def _in_padding(self, sec: int, off: int) -> bool:
        """``off`` is inside a padding nop (glibc starts ``__restore_rt``'s FDE one byte
        early, so that unwinders looking up pc-1 find it)."""
        g = self.prog.containing(sec, off)
        return g >= 0 and self.prog.kind[g] in _PADDING

    # -- cfi-mismatch ---------------------------------------------------------------
    def _compare(self, fde: FdeTable) -> None:
        self._current_fde = fde
        prog, table = self.prog, self.table
        cfi = table.result.cfi
        run: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None
        pending: tuple[int, CfaRule, CfaRule, list[str]] | None = None
        count = 0
        last: CfiFinding | None = None
        touched: list[str] = []          # what the previous range's fix changed
        last_got = fde.rows[0][1]
        streak: dict[str, int] = {}      # component -> where its mismatch began
        rows = fde.rows
        ri = 0
        visited = table.result.visited
        for g in _range(prog, fde.section, fde.start, fde.end):
            if not visited[g] and prog.kind[g] in _PADDING:
                # padding never executed: any rule unwinds as well; inside a range it
                # neither ends it nor starts one
                count += run is not None
                continue
            c = cfi[g]
            key: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None
            o = prog.off[g]
            while ri + 1 < len(rows) and rows[ri + 1][0] <= o:
                ri += 1
            want = rows[ri][1]
            diffs: list[str] = []
            got = want
            if c is not None:
                diffs, got = self._diff(g, c, want, table.rule_at_gid(g))
                if "cfa" in diffs:
                    # one finding per wrong CFA rule; register rules that go wrong
                    # inside it join that finding
                    key = (_components(want, ["cfa"]), _components(got, ["cfa"]), ("cfa",))
                elif diffs:
                    key = (_components(want, diffs), _components(got, diffs), tuple(diffs))
            if key == run and pending is not None:
                extra = [x for x in diffs if x not in pending[3]]
                if extra:
                    pending = (pending[0], _with_regs(pending[1], want, extra),
                               _with_regs(pending[2], got, extra), pending[3] + extra)
            if key != run:
                if pending is not None:
                    last = self._report(fde, *pending, count, touched, streak)
                    last_got = pending[2]
                    touched = list(pending[3])
                    pending = None
                if key is None and touched and last is not None:
                    # the range ends: put back what its fix changed, as the CFI has it here
                    back = [t for t in touched
                            if _components(want, [t]) != _components(last_got, [t])]
                    if back:
                        last.details["fix_end"] = _reset(want, back)
                        last.details["fix_end_at"] = self._place(g)
                    touched = []
                run = key
                count = 0
                if key is not None:
                    pending = (g, want, got, diffs)
            for comp in list(streak):
                if comp not in diffs:
                    del streak[comp]
            for comp in diffs:
                streak.setdefault(comp, g)
            if key is not None:
                count += 1
        if pending is not None:
            self._report(fde, *pending, count, touched, streak)

    def _place(self, g: int) -> str:
        """``file:line`` of instruction ``g`` (``symbol+0xoff`` without a line table)."""
        prog = self.prog
        src = self.obj.source_of(prog.section_name(prog.sec_of[g]), prog.off[g])
        return f"{src[0]}:{src[1]}" if src else self._name(g)

    def _diff(self, g: int, c: tuple[int, ...], want: CfaRule, got: CfaRule,
              ) -> tuple[list[str], CfaRule]:
        """What differs at ``g`` (empty: they agree or cannot be compared), and the
        code's rule with the register rules the dataflow found (framevet's own table
        knows only stack saves; a register may live in another register)."""
        if got.kind == CFA_UNDEFINED:
            return [], got
        wregs, gregs = self._regs(want), self._regs(got)
        if wregs.get(RA) == "undefined":
            return [], got                         # outermost frame: CFA is moot
        out: list[str] = []
        if want.kind != CFA_EXPR and not want.same_cfa(got) and \
                not self.regs_at.equivalent(g, c, want, got):
            if self.regs_at.unknowable(c, want):
                self._unmodelled(g, want, got)
                return [], got
            out.append("cfa")
        if wregs == gregs:
            return out, got
        code: dict[int, str | None] = {}
        for r in CHECKED_REGS:
            w, h = wregs.get(r), gregs.get(r)
            if w == h:
                continue
            if r == RA:
                if w not in REG_BY_NAME:         # ra in a register (vfork): not modelled
                    out.append(reg_name(r))
                continue
            if self.regs_at.benign(g, r, w, h) or self.regs_at.dead_for_callers(g, r):
                continue
            ok = self.regs_at.holds(g, c, r, w)
            if ok is False or (ok is None and w is not None and w.startswith("at(")):
                out.append(reg_name(r))
                if ok is False:
                    code[r] = self.regs_at.code_rule(g, r, h, w)
        if not code:
            return out, got
        saved = dict(got.saved)
        other = dict(got.other)
        for r, t in code.items():
            saved.pop(r, None)
            other.pop(r, None)
            if t is not None and t.startswith("cfa"):
                saved[r] = int(t[3:])
            elif t is not None:
                other[r] = t
        return out, CfaRule(got.kind, got.reg, got.off, tuple(sorted(saved.items())),
                            tuple(sorted(other.items())), got.expr, got.post)

    def _regs(self, rule: CfaRule) -> dict[int, str]:
        got = self._reg_cache.get(id(rule))
        if got is None:
            got = self._reg_cache[id(rule)] = dict(rule.reg_rules())
            self._keep.append(rule)
        return got

    def _report(self, fde: FdeTable, g: int, want: CfaRule, got: CfaRule, diffs: list[str],
                count: int, touched: list[str], streak: dict[str, int]) -> CfiFinding:
        prog = self.prog
        off = prog.off[g]
        wregs, gregs = self._regs(want), self._regs(got)
        said, has = [], []
        if "cfa" in diffs:
            said.append(f"cfa={want.cfa_text()}")
            has.append(f"cfa={got.cfa_text()}")
        for r in CHECKED_REGS:
            if reg_name(r) in diffs:
                said.append(f"{reg_name(r)}={wregs.get(r, 'same')}")
                has.append(f"{reg_name(r)}={gregs.get(r, 'same')}")
        why = self._explain(g, want, got, diffs)
        if not why:
            since = min((streak.get(x, g) for x in diffs), default=g)
            why = (f"as since {self._name(since)}" if since < g else
                   f"after `{self._disasm(g - 1)}` at {self._name(g - 1)} the CFI's rule "
                   f"no longer holds" if g > 0 and prog.sec_of[g - 1] == prog.sec_of[g]
                   else "")
        inferred = " (state inferred: reached only through a computed jump)" \
            if g in self.table.inferred else ""
        n = f" for {count} instruction{'s' if count != 1 else ''}"
        msg = (f"CFI says {' '.join(said)} but the code has {' '.join(has)}{n}"
               f"{': ' + why if why else ''}{inferred}")
        fix: list[str] = []
        if self.obj.assembled:
            fix = _directives(want, got, diffs) + \
                _reset(want, [t for t in touched if t not in diffs])
        self._add(MISMATCH, "error", fde.section, off, msg, fix,
                  cfi=want.text(), code=got.text(), insns=count,
                  fde=f"{fde.frame_section}+0x{fde.fde_offset:x}")
        return self.out[-1]

    # -- explanations -------------------------------------------------------------
    def _unmodelled(self, g: int, want: CfaRule, got: CfaRule) -> None:
        """One note per function: the CFI's CFA names a place framevet cannot judge."""
        fi = self.prog.func[g]
        if fi in self._noted:
            return
        self._noted.add(fi)
        what = ("a stack slot framevet does not track" if want.kind == CFA_DEREF
                else f"{DWARF_NAMES[want.reg]}, set from the stack where framevet does not "
                     "know what was stored")
        self._add(UNMODELLED, "note", self.prog.sec_of[g], self.prog.off[g],
                  f"framevet cannot judge the CFI's cfa={want.cfa_text()} at "
                  f"`{self._disasm(g)}`: it names {what}; framevet has "
                  f"cfa={got.cfa_text()}; the CFA is not compared where it cannot judge",
                  cfi=want.text(), code=got.text())

    def _disasm(self, g: int) -> str:
        """The instruction as GNU as writes it; in a linked image a branch target is
        named as objdump names it (``call abort@plt``, ``jne f+0x1c``) and a GOT slot
        by the function it holds."""
        insn = self.prog.instruction(g, address=True)
        text = str(self.fmt.format(insn))
        if self.elf.relocatable:
            return text
        if insn.op_count == 1 and insn.op0_kind == iced_x86.OpKind.NEAR_BRANCH64:
            name = self._address_name(insn.near_branch_target)
            if name:
                text = f"{text.split(' ', 1)[0]} {name}"
        elif insn.is_ip_rel_memory_operand and insn.ip_rel_memory_address in self.elf.got:
            text += f"  # {self.elf.got[insn.ip_rel_memory_address]}@got"
        return text

    def _address_name(self, addr: int) -> str:
        """``symbol+0xoff`` for an address of a linked image's code ("" if unnamed)."""
        for ds in self.prog.sections:
            sec = self.elf.sections[ds.index]
            if sec.addr <= addr < sec.addr + sec.size:
                loc = self.syms.locate(ds.index, addr - sec.addr)
                if loc.symbol is None:
                    return ""
                return loc.symbol + (f"+0x{loc.symbol_offset:x}" if loc.symbol_offset else "")
        return ""

    def _name(self, g: int) -> str:
        return self.syms.locate(self.prog.sec_of[g], self.prog.off[g]).text()

    def _explain(self, g: int, want: CfaRule, got: CfaRule, diffs: list[str]) -> str:
        """Why the range starts here: the instruction before changed the code's state,
        or the CFI changed without it, or a jump brought another state."""
        prog, table = self.prog, self.table
        p = g - 1
        falls = (p >= 0 and prog.sec_of[p] == prog.sec_of[g]
                 and table.result.cfi[p] is not None
                 and prog.kind[p] not in (d.RETURN, d.JUMP_UNCOND, d.JUMP_DYNAMIC)
                 and not prog.dead_end[p])
        if not falls:
            src = self.regs_at.jump_sources().get(g, [])
            return f"reached from `{self._disasm(src[0])}` at {self._name(src[0])}" \
                if src else ""
        cp = table.result.cfi[p]
        assert cp is not None
        fde_rule = self._fde_rule_at(p)
        _, got_p = self._diff(p, cp, fde_rule, table.rule_at_gid(p)) \
            if fde_rule is not None else ([], table.rule_at_gid(p))
        effects = _effects(got_p, got, diffs)
        effects += self.regs_at.overwrites(p, g, diffs)
        insn = f"`{self._disasm(p)}` at {self._name(p)}"
        cfi_changed = fde_rule is None or _components(fde_rule, diffs) != \
            _components(want, diffs)
        if effects and not cfi_changed:
            return f"{insn} {' and '.join(effects)}; the CFI does not follow"
        if effects:
            return f"{insn} {' and '.join(effects)}; the CFI says otherwise"
        if cfi_changed:
            what = "change the stack" if diffs == ["cfa"] else \
                "touch " + ", ".join(x for x in diffs if x != "cfa") if "cfa" not in diffs \
                else "change the stack"
            return f"the CFI changes here, but {insn} does not {what}"
        return ""

    def _fde_rule_at(self, g: int) -> CfaRule | None:
        fde = self._current_fde
        if fde is None or not fde.covers(self.prog.off[g]):
            return None
        return fde.rule_at(self.prog.off[g])



def _with_regs(base: CfaRule, src: CfaRule, names: list[str]) -> CfaRule:
    """``base`` with the rules of the registers ``names`` taken from ``src``."""
    regs = {reg_name(r): r for r in CHECKED_REGS}
    pick = {regs[n] for n in names if n in regs}
    saved = {r: o for r, o in base.saved if r not in pick}
    other = {r: t for r, t in base.other if r not in pick}
    saved.update((r, o) for r, o in src.saved if r in pick)
    other.update((r, t) for r, t in src.other if r in pick)
    return CfaRule(base.kind, base.reg, base.off, tuple(sorted(saved.items())),
                   tuple(sorted(other.items())), base.expr, base.post)


def _components(rule: CfaRule, diffs: list[str]) -> tuple[str, ...]:
    regs = dict(rule.reg_rules())
    out = [rule.cfa_text()] if "cfa" in diffs else []
    out += [str(regs.get(r)) for r in CHECKED_REGS if reg_name(r) in diffs]
    return tuple(out)


def _effects(before: CfaRule, after: CfaRule, diffs: list[str]) -> list[str]:
    """What one instruction did to the components in ``diffs``, in words."""
    out = []
    if "cfa" in diffs and not before.same_cfa(after):
        out.append(f"moves the CFA from {before.cfa_text()} to {after.cfa_text()}")
    b, a = dict(before.reg_rules()), dict(after.reg_rules())
    for r in CHECKED_REGS:
        name = reg_name(r)
        if name not in diffs or b.get(r) == a.get(r):
            continue
        t = a.get(r)
        if t is None:
            out.append(f"restores {name}")
        elif t == "lost":
            out.append(f"overwrites {name} (its caller's value is nowhere else)")
        elif t.startswith("cfa"):
            out.append(f"saves {name} at {t}")
        elif t in REG_BY_NAME:
            out.append(f"copies {name} to {t}")
        else:
            out.append(f"changes where {name} is ({t})")
    return out


class _FunctionSpans:
    """Per section, the functions' spans ``[start, max(end, start + 1))`` sorted by
    start, with the running maximum of their ends: does any overlap ``[a, b)``?"""

    def __init__(self, functions: list[Function]) -> None:
        by_sec: dict[int, list[tuple[int, int]]] = {}
        for f in functions:
            by_sec.setdefault(f.sec, []).append((f.start, max(f.end, f.start + 1)))
        self._starts: dict[int, list[int]] = {}
        self._reach: dict[int, list[int]] = {}
        for sec, spans in by_sec.items():
            spans.sort()
            reach, top = [], 0
            for _, end in spans:
                top = max(top, end)
                reach.append(top)
            self._starts[sec] = [a for a, _ in spans]
            self._reach[sec] = reach

    def overlaps(self, sec: int, a: int, b: int) -> bool:
        starts = self._starts.get(sec)
        if not starts:
            return False
        i = bisect_left(starts, b)        # the spans that start before b: starts[:i]
        return i > 0 and self._reach[sec][i - 1] > a


def _covered(cover: list[tuple[int, int]], starts: list[int], off: int) -> bool:
    """``off`` lies in one of the merged, sorted intervals ``cover``."""
    from bisect import bisect_right

    i = bisect_right(starts, off) - 1
    return i >= 0 and cover[i][0] <= off < cover[i][1]


def _merge(iv: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _pick(fdes: list[FdeTable]) -> list[FdeTable]:
    """``.eh_frame`` FDEs, and ``.debug_frame`` ones for code ``.eh_frame`` leaves out."""
    eh = [f for f in fdes if f.frame_section == ".eh_frame"]
    seen = {(f.section, f.start) for f in eh}
    return eh + [f for f in fdes if f.frame_section != ".eh_frame"
                 and (f.section, f.start) not in seen]


def _range(prog: object, sec: int, start: int, end: int) -> list[int]:
    """gids of the instructions of section ``sec`` that start in [start, end)."""
    from bisect import bisect_left

    assert isinstance(prog, Program)
    ds = prog.secmap.get(sec)
    if ds is None:
        return []
    i = bisect_left(ds.off, start)
    j = bisect_left(ds.off, end)
    base = prog.base[sec]
    return list(range(base + i, base + j))
