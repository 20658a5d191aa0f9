"""The stack state's layout: one flat list of ints, and its constructors.

Index constants name the fields; the state recorded per instruction is the
tuple ``state[0:9] + state[REGS:]`` (see :data:`CFI_FIELDS`), interned.
"""

from __future__ import annotations

from framevet.decode import insn as d

# CFI bases besides hardware registers 0..15
UNDEFINED, CFA, SP_INDIRECT, BP_INDIRECT = -1, -2, -3, -4
#: profile user: CFA = *(rsp + CFA_OFF) + post, post kept in DRAP_OFF (DRAP is off).
#: OpenSSL's perlasm saves the pre-realignment rsp in a stack slot
#: (``mov %rax, 88(%rsp)``; ``.cfi_cfa_expression %rsp+88,deref,+8``).
USER_SP_DEREF = -5
#: a value base: the register held a copy of rsp and has been overwritten since
STALE = -6
RA = 16
NREGS = 17

# state layout
CFA_BASE, CFA_OFF, STACK, DRAP, DRAP_REG, DRAP_OFF, BP_SCRATCH, TYPE, END = range(9)
UACCESS, UACCESS_STACK, DF = 9, 10, 11
#: --noinstr: the walk started in a noinstr section; instrumentation_begin() depth
NOINSTR, INSTR = 12, 13
REGS = 16          # regs[r] base at REGS + 2r, offset at REGS + 2r + 1
VALS = REGS + 2 * NREGS
#: profile user: a stack slot known to hold a copy of the CFA besides the one the CFA
#: rule may name -- at ``rsp + state[SLOT_AT]``, holding ``CFA + state[SLOT_VAL]``
SLOT_AT = VALS + 2 * NREGS
SLOT_VAL = SLOT_AT + 1
STATE_LEN = SLOT_AT + 2
#: SLOT_AT when no slot is known
NO_SLOT = -(1 << 40)
#: profile user, VALS bases besides CFA: the register holds ``rsp + k`` (rsp as it is
#: now: a copy of a realigned rsp); it was loaded from the stack and may hold a copy of
#: the CFA framevet does not know of (:mod:`framevet.stack.cfacopies`)
SP_REL, MAYBE = -8, -9
#: STACK below this: rsp's distance to the CFA is unknown (after a realignment)
STACK_UNKNOWN = -(1 << 29)
CFI_FIELDS = list(range(0, 9)) + list(range(REGS, STATE_LEN))

# hint / ORC types
T_CALL, T_REGS, T_REGS_PARTIAL, T_FUNC, T_ENTRY, T_SAVE, T_RESTORE = range(7)

CALLEE_SAVED = frozenset({d.BX, d.BP, d.R12, d.R13, d.R14, d.R15})


def blank_state() -> list[int]:
    s = [0] * STATE_LEN
    s[CFA_BASE] = UNDEFINED
    s[DRAP_REG] = UNDEFINED
    s[DRAP_OFF] = -1
    for r in range(NREGS):
        s[REGS + 2 * r] = UNDEFINED
        s[VALS + 2 * r] = UNDEFINED
    s[SLOT_AT] = NO_SLOT
    return s


def func_entry_state() -> list[int]:
    s = blank_state()
    s[CFA_BASE] = d.SP
    s[CFA_OFF] = 8
    s[REGS + 2 * RA] = CFA
    s[REGS + 2 * RA + 1] = -8
    s[STACK] = 8
    return s


_ENTRY = func_entry_state()
INITIAL_REGS = tuple(_ENTRY[REGS:VALS])


def save_reg(s: list[int], reg: int, base: int, off: int) -> None:
    if reg in CALLEE_SAVED and s[REGS + 2 * reg] == UNDEFINED:
        s[REGS + 2 * reg] = base
        s[REGS + 2 * reg + 1] = off


def restore_reg(s: list[int], reg: int) -> None:
    s[REGS + 2 * reg] = INITIAL_REGS[2 * reg]
    s[REGS + 2 * reg + 1] = INITIAL_REGS[2 * reg + 1]


def cfa_back_to_rsp(s: list[int]) -> None:
    """The CFA's register is gone: express it from rsp when rsp's distance to it is
    known, else it is lost."""
    if s[STACK] > STACK_UNKNOWN:
        s[CFA_BASE] = d.SP
        s[CFA_OFF] = s[STACK]
    else:
        s[CFA_BASE] = UNDEFINED
        s[CFA_OFF] = 0
