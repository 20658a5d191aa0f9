"""Stack state per instruction: objtool 6.1's CFA walk, over integers.

The state is one flat ``list[int]`` (layout below) copied only at branches;
the state recorded for an instruction is an interned tuple, shared by every
instruction until the next stack operation.  The walk is objtool's depth-first
``validate_branch`` turned into an explicit stack (deep functions would blow
Python's recursion limit) that visits paths in the same order, so the first
warning of a function -- which ends its walk, as in objtool -- is the same one.
"""

from __future__ import annotations

from array import array

from framevet.cfg.noinstr import PvOps, is_noinstr_section
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import (
    CFA_BASE,
    CFA_OFF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    INSTR,
    NOINSTR,
    NREGS,
    REGS,
    STATE_LEN,
    TYPE,
    UACCESS,
    UACCESS_STACK,
    UNDEFINED,
    VALS,
    blank_state,
    func_entry_state,
)
from framevet.load.elf import STB_GLOBAL, STT_NOTYPE
from framevet.stack.cfacopies import same_spelled
from framevet.stack.effects import update_cfi
from framevet.stack.rspcopies import (
    copy_killers,
    forget_stale_copies,
    join_new_stack,
    switch_to_new_stack,
)
from framevet.stack.transfers import _END, TransferChecks
from framevet.stack.usermodel import user_after
from framevet.stack.walkresult import WalkAborted, WalkOptions, WalkResult, Warning


def _padding(prog: Program, g: int) -> bool:
    """Instruction ``g`` starts a run of nop/int3 padding (``lstar_enter``'s first
    nop, a placeholder for ENDBR64, is followed by code: it is no padding)."""
    for _ in range(_PADDING_RUN):
        if g < 0 or prog.kind[g] not in (d.NOP, d.TRAP):
            return g < 0
        g = prog.next_same_sec(g)
    return True


#: nops and int3s in a row that make padding
_PADDING_RUN = 8

#: :meth:`Walker._meet`: the states differ where paths meet
_MISMATCH = -2


