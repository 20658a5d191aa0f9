"""objtool's stack-validation rules, raised during the CFA walk (framevet.stack.walker).

They stop the walk of a function the way objtool does when generating ORC;
``framevet check`` keeps walking after the non-fatal ones so that one bad
return does not hide the next.
"""

from __future__ import annotations

from framevet.rules.registry import Rule, register

_FRAME_FIX = ("undo every push, stack adjustment and register save before the return/jump, "
              "or annotate a deliberate non-standard frame")

#: how to read objtool's numbers (stack-state-mismatch)
STATE_ENCODING = """**Reading the message.** objtool prints each state as `BASE+OFFSET`. Path 1 is
the one the walk took first, path 2 the one that arrives now. `BASE` is objtool's
register number: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8-15 r8-r15;
-1 means undefined and -2 the CFA itself. So `cfa1=4+16 cfa2=4+24` says the CFA is
rsp+16 on the first path and rsp+24 on the second (one extra push), and
`reg1[3]=-2-16 reg2[3]=-1+0` says rbx (register 3) is saved at CFA-16 on the first
path and not saved on the second. `type1=1 type2=0`: the frame types differ (0 a
call frame, 1 a full pt_regs frame, 2 an iret frame); `drap1`/`drap2` compare the
DRAP register used for a realigned stack. `framevet check --explain` prints both
paths from the branch where they split, with the state at every instruction."""

register(Rule(
    "return-modified-frame", "return with the stack frame still modified",
    "a ret reached with the CFA not back at rsp+8, a callee-saved register still recorded as "
    "saved, or a realigned/DRAP stack",
    "the caller's stack pointer and registers are wrong after the return; unwinders and "
    "live-patching see a corrupt frame", _FRAME_FIX,
    objtool="return with modified stack frame", severity="error"))
register(Rule(
    "sibling-call-modified-frame", "tail call with a frame still pushed",
    "a jump to another function (tail call) or an indirect jump that is not a switch table, "
    "taken while the stack frame is modified",
    "the callee returns straight to our caller with our pushes still on the stack",
    "pop the frame before the jump, or make it a call",
    objtool="sibling call from callable instruction with modified stack frame", severity="error"))
register(Rule(
    "stack-state-mismatch", "two paths reach an instruction with different stack states",
    "a join point reached with a different CFA, saved-register layout, type or DRAP state",
    "ORC/CFI can describe only one state per address: one of the paths unwinds wrongly",
    "make every path push/pop the same amount before joining",
    objtool="stack state mismatch: cfa1=%d%+d cfa2=%d%+d (also reg1[%d], type1, drap1 forms)",
    severity="error", notes=STATE_ENCODING))
register(Rule(
    "undefined-stack-state", "stack operation after the CFA became unknown",
    "an instruction changes the stack after an untracked write to rsp made the CFA undefined",
    "nothing after this point can be unwound", "restore rsp from a tracked copy "
    "(mov %rbp,%rsp / lea off(%rbp),%rsp) or annotate the switch",
    objtool="undefined stack state", severity="error"))
register(Rule(
    "unsupported-stack-register-modification", "rsp/CFA register changed in a way not modelled",
    "the register the CFA is based on is modified by an add/lea form objtool cannot follow",
    "the unwinder loses the frame", "use add/sub $imm,%rsp or lea imm(%rsp),%rsp",
    objtool="unsupported stack register modification", severity="error"))
register(Rule(
    "unsupported-stack-pointer-realignment", "and $-N,%rsp without a frame or DRAP register",
    "stack realignment while the CFA is rsp-based and no DRAP register holds the old rsp",
    "the old rsp is lost: no unwinder can recover the caller's frame",
    "set up a frame pointer (push %rbp; mov %rsp,%rbp) or a DRAP register before realigning",
    objtool="unsupported stack pointer realignment", severity="error"))
register(Rule(
    "unknown-stack-related-instruction", "stack operation objtool cannot classify",
    "a decoded stack operation with an unexpected source/destination combination",
    "its effect on the CFA is unknown", "use plain push/pop/mov forms",
    objtool="unknown stack-related instruction", severity="error"))
register(Rule(
    "unknown-stack-memory-operation", "memory destination stack operation that is not a pop",
    "a stack operation with a memory destination other than pop-to-memory",
    "its effect on the CFA is unknown", "use plain push/pop forms",
    objtool="unknown stack-related memory operation", severity="error"))
register(Rule(
    "unsupported-instruction-in-callable", "context switch instruction inside a function",
    "sysret/sysexit/iret/retf/far jmp/syscall in an STT_FUNC symbol",
    "a callable function must return to its caller; these leave the frame undescribed",
    "move the code to a non-function (SYM_CODE) entry or add an unwind hint after it",
    objtool="unsupported instruction in callable function", severity="error"))
register(Rule(
    "falls-through-to-next-function", "execution runs off the end of a function",
    "the last instruction of a function falls through into the next symbol",
    "usually a missing noreturn annotation or a compiler bug; the next function starts with "
    "the wrong frame", "end the function with ret/jmp/ud2, or mark the callee noreturn",
    objtool="%s() falls through to next function %s()", severity="error"))
register(Rule(
    "unexpected-end-of-section", "execution runs off the end of a section",
    "a path reaches the end of the section with a defined stack state",
    "the code continues into whatever the linker places next", "end the path explicitly",
    objtool="%s: unexpected end of section", severity="error"))
register(Rule(
    "missing-elf-size", "function symbol without st_size",
    "an STT_FUNC symbol of size 0 (missing .size directive)",
    "tools cannot tell where the function ends; objtool skips it", "add `.size f, .-f`",
    objtool="%s() is missing an ELF size annotation", severity="error"))
