"""DWARF CFI rules: checked by framevet.unwind.cficheck (``framevet cfi``)."""

from framevet.rules.registry import Rule, register

MISMATCH = register(Rule(
    "cfi-mismatch", "DWARF CFI disagrees with the code",
    "at some instruction the .eh_frame/.debug_frame CFA rule or saved-register rule differs "
    "from what the instructions actually do",
    "debuggers, profilers (perf --call-graph=dwarf), C++ exceptions and pthread cancellation "
    "unwind through this function wrongly, silently",
    "fix the .cfi_* directives at that instruction (framevet prints the corrected ones for "
    "assembly sources)", severity="error", family="cfi"))
MISSING = register(Rule(
    "cfi-missing", "function without CFI, or CFI covering no function",
    "a function with no FDE, or an FDE whose range covers no function",
    "nothing can unwind through the function", "add .cfi_startproc/.cfi_endproc",
    family="cfi"))
UNMODELLED = register(Rule(
    "cfa-unmodelled", "CFI framevet cannot judge",
    "the CFI computes the CFA from a register or stack slot whose content framevet's "
    "stack model does not know (a value reloaded from a slot it does not track, such as "
    "OpenSSL's saved rsp read back after a loop that moves the frame); one note per "
    "function, at the first such instruction",
    "framevet neither confirms nor refutes the CFI there; nothing is wrong by itself",
    "nothing to fix; tell framevet's authors if the idiom is common", severity="note",
    family="cfi"))
