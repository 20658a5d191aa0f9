"""Stack state per instruction: objtool 6.1's CFA walk, over integers.

The state is one flat ``list[int]`` (layout below) copied only at branches;
the state recorded for an instruction is an interned tuple, shared by every
instruction until the next stack operation.  The walk is objtool's depth-first
``validate_branch`` turned into an explicit stack (deep functions would blow
Python's recursion limit) that visits paths in the same order, so the first
warning of a function -- which ends its walk, as in objtool -- is the same one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from framevet.cfg.noinstr import PvOps, is_noinstr_section
from framevet.cfg.noinstr import call_ok as noinstr_call_ok
from framevet.cfg.program import Program, is_noreturn, is_sibling_call
from framevet.decode import insn as d
from framevet.decode.state import (
    BP_SCRATCH,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DF,
    DRAP,
    DRAP_OFF,
    DRAP_REG,
    INITIAL_REGS,
    INSTR,
    NOINSTR,
    NREGS,
    REGS,
    STACK,
    STATE_LEN,
    TYPE,
    UACCESS,
    UACCESS_STACK,
    UNDEFINED,
    VALS,
    blank_state,
    func_entry_state,
)
from framevet.load.elf import STB_GLOBAL, STT_NOTYPE, Symbol
from framevet.stack.stackmodel import update_cfi, user_after


@dataclass(slots=True)
class Warning:
    gid: int          # -1: no location (objtool's plain WARN)
    rule: str
    message: str
    #: the section objtool names instead of the instruction's own: the one its walk
    #: (validate_branch) started in, e.g. .altinstr_replacement after a replacement
    sec: int = -1


@dataclass
class WalkOptions:
    stackval: bool = False
    uaccess: bool = False
    #: --noinstr (with --link): calls and returns in .noinstr.text/.entry.text functions
    noinstr: bool = False
    #: ... and unwind hints in those sections too (objtool's --noinstr without a full walk)
    noinstr_hints: bool = False
    #: report every warning of a function instead of stopping at the first
    all_warnings: bool = False


@dataclass
class WalkResult:
    #: per gid: the interned CFI tuple (see CFI_FIELDS), or None when never reached
    cfi: list[tuple[int, ...] | None]
    warnings: list[Warning] = field(default_factory=list)
    visited: bytearray = field(default_factory=bytearray)
    #: every distinct CFI tuple the walk recorded (interned states and hints)
    states: list[tuple[int, ...]] = field(default_factory=list)


class _Abort(Exception):
    pass


class Walker:
    def __init__(self, prog: Program, opts: WalkOptions | None = None,
                 hints: dict[int, tuple[int, ...]] | None = None,
                 save_insns: set[int] | None = None,
                 restore_insns: set[int] | None = None) -> None:
        self.prog = prog
        self.opts = opts or WalkOptions()
        n = len(prog.off)
        self.cfi: list[tuple[int, ...] | None] = [None] * n
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

    # -- reporting -------------------------------------------------------
    def warn(self, g: int, rule: str, msg: str, fatal: bool = True, sec: int = -1) -> None:
        """Record a warning; like objtool, end the function's walk -- unless the
        problem leaves the state well defined and every warning was asked for."""
        self.warnings.append(Warning(g, rule, msg, sec))
        # profile user (with all_warnings): never end the function's walk; the path
        # goes on with the state as it is (a CFA made undefined stays undefined)
        if (fatal and self.prog.profile != "user") or not self.opts.all_warnings:
            raise _Abort

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
            # from that parent: walk it from its start only if nothing reached it
            cold = [fi for fi in order if ".cold" in prog.functions[fi].name]
            order = [fi for fi in order if ".cold" not in prog.functions[fi].name] + cold
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
        return WalkResult(self.cfi, self.warnings, self.visited,
                          [*self.intern.values(), *self.hints.values()])

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
                        _load_cfi(st, c)
                        self._walk_from(fi, lg, st)

    def _walk_from(self, func: int, g: int, state: list[int]) -> None:
        with contextlib.suppress(_Abort):
            self._walk(func, g, state)

    # -- the walk ----------------------------------------------------------
    def _snap(self, state: list[int]) -> tuple[int, ...]:
        key = tuple(state[0:9]) + tuple(state[REGS:STATE_LEN])
        return self.intern.setdefault(key, key)

    def _walk(self, func: int, start: int, state0: list[int]) -> None:
        prog = self.prog
        kind, ops_l, jump_dest, call_dest = prog.kind, prog.ops, prog.jump_dest, prog.call_dest
        alts_map, alt_group, groups = prog.alts, prog.alt_group, prog.groups
        visited, cfi_l, funcs, pfunc = self.visited, self.cfi, prog.func, prog.functions
        dead_end, ignore_alts = prog.dead_end, prog.ignore_alts
        hints, restores = self.hints, self.restore_insns
        user = prog.profile == "user"
        ignored, sec_of, c_file = self.ignored, prog.sec_of, self.c_file
        sec_last = prog.sec_last
        # hints, restores and ignored instructions: one lookup for the common case
        instr = prog.instr if self.opts.noinstr else {}
        key = (len(hints), len(restores), len(ignored), id(ignored), len(instr))
        if self._marked is None or self._marked[0] != key:
            marks = set(hints) | restores | ignored | set(instr)
            self._marked = (key, marks, marks | alt_group.keys() | alts_map.keys())
        marked, special = self._marked[1], self._marked[2]
        # parent function of each instruction's function (-1: none), for falls-through
        fparent = self._fparent
        if fparent is None or len(fparent) != len(funcs):
            fparent = self._fparent = [pfunc[f].parent if f >= 0 else -1 for f in funcs]
        pushf = self.opts.uaccess
        # (instruction, state, phase, section the validate_branch() call started in)
        stack: list[tuple[int, list[int], int, int]] = [(start, state0, 0, sec_of[start])]
        while stack:
            g, state, phase, wsec = stack.pop()
            snap: tuple[int, ...] | None = None
            if g < 0:
                # the virtual NOP standing for an empty replacement
                vgrp = groups[-1 - g]
                self._propagate(groups, -1 - g, 0, self._snap(state), groups[vgrp.orig].first)
                g = prog.next_same_sec(groups[vgrp.orig].last)
                if g < 0:
                    continue
            while True:
                if phase == 0:
                    fp = fparent[g]
                    if c_file and func >= 0 and fp >= 0 and func != fp:
                        fg = funcs[g]
                        self.warn(-1, "falls-through-to-next-function",
                                  f"{pfunc[func].name}() falls through to next function "
                                  f"{pfunc[fg].name}()")
                        if prog.profile == "user":
                            break           # never carry one function's state into another
                    elif (user and func >= 0 and fp >= 0 and g != start and func != fp
                          and prog.off[g] == pfunc[funcs[g]].start):
                        break               # user: another function's entry is walked from there
                    is_hint = False
                    is_special = g in special
                    is_marked = is_special and g in marked
                    if is_marked:
                        if func >= 0 and g in ignored:
                            self.warn(g, "validating-ignored-function",
                                      "BUG: why am I validating an ignored function?", sec=wsec)
                        is_hint = g in hints or g in restores
                    vbit = 1 << state[UACCESS]
                    v = visited[g]
                    if v & 3:
                        if not is_hint and not self._cfi_match(g, state):
                            return
                        if v & vbit:
                            break
                    if is_hint:
                        h = self._restore(func, g, wsec) if g in restores else hints[g]
                        _load_cfi(state, h)
                        cfi_l[g] = h
                        snap = h
                    else:
                        if snap is None:
                            snap = self._snap(state)
                        cfi_l[g] = snap
                    visited[g] = v | vbit
                    if is_marked and state[NOINSTR]:
                        state[INSTR] += instr.get(g, 0)
                    if not is_special:
                        pass
                    elif (grp := alt_group.get(g)) is not None:
                        self._propagate(groups, grp, prog.off[g] - prog.off[groups[grp].first],
                                        cfi_l[g], g)  # type: ignore[arg-type]
                    alts = alts_map.get(g) if is_special else None
                    if alts and not ignore_alts[g]:
                        skip_orig = any(so for _, so in alts)
                        if not skip_orig:
                            stack.append((g, list(state), 1, wsec))
                        for ag, _ in reversed(alts):
                            stack.append((ag, list(state), 0, sec_of[ag] if ag >= 0 else wsec))
                        break
                if phase == 2:
                    phase = 0
                    if dead_end[g]:
                        break
                    nxt = self._next(g, state)
                    if nxt < 0:
                        if state[CFA_BASE] == UNDEFINED:
                            break
                        self.warn(-1, "unexpected-end-of-section",
                                  f"{prog.section_name(wsec)}: unexpected end of section")
                    g = nxt
                    continue
                phase = 0
                k = kind[g]
                ops = ops_l[g]
                base0 = state[CFA_BASE]
                if ops is not None:
                    for op in ops:
                        update_cfi(self, g, state, op)
                    if pushf and g in alt_group:
                        self._pushf(g, state, ops)
                    snap = None
                if user and user_after(self, g, state, base0):
                    snap = None
                if k == d.RETURN:
                    self._validate_return(func, g, state)
                    break
                if k == d.CALL or k == d.CALL_DYNAMIC:
                    self._validate_call(g, state)
                    if (self.opts.stackval and func >= 0 and not self._fentry(g)
                            and not _valid_frame(state)):
                        self.warn(g, "call-without-frame-pointer",
                                  "call without frame pointer save/setup", fatal=False, sec=wsec)
                    if k == d.CALL and is_noreturn(prog, call_dest[g]):
                        break
                elif k == d.JUMP_COND or k == d.JUMP_UNCOND:
                    if is_sibling_call(prog, g):
                        self._validate_sibling(g, state)
                    elif jump_dest[g] >= 0:
                        if k == d.JUMP_COND:
                            stack.append((g, list(state), 2, wsec))
                        g = jump_dest[g]
                        wsec = sec_of[g]
                        continue
                    if k == d.JUMP_UNCOND:
                        break
                elif k == d.JUMP_DYNAMIC or k == d.JUMP_DYNAMIC_COND:
                    if is_sibling_call(prog, g):
                        self._validate_sibling(g, state)
                    if k == d.JUMP_DYNAMIC:
                        break
                elif k == d.CONTEXT_SWITCH:
                    if func >= 0 and not self._next_is_hint(g):
                        self.warn(g, "unsupported-instruction-in-callable",
                                  "unsupported instruction in callable function", sec=wsec)
                    break
                elif k == d.STAC or k == d.CLAC or k == d.STD or k == d.CLD:
                    self._flag_insn(func, g, k, state, wsec)
                if dead_end[g]:
                    break
                if g in alt_group:
                    nxt = self._next(g, state)
                else:
                    nxt = -1 if sec_last[g] else g + 1
                if nxt < 0:
                    if state[CFA_BASE] == UNDEFINED:
                        break
                    self.warn(-1, "unexpected-end-of-section",
                              f"{prog.section_name(wsec)}: unexpected end of section")
                g = nxt

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
                    raise _Abort        # (no state to go on with, whatever the profile)
                return c
            i -= 1
        self.warn(g, "no-cfi-save-for-restore", "no corresponding CFI save for CFI restore",
                  sec=wsec)
        raise _Abort

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
        if c1[CFA_BASE] != state[CFA_BASE] or c1[CFA_OFF] != state[CFA_OFF]:
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

    def _validate_return(self, func: int, g: int, state: list[int]) -> None:
        if state[NOINSTR] and state[INSTR] > 0:
            self.warn(g, "return-with-instrumentation-enabled",
                      "return with instrumentation enabled", fatal=False)
        if self.opts.uaccess:
            safe = self._uaccess_safe(func)
            if state[UACCESS] and not safe:
                self.warn(g, "return-with-uaccess-enabled", "return with UACCESS enabled",
                          fatal=False)
            if not state[UACCESS] and safe:
                self.warn(g, "return-with-uaccess-disabled",
                          "return with UACCESS disabled from a UACCESS-safe function", fatal=False)
        if state[DF]:
            self.warn(g, "return-with-df-set", "return with DF set", fatal=False)
        if func >= 0 and _modified_frame(state):
            self.warn(g, "return-modified-frame", "return with modified stack frame", fatal=False)
        if state[BP_SCRATCH]:
            self.warn(g, "bp-used-as-scratch", "BP used as a scratch register", fatal=False)

    def _validate_call(self, g: int, state: list[int]) -> None:
        cd = self.prog.call_dest[g]
        if state[NOINSTR] and state[INSTR] <= 0:
            self._noinstr_call(g, cd)
        name = cd.name if cd is not None else "{dynamic}"
        if self.opts.uaccess and state[UACCESS] and not self._uaccess_safe_sym(name):
            self.warn(g, "call-with-uaccess-enabled", f"call to {name}() with UACCESS enabled",
                      fatal=False)
        if state[DF]:
            self.warn(g, "call-with-df-set", f"call to {name}() with DF set", fatal=False)

    def _validate_sibling(self, g: int, state: list[int]) -> None:
        func = self.prog.func[g]
        if func in self.entry_funcs:
            # an entry stub hands the bare hardware frame on to its handler
            if state[CFA_BASE] != d.SP or state[CFA_OFF] != 0:
                self.warn(g, "sibling-call-modified-frame",
                          "sibling call from callable instruction with modified stack frame",
                          fatal=False)
            return
        if _modified_frame(state):
            self.warn(g, "sibling-call-modified-frame",
                      "sibling call from callable instruction with modified stack frame",
                      fatal=False)
        self._validate_call(g, state)

    def _noinstr_call(self, g: int, cd: Symbol | None) -> None:
        if self._pv is None:
            self._pv = PvOps(self.prog)
        ok, lines = noinstr_call_ok(self.prog, self._pv, g, cd)
        self.warnings.extend(Warning(-1, "pv-ops-target-instrumented", t) for t in lines)
        if not ok:
            self.warn(g, "call-leaves-noinstr",
                      f"call to {self._pv.name(g, cd)}() leaves .noinstr.text section",
                      fatal=False)

    def _uaccess_safe(self, func: int) -> bool:
        return func >= 0 and self._uaccess_safe_sym(self.prog.functions[func].name)

    def _uaccess_safe_sym(self, name: str) -> bool:
        from framevet.stack.uaccess import UACCESS_SAFE
        return name in UACCESS_SAFE

    def _flag_insn(self, func: int, g: int, k: int, state: list[int], wsec: int) -> None:
        if k == d.STD:
            if state[DF]:
                self.warn(g, "recursive-std", "recursive STD", fatal=False, sec=wsec)
            state[DF] = 1
        elif k == d.CLD:
            if not state[DF] and func >= 0:
                self.warn(g, "redundant-cld", "redundant CLD", fatal=False, sec=wsec)
            state[DF] = 0
        elif not self.opts.uaccess:
            return
        elif k == d.STAC:
            if state[UACCESS]:
                self.warn(g, "recursive-uaccess-enable", "recursive UACCESS enable",
                          fatal=False, sec=wsec)
            state[UACCESS] = 1
        else:
            if not state[UACCESS] and func >= 0:
                self.warn(g, "redundant-uaccess-disable", "redundant UACCESS disable",
                          fatal=False, sec=wsec)
            if self._uaccess_safe(func) and not state[UACCESS_STACK]:
                self.warn(g, "uaccess-safe-disables-uaccess", "UACCESS-safe disables UACCESS",
                          fatal=False, sec=wsec)
            state[UACCESS] = 0

def _modified_frame(s: list[int]) -> bool:
    if s[CFA_BASE] != d.SP or s[DRAP] or s[CFA_OFF] != 8 or s[STACK] != 8:
        return True
    return tuple(s[REGS:VALS]) != INITIAL_REGS


def _valid_frame(s: list[int]) -> bool:
    if (s[CFA_BASE] == d.BP and s[REGS + 2 * d.BP] == CFA
            and s[REGS + 2 * d.BP + 1] == -16):
        return True
    return bool(s[DRAP] and s[REGS + 2 * d.BP] == d.BP)


def _load_cfi(state: list[int], cfi: tuple[int, ...]) -> None:
    """Load an interned CFI tuple into a full state (keeping the insn-state fields)."""
    state[0:9] = cfi[0:9]
    state[REGS:STATE_LEN] = cfi[9:]


def walk(prog: Program, opts: WalkOptions | None = None,
         hints: dict[int, tuple[int, ...]] | None = None) -> WalkResult:
    return Walker(prog, opts, hints).run()