register(Rule(
    "bp-used-as-scratch", "rbp clobbered without a frame (--stackval)",
    "rbp pushed and reused while it is not the frame pointer, still set at return",
    "frame-pointer unwinding through this function reads garbage",
    "use another register or set up a proper frame",
    objtool="BP used as a scratch register", switches="--stackval"))
register(Rule(
    "call-without-frame-pointer", "call before the frame pointer is set up (--stackval)",
    "a call made from a function that has not pushed rbp and moved rsp into it",
    "frame-pointer unwinding skips this function's caller", "push %rbp; mov %rsp,%rbp first",
    objtool="call without frame pointer save/setup", switches="--stackval"))
register(Rule(
    "stack-layout-conflict-in-alternatives", "alternative and original disagree on the stack",
    "an ALTERNATIVE replacement leaves a different stack state at a byte offset than the "
    "original", "ORC is per byte: after patching, the unwind data is wrong",
    "make replacement and original stack-neutral at the same offsets",
    objtool="stack layout conflict in alternatives", severity="error"))
register(Rule(
    "unannotated-intra-function-call", "call to a place that is no function (fatal)",
    "in an unlinked object: a call to a local label, or to a symbol without a size, that "
    "is not annotated ANNOTATE_INTRA_FUNCTION_CALL; in a linked module (whose annotations "
    "the link dropped) framevet infers the annotation and follows the call as a jump that "
    "keeps its push, so only a call into the middle of an instruction is reported",
    "objtool cannot tell whether the pushed return address is consumed: it abandons the whole "
    "object (no ORC is written)",
    "call a function, or annotate ANNOTATE_INTRA_FUNCTION_CALL",
    objtool="unannotated intra-function call", severity="error"))
register(Rule(
    "no-cfi-save-for-restore", "UNWIND_HINT_RESTORE without a matching SAVE",
    "a restore hint with no earlier save hint in the function",
    "the restored state is undefined", "pair every UNWIND_HINT_RESTORE with a SAVE",
    objtool="no corresponding CFI save for CFI restore", severity="error"))
register(Rule(
    "cfi-save-restore-combo", "UNWIND_HINT_RESTORE before its SAVE was reached",
    "the walk reaches a restore hint before the instruction holding the save",
    "the restored state is unknown at that point", "reorder the code or hints",
    objtool="objtool isn't smart enough to handle this CFI save/restore combo",
    severity="error"))
register(Rule(
    "cfi-state-missing", "internal: a visited instruction lost its state",
    "should not happen", "it means the walk is inconsistent", "report a framevet bug",
    objtool="CFI missing", severity="error"))
register(Rule(
    "return-with-df-set", "return with the direction flag set",
    "a ret reached after std without cld",
    "the ABI requires DF clear on function return; string instructions in the caller run "
    "backwards", "cld before returning", objtool="return with DF set", severity="error"))
register(Rule(
    "call-with-df-set", "call with the direction flag set",
    "a call made after std without cld", "the ABI requires DF clear at calls",
    "cld before the call", objtool="call to %s() with DF set", severity="error"))
register(Rule(
    "recursive-std", "std while DF is already set", "two std on one path",
    "indicates unbalanced DF handling", "pair each std with a cld", objtool="recursive STD"))
register(Rule(
    "redundant-cld", "cld while DF is already clear", "cld with DF known clear",
    "indicates unbalanced DF handling", "remove the cld", objtool="redundant CLD"))
_UACCESS_WHY = "with SMAP disabled (stac), any stray user pointer dereference is allowed"
register(Rule(
    "return-with-uaccess-enabled", "return with SMAP disabled (--uaccess)",
    "a ret reached after stac without clac in a function not on the UACCESS-safe list",
    _UACCESS_WHY, "clac before returning", objtool="return with UACCESS enabled",
    switches="--uaccess", profiles=("kernel",), family="uaccess"))
register(Rule(
    "return-with-uaccess-disabled", "UACCESS-safe function returns with SMAP enabled",
    "a UACCESS-safe function disables user access before returning", _UACCESS_WHY,
    "leave the UACCESS state as it was on entry",
    objtool="return with UACCESS disabled from a UACCESS-safe function",
    switches="--uaccess", profiles=("kernel",), family="uaccess"))
register(Rule(
    "call-with-uaccess-enabled", "call with SMAP disabled (--uaccess)",
    "a call to a function not on the UACCESS-safe list between stac and clac", _UACCESS_WHY,
    "clac before the call", objtool="call to %s() with UACCESS enabled",
    switches="--uaccess", profiles=("kernel",), family="uaccess"))
register(Rule(
    "recursive-uaccess-enable", "stac while already enabled (--uaccess)", "two stac on one path",
    "unbalanced user-access windows", "pair stac with clac",
    objtool="recursive UACCESS enable", switches="--uaccess", profiles=("kernel",),
    family="uaccess"))
register(Rule(
    "redundant-uaccess-disable", "clac while already disabled (--uaccess)",
    "clac with user access known disabled", "unbalanced user-access windows",
    "remove the clac", objtool="redundant UACCESS disable", switches="--uaccess",
    profiles=("kernel",), family="uaccess"))
register(Rule(
    "uaccess-safe-disables-uaccess", "UACCESS-safe function executes clac (--uaccess)",
    "clac in a function on the UACCESS-safe list", _UACCESS_WHY,
    "UACCESS-safe functions must not change the state",
    objtool="UACCESS-safe disables UACCESS", switches="--uaccess", profiles=("kernel",),
    family="uaccess"))
