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
