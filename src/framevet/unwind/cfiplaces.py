"""Where the caller's callee-saved registers really are, for judging a CFI's register
rules: the register dataflow (:mod:`framevet.stack.regflow`) per function, and the
differences between CFI and code that are not errors."""

from __future__ import annotations

from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import CFA, NREGS
from framevet.stack import regflow
from framevet.stack.cfacopies import TUPLE_SHIFT, same_cfa, unknowable
from framevet.unwind.cfarule import CFA_DEREF, CFA_REG, CfaRule, reg_name
from framevet.unwind.cfatable import CfaTable
from framevet.unwind.cfifix import CHECKED_REGS, RA, REG_BY_NAME
from framevet.unwind.localconv import CallerLiveness

#: DWARF register number -> hardware register number (framevet's state layout)
DWARF_TO_HW = {0: d.AX, 1: d.DX, 2: d.CX, 3: d.BX, 4: d.SI, 5: d.DI, 6: d.BP, 7: d.SP,
               **{r: r for r in range(8, 16)}}
_VALS0 = 9 + 2 * NREGS       # where VALS starts in an interned state tuple


class RegisterPlaces:
    """Per function family (cached): where each callee-saved register's caller value
    certainly is at every instruction, and what that says about a CFI rule."""

    def __init__(self, prog: Program, table: CfaTable) -> None:
        self.prog = prog
        self.table = table
        self._place_cache: dict[int, dict[int, tuple[frozenset[int], ...]]] = {}
        self._slots: dict[int, set[tuple[int, int]]] = {}
        self._sources: dict[int, list[int]] | None = None
        self._callers = CallerLiveness(prog)

    def code_rule(self, g: int, r: int, h: str | None, w: str | None) -> str | None:
        """Where the caller's ``r`` is at ``g`` as a rule (None: in ``r`` itself;
        ``"lost"``: nowhere), preferring the kind of place the CFI names."""
        places = self.places(self.prog.func[g]).get(g)
        if places is None:
            return h
        hw = DWARF_TO_HW[r]
        here = places[regflow.TRACKED.index(hw)]
        slots = sorted(k - regflow.SLOT for k in here
                       if abs(k - regflow.SLOT) < regflow.FRAME // 2)
        if h is not None and h.startswith("cfa") and int(h[3:]) in slots:
            slots = [int(h[3:])]
        slot = f"cfa{slots[-1]:+d}" if slots else "lost"
        regs = [reg_name(dw) for dw, x in sorted(DWARF_TO_HW.items())
                if x in here and x != hw]
        order: list[str | None]
        if w is not None and w in REG_BY_NAME:
            order = [*regs, None, slot]
        elif w is not None and w.startswith("cfa"):
            order = [slot, None, *regs]
        else:
            order = [None, slot, *regs]
        for t in order:
            if t is None and hw in here:
                return None
            if t is not None and t != "lost":
                return t
        return "lost"

    def benign(self, g: int, r: int, w: str | None, h: str | None) -> bool:
        """The two common differences that are not errors, recognised without the
        register dataflow: GCC's save slot still named after the epilogue restored the
        register (the slot still holds it), and GCC's deferred ``.cfi_offset`` in a
        frame-pointer prologue (the register is not written before the note)."""
        prog = self.prog
        fi = prog.func[g]
        if fi < 0:
            return False
        if h is None and w is not None and w.startswith("cfa"):
            return (r, int(w[3:])) in self.save_slots(fi)
        if w is None and h is not None and h.startswith("cfa"):
            start = prog.gid(prog.functions[fi].sec, prog.functions[fi].start)
            if start < 0 or not start <= g < start + 64:
                return False
            bit = 1 << DWARF_TO_HW[r]
            targets = self.jump_sources()
            for p in range(start, g):
                if prog.cs_writes.get(p, 0) & bit or (p > start and p in targets) \
                        or prog.kind[p] not in (d.OTHER, d.NOP):
                    return False
            return g not in targets
        return False

    def save_slots(self, fi: int) -> set[tuple[int, int]]:
        """(DWARF register, CFA offset) of every slot the function saves a register in."""
        parent = self.prog.functions[fi].parent
        s = self._slots.get(parent)
        if s is None:
            s = set()
            cfi = self.table.result.cfi
            for g in self.prog.func_insns(parent):
                if cfi[g] is not None:
                    s.update(self.table.rule_at_gid(g).saved)
            self._slots[parent] = s
        return s

    def holds(self, g: int, c: tuple[int, ...], r: int, rule: str | None) -> bool | None:
        """Does the CFI's ``rule`` for callee-saved ``r`` find the caller's value at
        ``g``?  Decided by the register dataflow (:mod:`framevet.stack.regflow`: the places
        that certainly hold the caller's value); None when it cannot tell."""
        places = self.places(self.prog.func[g]).get(g)
        if places is None or (rule is not None and rule.startswith(("exp", "v"))) \
                or rule == "undefined":
            return None
        hw = DWARF_TO_HW[r]
        here = places[regflow.TRACKED.index(hw)]
        if rule is not None and rule.startswith("at("):
            # DRAP frames: saved at rbp+k, valid while rbp is the frame base (framevet's
            # own rule for rbp is then at(rbp+0)); after ``pop %rbp`` it is not
            if not rule.startswith("at(rbp"):
                return None
            if dict(self.table.rule_at_gid(g).other).get(6) != "at(rbp+0)":
                return False
            return regflow._slot(int(rule[6:-1])) + regflow.FRAME in here
        if rule is None:
            return hw in here                     # "same value"
        if rule.startswith("cfa"):
            if c[3]:                               # DRAP frame: slots are rbp-relative
                return None
            return regflow._slot(int(rule[3:])) in here
        other = REG_BY_NAME.get(rule)
        return None if other is None else other in here

    def places(self, fi: int) -> dict[int, tuple[frozenset[int], ...]]:
        """Per instruction of ``fi``'s family: where each callee-saved register's caller
        value certainly is (regflow's must-analysis, from the function's entry)."""
        if fi < 0:
            return {}
        parent = self.prog.functions[fi].parent
        got = self._place_cache.get(parent)
        if got is not None:
            return got
        prog, cfi = self.prog, self.table.result.cfi
        state_in = regflow.places(prog, cfi, parent)
        start = prog.gid(prog.functions[parent].sec, prog.functions[parent].start)
        if start not in state_in:
            state_in = {}
        self._place_cache[parent] = state_in
        return state_in

    def equivalent(self, g: int, c: tuple[int, ...], want: CfaRule, got: CfaRule) -> bool:
        """Two spellings of one CFA: ``want`` names a register or a stack slot framevet
        knows holds a copy of the CFA (``mov %rsp, %rbx``; ``mov %rax, 16(%rsp)``,
        :mod:`framevet.stack.cfacopies`); or framevet moved the CFA to rbp at
        ``mov %rsp, %rbp`` and the CFI moves it one instruction later (rsp == rbp)."""
        hw = DWARF_TO_HW.get(want.reg)
        if hw is None or want.kind not in (CFA_REG, CFA_DEREF):
            return False
        user = self.prog.profile == "user"
        if want.kind == CFA_DEREF:
            return user and same_cfa(c, hw, want.off, want.post, TUPLE_SHIFT)
        if c[_VALS0 + 2 * hw] == CFA and c[_VALS0 + 2 * hw + 1] + want.off == 0:
            return True
        if user and same_cfa(c, hw, want.off, None, TUPLE_SHIFT):
            return True
        prog = self.prog
        p = g - 1
        return (hw == d.SP and got.kind == CFA_REG and DWARF_TO_HW.get(got.reg) == d.BP
                and got.off == want.off and p >= 0 and prog.sec_of[p] == prog.sec_of[g]
                and prog.ops[p] == ((d.D_REG, d.BP, 0, d.S_REG, d.SP, 0),))

    def unknowable(self, c: tuple[int, ...], want: CfaRule) -> bool:
        """The CFI's CFA names a register or stack slot whose content framevet does
        not know (:func:`framevet.stack.cfacopies.unknowable`)."""
        if self.prog.profile != "user" or want.kind not in (CFA_REG, CFA_DEREF):
            return False
        return unknowable(c, DWARF_TO_HW.get(want.reg, -1), want.off,
                          want.post if want.kind == CFA_DEREF else None, TUPLE_SHIFT)

    def dead_for_callers(self, g: int, r: int) -> bool:
        """``g`` is in a local helper none of whose callers reads the caller value of
        ``r`` (DWARF number) after the call: no rule for ``r`` can be wrong there."""
        fi = self.prog.func[g]
        return fi >= 0 and DWARF_TO_HW[r] in self._callers.dead(
            self.prog.functions[fi].parent)

    def overwrites(self, p: int, g: int, diffs: list[str]) -> list[str]:
        """Registers in ``diffs`` that held the caller's value before ``p`` and not after."""
        places = self.places(self.prog.func[g])
        before, after = places.get(p), places.get(g)
        if before is None or after is None:
            return []
        out = []
        for r in CHECKED_REGS:
            if r == RA or reg_name(r) not in diffs:
                continue
            hw = DWARF_TO_HW[r]
            i = regflow.TRACKED.index(hw)
            if hw in before[i] and hw not in after[i]:
                out.append(f"overwrites {reg_name(r)}")
        return out

    def jump_sources(self) -> dict[int, list[int]]:
        if self._sources is None:
            prog = self.prog
            m: dict[int, list[int]] = {}
            for g, jd in enumerate(prog.jump_dest):
                if jd >= 0:
                    m.setdefault(jd, []).append(g)
            for g, alts in prog.alts.items():
                for ag, _ in alts:
                    if ag >= 0:
                        m.setdefault(ag, []).append(g)
            self._sources = m
        return self._sources
