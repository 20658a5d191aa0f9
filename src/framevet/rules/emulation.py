"""Findings from running code under emulation (framevet.emulate: ``abi``, ``diff``)."""

from framevet.rules.registry import Rule, register

register(Rule(
    "abi-violation", "the run broke the SysV calling convention",
    "callee-saved register not restored, rsp unbalanced, DF left set, a store outside the "
    "function's own frame and argument buffers, junk upper halves of 32-bit arguments used, "
    "MMX state left without emms, dirty AVX upper halves without vzeroupper",
    "callers rely on every one of these; violations corrupt state far from the bug",
    "see the instruction named in the finding", severity="error", family="emulation"))
register(Rule(
    "unwind-failure", "unwinding at an instruction recovers the wrong frame",
    "single-stepping the function, one frame unwound with framevet's table or the DWARF CFI "
    "does not recover the true return address or callee-saved registers",
    "profilers, debuggers and exceptions interrupted at that instruction see garbage",
    "fix the CFI (or the code) at the instruction named", severity="error", family="emulation"))
register(Rule(
    "diff-divergence", "two versions of a routine behave differently",
    "the first register, flag, memory or return difference between two runs from the same "
    "state", "a refactoring changed behaviour", "compare the short trace printed",
    family="emulation"))
register(Rule(
    "emulation-error", "the emulator could not finish a run",
    "an instruction unicorn cannot execute (AVX), a system call, or an exhausted budget "
    "(instructions, time, memory) ended the run early",
    "checks after that point were not made", "narrow the run (--args, --runs) or accept it",
    family="emulation"))
register(Rule(
    "stub-size", "generated stub larger than its buffer",
    "raw stub code longer than the declared --max-size",
    "the stub overruns its buffer (seed 001's STUB_BUF_SIZE)", "shrink the stub or the claim",
    severity="error", family="emulation"))
register(Rule(
    "rel32-reach", "rel32 branch cannot reach its target",
    "a rel32 call/jmp in a stub whose target is more than ±2 GiB away",
    "the branch lands somewhere else", "use an indirect call through a register",
    severity="error", family="emulation"))
