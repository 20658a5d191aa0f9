"""What objtool checks where control leaves the straight line: at returns, calls, jumps,
context switches and flag instructions (objtool's validate_return/validate_call/
validate_sibling_call and the UACCESS/DF bookkeeping), as a part of the walker."""

from __future__ import annotations

from framevet.cfg.noinstr import PvOps
from framevet.cfg.noinstr import call_ok as noinstr_call_ok
from framevet.cfg.noreturn import is_noreturn, is_sibling_call
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import (
    BP_SCRATCH,
    CFA,
    CFA_BASE,
    CFA_OFF,
    DF,
    DRAP,
    INITIAL_REGS,
    INSTR,
    NOINSTR,
    REGS,
    STACK,
    UACCESS,
    UACCESS_STACK,
    VALS,
)
from framevet.load.elf import Symbol
from framevet.stack.rspcopies import on_new_stack
from framevet.stack.uaccess import UACCESS_SAFE
from framevet.stack.walkresult import WalkOptions, Warning

#: what :meth:`TransferChecks._transfer` says besides a jump target
_END, _NEXT = -1, -2


class TransferChecks:
    """The walker's checks at control transfers.  Mixed into
    :class:`~framevet.stack.walker.Walker`, which provides what is declared here."""

    prog: Program
    opts: WalkOptions
    warnings: list[Warning]
    entry_funcs: set[int]
    _pv: PvOps | None

    def warn(self, g: int, rule: str, msg: str, fatal: bool = True, sec: int = -1) -> None:
        raise NotImplementedError

    def _fentry(self, g: int) -> bool:
        raise NotImplementedError

    def _next_is_hint(self, g: int) -> bool:
        raise NotImplementedError

    def _transfer(self, func: int, g: int, k: int, state: list[int], wsec: int,
                  stack: list[tuple[int, list[int], int, int]]) -> int:
        """Instruction ``g`` of kind ``k`` after its stack operations: _END when the path
        ends, _NEXT when it goes on with the next instruction, else the gid it jumps to
        (a conditional jump's fall-through is pushed on ``stack``)."""
        prog = self.prog
        if k == d.RETURN:
            self._validate_return(func, g, state)
            return _END
        if k == d.CALL or k == d.CALL_DYNAMIC:
            self._validate_call(g, state)
            if (self.opts.stackval and func >= 0 and not self._fentry(g)
                    and not _valid_frame(state)):
                self.warn(g, "call-without-frame-pointer",
                          "call without frame pointer save/setup", fatal=False, sec=wsec)
            if is_noreturn(prog, prog.call_dest[g]):
                return _END
        elif k == d.JUMP_COND or k == d.JUMP_UNCOND:
            if is_sibling_call(prog, g):
                self._validate_sibling(g, state)
            elif prog.jump_dest[g] >= 0:
                if k == d.JUMP_COND:
                    stack.append((g, list(state), 2, wsec))
                return prog.jump_dest[g]
            if k == d.JUMP_UNCOND:
                return _END
        elif k == d.JUMP_DYNAMIC or k == d.JUMP_DYNAMIC_COND:
            if is_sibling_call(prog, g):
                self._validate_sibling(g, state)
            if k == d.JUMP_DYNAMIC:
                return _END
        elif k == d.CONTEXT_SWITCH:
            if func >= 0 and not self._next_is_hint(g):
                self.warn(g, "unsupported-instruction-in-callable",
                          "unsupported instruction in callable function", sec=wsec)
            return _END
        elif k == d.STAC or k == d.CLAC or k == d.STD or k == d.CLD:
            self._flag_insn(func, g, k, state, wsec)
        return _NEXT

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
        if _modified_frame(state) and not on_new_stack(state):
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