class Walker(TransferChecks):
    def __init__(self, prog: Program, opts: WalkOptions | None = None,
                 hints: dict[int, tuple[int, ...]] | None = None,
                 save_insns: set[int] | None = None,
                 restore_insns: set[int] | None = None) -> None:
        self.prog = prog
        self.opts = opts or WalkOptions()
        n = len(prog.off)
        self.cfi: list[tuple[int, ...] | None] = [None] * n
        #: per gid, the instruction the walk first came from (-1: a walk started there):
        #: following it back gives the path to any finding (--explain)
        self.pred = array("i", [-1]) * n
        #: an alternative replacement's first instruction -> the patch site the walk
        #: first branched to it from (the path to it goes on from there)
        self.alt_from: dict[int, int] = {}
        #: a join's arriving path: the instruction it came from and its state
        self._via: tuple[int, list[int]] = (-1, [])
        self.visited = bytearray(n)
        self.warnings: list[Warning] = []
        self.intern: dict[tuple[int, ...], tuple[int, ...]] = {}
        #: gid -> hint cfi (full state tuple) from unwind hints
        self.hints = hints or {}
        self.save_insns: set[int] = set(save_insns or ())
        self.restore_insns: set[int] = set(restore_insns or ())
        #: check falls-through (objtool 6.1 does in every object; profile user: C objects)
        self.c_file = prog.profile == "kernel" or (
            prog.elf.relocatable and prog.elf.section(".comment") is not None)
        #: instructions of functions objtool is told to skip (STACK_FRAME_NON_STANDARD)
        self.ignored: set[int] = set()
        #: functions declared (framevet.toml) to start on an exception/interrupt frame
        self.entry_funcs: set[int] = set()
        self._marked: tuple[tuple[int, ...], set[int], set[int]] | None = None
        self._fparent: list[int] | None = None
        self._pv: PvOps | None = None
        #: instructions that overwrite a register some ``mov %reg,%rsp`` reads
        self.copy_killers = copy_killers(prog)
        self.aborted: set[int] = set()

    # -- reporting -------------------------------------------------------
    def warn(self, g: int, rule: str, msg: str, fatal: bool = True, sec: int = -1) -> None:
        """Record a warning; like objtool, end the function's walk -- unless the
        problem leaves the state well defined and every warning was asked for."""
        w = Warning(g, rule, msg, sec)
        if rule == "stack-state-mismatch":
            w.via, w.arriving = self._via[0], self._snap(self._via[1])
        self.warnings.append(w)
        # profile user (with all_warnings): never end the function's walk; the path
        # goes on with the state as it is (a CFA made undefined stays undefined)
        if (fatal and self.prog.profile != "user") or not self.opts.all_warnings:
            raise WalkAborted

    # -- driver ------------------------------------------------------------
    def run(self) -> WalkResult:
        """objtool's order: every function from its start, then unvisited unwind hints."""
        prog = self.prog
        self._marked = None         # (hints/ignored may have been set after __init__)
        order = sorted(range(len(prog.functions)),
                       key=lambda i: (prog.functions[i].sec, prog.functions[i].start,
                                      prog.functions[i].sym.index))
        if prog.profile == "user":
            # a cold part whose parent has no name (stripped image) is entered by a jump
            # from that parent; one nothing reached is walked last, from its FDE's
            # first row (framevet.unwind.userwalk)
            order = [fi for fi in order if ".cold" not in prog.functions[fi].name]
        for fi in order:
            f = prog.functions[fi]
            if not f.canonical or f.parent != fi:
                continue
            if not f.sym.size:
                # a linked user image's toolchain stubs (_init, frame_dummy, ...) have no
                # sizes by design; there cfg sized them up to the next symbol
                if prog.profile != "user" or prog.elf.relocatable:
                    self.warnings.append(Warning(
                        -1, "missing-elf-size", f"{f.name}() is missing an ELF size annotation"))
                if prog.profile != "user":
                    continue
            g = prog.gid(f.sec, f.start)
            if g < 0 or self.visited[g] or g in self.ignored:
                continue
            st = func_entry_state()
            if self.opts.uaccess and self._uaccess_safe(fi):
                st[UACCESS] = 1
            if self.opts.noinstr and is_noinstr_section(prog, f.sec):
                st[NOINSTR] = 1
            self._walk_from(fi, g, st)
        for g in sorted(set(self.hints) | self.restore_insns):
            if not self.visited[g] and g not in self.ignored:
                st = blank_state()
                if self.opts.noinstr_hints and is_noinstr_section(prog, prog.sec_of[g]):
                    st[NOINSTR] = 1
                self._walk_from(prog.func[g], g, st)
        self._vm_resume_points()
        self._unnamed_functions()
        self._entry_labels()
        return WalkResult(self.cfi, self.warnings, self.visited,
                          [*self.intern.values(), *self.hints.values()], self.pred,
                          self.aborted)

    def _unnamed_functions(self) -> None:
        """Code no symbol covers that starts with ``call __fentry__`` is a function
        whose symbol the link lost (every traced kernel function starts so): walk it
        from a function's entry state, as objtool did with the symbol."""
        prog = self.prog
        if prog.profile != "kernel":
            return
        for g, cd in enumerate(prog.call_dest):
            if (cd is not None and cd.name == "__fentry__" and prog.func[g] < 0
                    and not self.visited[g] and prog.kind[g] == d.CALL
                    and prog.off[g] % 16 == 0):
                self._walk_from(-1, g, func_entry_state())

    def _entry_labels(self) -> None:
        """A linked kernel image's assembly labels (STT_NOTYPE: exception and system
        call entries, the exit paths they jump to) that no walk reached are entered from
        a frame framevet cannot know (the CPU's, or a stack another CPU context built):
        walk them from the state of a new stack, so their control flow is checked and
        their ORC says where unwinding must stop."""
        prog = self.prog
        if prog.profile != "kernel" or prog.elf.relocatable:
            return
        for s in sorted(prog.elf.symbols, key=lambda s: (s.shndx, s.offset)):
            if s.type != STT_NOTYPE or not s.name or not s.defined or s.shndx not in prog.base:
                continue
            g = prog.gid(s.shndx, s.offset)
            if (g >= 0 and not self.visited[g] and g not in self.ignored
                    and not _padding(prog, g)):     # (not the end-of-range marks)
                st = blank_state()
                switch_to_new_stack(st)
                self._walk_from(prog.func[g], g, st)

    def _vm_resume_points(self) -> None:
        """After VMLAUNCH/VMRESUME succeeds, the CPU comes back at the VMCS host RIP: a
        global label further down the same function (KVM's ``vmx_vmexit``), with the
        stack as it was at the VM entry.  objtool needs UNWIND_HINT_SAVE/RESTORE for
        this; a linked module has lost them, so the pair is inferred."""
        prog = self.prog
        labels: dict[int, list[int]] = {}
        for s in prog.elf.symbols:
            if s.type == STT_NOTYPE and s.bind == STB_GLOBAL and s.defined:
                g = prog.gid(s.shndx, s.offset)
                if g >= 0 and prog.func[g] >= 0:
                    labels.setdefault(prog.func[g], []).append(g)
        if not labels:
            return
        for ds in prog.sections:
            for i in ds.vm_entries:
                g = prog.base[ds.index] + i
                fi, c = prog.func[g], self.cfi[g]
                if c is None or fi not in labels:
                    continue
                for lg in sorted(labels[fi]):
                    if lg > g and not self.visited[lg]:
                        st = blank_state()
                        load_cfi(st, c)
                        self._walk_from(fi, lg, st)

    def _walk_from(self, func: int, g: int, state: list[int]) -> None:
        try:
            self._walk(func, g, state)
        except WalkAborted:
            if func >= 0:
                self.aborted.add(self.prog.functions[func].parent)

    # -- the walk ----------------------------------------------------------
    def _meet(self, g: int, state: list[int], is_hint: bool, v: int, vbit: int,
              prev: int) -> int:
        """A path reaches ``g`` already visited (marks ``v``), coming from ``prev``: -1 to
        stop the path, :data:`_MISMATCH` to stop the function, else the marks to go on with
        (none: the code is walked again with the frame a new stack's path had left it
        without)."""
        self._via = (prev, state)
        joined = 0 if is_hint else join_new_stack(self.cfi[g], state)
        if joined:
            return -1 if joined > 0 else 0
        if not is_hint and not self._cfi_match(g, state):
            return _MISMATCH
        return -1 if v & vbit else v

    def _snap(self, state: list[int]) -> tuple[int, ...]:
        key = tuple(state[0:9]) + tuple(state[REGS:STATE_LEN])
        return self.intern.setdefault(key, key)

    def _walk(self, func: int, start: int, state0: list[int]) -> None:
        prog = self.prog
        kind, ops_l, alt_group = prog.kind, prog.ops, prog.alt_group
        visited, cfi_l, dead_end, pred = self.visited, self.cfi, prog.dead_end, self.pred
        hints, restores = self.hints, self.restore_insns
        user = prog.profile == "user"
        sec_of, sec_last = prog.sec_of, prog.sec_last
        marked, special, fparent = self._lookups()
        pushf = self.opts.uaccess
        killers = self.copy_killers
        # (instruction, state, phase, section the validate_branch() call started in)
        stack: list[tuple[int, list[int], int, int]] = [(start, state0, 0, sec_of[start])]
        while stack:
            g, state, phase, wsec = stack.pop()
            # a resumed branch goes on from itself; a replacement's from its patch site
            prev = g if phase else self.alt_from.get(g, -1)
            snap: tuple[int, ...] | None = None
            if g < 0:
                g = self._past_empty_replacement(g, state)
                if g < 0:
                    continue
            while True:
                if phase == 0:
                    fp = fparent[g]
                    if func >= 0 and fp >= 0 and func != fp and self._leaves(func, g, start):
                        break
                    is_special = g in special
                    is_marked = is_special and g in marked
                    is_hint = is_marked and self._hint_at(func, g, wsec)
                    vbit = 1 << state[UACCESS]
                    v = visited[g]
                    if v & 3 and (v := self._meet(g, state, is_hint, v, vbit, prev)) < 0:
                        if v == _MISMATCH:
                            return
                        break
                    if is_hint:
                        h = self._restore(func, g, wsec) if g in restores else hints[g]
                        load_cfi(state, h)
                        cfi_l[g] = h
                        snap = h
                    else:
                        if snap is None:
                            snap = self._snap(state)
                        cfi_l[g] = snap
                    if not v:
                        pred[g] = prev
                    visited[g] = v | vbit
                    if is_special and self._special(g, state, is_marked, wsec, stack):
                        break
                if phase == 2:
                    phase = 0
                    if dead_end[g]:
                        break
                    prev, g = g, self._next(g, state)
                    if g < 0:
                        self._end_of_section(state, wsec)
                        break
                    continue
                phase = 0
                k = kind[g]
                ops = ops_l[g]
                if killers and (kill := killers.get(g)) and forget_stale_copies(state, kill):
                    snap = None
                pre = state[:] if user else state
                if ops is not None:
                    for op in ops:
                        update_cfi(self, g, state, op)
                    if pushf and g in alt_group:
                        self._pushf(g, state, ops)
                    snap = None
                if user and user_after(self, g, state, pre):
                    snap = None
                if k != d.OTHER and k != d.NOP:
                    to = self._transfer(func, g, k, state, wsec, stack)
                    if to == _END:
                        break
                    if to >= 0:
                        prev, g = g, to
                        wsec = sec_of[g]
                        continue
                if dead_end[g]:
                    break
                prev = g
                if g in alt_group:
                    g = self._next(g, state)
                else:
                    g = -1 if sec_last[g] else g + 1
                if g < 0:
                    self._end_of_section(state, wsec)
                    break

    def _past_empty_replacement(self, g: int, state: list[int]) -> int:
        """The virtual NOP ``g`` standing for an empty alternative replacement: give
        the group its state; the path goes on after the original instructions."""
        groups = self.prog.groups
        vgrp = groups[-1 - g]
        self._propagate(groups, -1 - g, 0, self._snap(state), groups[vgrp.orig].first)
        return self.prog.next_same_sec(groups[vgrp.orig].last)

    def _hint_at(self, func: int, g: int, wsec: int) -> bool:
        """A marked instruction: an unwind hint or restore point (True), or an ignored
        function's code reached anyway (objtool's BUG warning)."""
        if func >= 0 and g in self.ignored:
            self.warn(g, "validating-ignored-function",
                      "BUG: why am I validating an ignored function?", sec=wsec)
        return g in self.hints or g in self.restore_insns

    def _end_of_section(self, state: list[int], wsec: int) -> None:
        """The path runs off its section's end: fine once the CFA is undefined (code
        that never returns), otherwise objtool's warning.  The path ends either way."""
        if state[CFA_BASE] != UNDEFINED:
            self.warn(-1, "unexpected-end-of-section",
                      f"{self.prog.section_name(wsec)}: unexpected end of section")

    def _lookups(self) -> tuple[set[int], set[int], list[int]]:
        """What the walk looks up per instruction, computed once per set of hints:
        instructions that are hints, restores or ignored (*marked*); those plus
        alternatives (*special*); and each instruction's function's parent."""
        prog = self.prog
        hints, restores, ignored = self.hints, self.restore_insns, self.ignored
        instr = prog.instr if self.opts.noinstr else {}
        key = (len(hints), len(restores), len(ignored), id(ignored), len(instr))
        if self._marked is None or self._marked[0] != key:
            marks = set(hints) | restores | ignored | set(instr)
            self._marked = (key, marks, marks | prog.alt_group.keys() | prog.alts.keys())
        fparent = self._fparent
        if fparent is None or len(fparent) != len(prog.func):
            pfunc = prog.functions
            fparent = self._fparent = [pfunc[f].parent if f >= 0 else -1 for f in prog.func]
        return self._marked[1], self._marked[2], fparent

    def _leaves(self, func: int, g: int, start: int) -> bool:
        """The walk of ``func`` reaches ``g`` of another function: objtool warns (C
        files); profile user never carries one function's state into another, whose
        entry is walked from there.  True when the path ends here."""
        prog = self.prog
        pfunc = prog.functions
        if self.c_file:
            self.warn(-1, "falls-through-to-next-function",
                      f"{pfunc[func].name}() falls through to next function "
                      f"{pfunc[prog.func[g]].name}()")
            return prog.profile == "user"
        return (prog.profile == "user" and g != start
                and prog.off[g] == pfunc[prog.func[g]].start)

    def _special(self, g: int, state: list[int], is_marked: bool, wsec: int,
                 stack: list[tuple[int, list[int], int, int]]) -> bool:
        """An alternative's instruction or a noinstr annotation at ``g``.  True when the
        path continues through the alternatives pushed on ``stack`` instead."""
        prog = self.prog
        if is_marked and state[NOINSTR]:
            state[INSTR] += prog.instr.get(g, 0) if self.opts.noinstr else 0
        grp = prog.alt_group.get(g)
        if grp is not None:
            groups = prog.groups
            self._propagate(groups, grp, prog.off[g] - prog.off[groups[grp].first],
                            self.cfi[g], g)  # type: ignore[arg-type]
        alts = prog.alts.get(g)
        if not alts or prog.ignore_alts[g]:
            return False
        if not any(so for _, so in alts):
            stack.append((g, list(state), 1, wsec))
        sec_of = prog.sec_of
        alt_from = self.alt_from
        for ag, _ in reversed(alts):
            alt_from.setdefault(ag, g)
            stack.append((ag, list(state), 0, sec_of[ag] if ag >= 0 else wsec))
        return True

    def _next(self, g: int, state: list[int]) -> int:
        """objtool's next_insn_to_validate(): replacements flow back after the original."""
        prog = self.prog
        grp = prog.alt_group.get(g)
        if grp is not None:
            ag = prog.groups[grp]
            if ag.orig >= 0 and g == ag.last:
                og = prog.groups[ag.orig]
                if ag.size < og.size:
                    self._propagate(prog.groups, grp, ag.size, self._snap(state), g)
                return prog.next_same_sec(og.last)
        return prog.next_same_sec(g)

    def _propagate(self, groups: list, grp: int, off: int, cfi: tuple[int, ...], g: int) -> None:
        arr = groups[grp].cfi
        if off >= len(arr):
            return
        cur = arr[off]
        if cur is None:
            arr[off] = cfi
        elif cur != cfi:
            self.warn(g, "stack-layout-conflict-in-alternatives",
                      "stack layout conflict in alternatives")

    def _pushf(self, g: int, state: list[int], ops: tuple[d.StackOp, ...]) -> None:
        """objtool keeps AC across PUSHF/POPF inside alternatives on a 32-bit stack."""
        for op in ops:
            if op[0] == d.D_PUSHF:
                us = state[UACCESS_STACK]
                if not us:
                    us = 1
                elif us >> 31:
                    self.warn(g, "pushf-stack-exhausted", "PUSHF stack exhausted")
                state[UACCESS_STACK] = (us << 1 | state[UACCESS]) & 0xFFFFFFFF
            if op[3] == d.S_POPF and state[UACCESS_STACK]:
                us = state[UACCESS_STACK]
                state[UACCESS] = us & 1
                us >>= 1
                state[UACCESS_STACK] = 0 if us == 1 else us

    def _restore(self, func: int, g: int, wsec: int) -> tuple[int, ...]:
        prog = self.prog
        i = g - 1
        while i >= 0 and prog.func[i] == func and prog.sec_of[i] == prog.sec_of[g]:
            if i in self.save_insns:
                c = self.cfi[i]
                if c is None:
                    self.warn(g, "cfi-save-restore-combo",
                              "objtool isn't smart enough to handle this CFI save/restore combo",
                              sec=wsec)
                    raise WalkAborted        # (no state to go on with, whatever the profile)
                return c
            i -= 1
        self.warn(g, "no-cfi-save-for-restore", "no corresponding CFI save for CFI restore",
                  sec=wsec)
        raise WalkAborted

    def _next_is_hint(self, g: int) -> bool:
        n = self.prog.next_same_sec(g)
        return n >= 0 and n in self.hints

    def _fentry(self, g: int) -> bool:
        cd = self.prog.call_dest[g]
        return cd is not None and cd.name in ("__fentry__", "mcount", "__mcount")

    # -- checks --------------------------------------------------------------
    def _cfi_match(self, g: int, state: list[int]) -> bool:
        c1 = self.cfi[g]
        if c1 is None:
            self.warn(-1, "cfi-state-missing", "CFI missing")
            return False
        if (c1[CFA_BASE] != state[CFA_BASE] or c1[CFA_OFF] != state[CFA_OFF]) \
                and not (self.prog.profile == "user" and same_spelled(c1, state)):
            self.warn(g, "stack-state-mismatch",
                      f"stack state mismatch: cfa1={c1[CFA_BASE]}{c1[CFA_OFF]:+d} "
                      f"cfa2={state[CFA_BASE]}{state[CFA_OFF]:+d}")
        regs2 = state[REGS:VALS]
        if tuple(regs2) != c1[9:9 + 2 * NREGS]:
            for r in range(NREGS):
                b1, o1 = c1[9 + 2 * r], c1[10 + 2 * r]
                b2, o2 = regs2[2 * r], regs2[2 * r + 1]
                if b1 != b2 or o1 != o2:
                    self.warn(g, "stack-state-mismatch",
                              f"stack state mismatch: reg1[{r}]={b1}{o1:+d} "
                              f"reg2[{r}]={b2}{o2:+d}")
        if c1[TYPE] != state[TYPE]:
            self.warn(g, "stack-state-mismatch",
                      f"stack state mismatch: type1={c1[TYPE]} type2={state[TYPE]}")
        if (c1[DRAP] != state[DRAP] or (c1[DRAP] and c1[DRAP_REG] != state[DRAP_REG])
                or (c1[DRAP] and c1[DRAP_OFF] != state[DRAP_OFF])):
            self.warn(g, "stack-state-mismatch",
                      f"stack state mismatch: drap1={c1[DRAP]}({c1[DRAP_REG]},{c1[DRAP_OFF]}) "
                      f"drap2={state[DRAP]}({state[DRAP_REG]},{state[DRAP_OFF]})")
        return True


def load_cfi(state: list[int], cfi: tuple[int, ...]) -> None:
    """Load an interned CFI tuple into a full state (keeping the insn-state fields)."""
    state[0:9] = cfi[0:9]
    state[REGS:STATE_LEN] = cfi[9:]


def walk(prog: Program, opts: WalkOptions | None = None,
         hints: dict[int, tuple[int, ...]] | None = None) -> WalkResult:
    return Walker(prog, opts, hints).run()
