"""objtool's complaints about its input, and about writing its output.

The first group is found while the program is read (:mod:`framevet.cfg.program`,
:mod:`framevet.cfg.alternatives`, :mod:`framevet.cfg.objtool_annotations`, the decoder) and reported
from ``Program.problems``.  Those marked *fatal* make objtool 6.1 abandon the
whole object: it prints that one message and writes no ORC.  framevet reports
the same message at the same place, writes no ORC either (``framevet orc``), and
with ``--objtool-only`` stops reporting there too; otherwise it keeps analysing
what it safely can.

The last two rules stand for what objtool prints when it writes its sections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from framevet.rules.registry import Rule, register
from framevet.unwind.orc import already_has_orc, orc_rows, unknown_cfa_base

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context

_FATAL = "objtool abandons the whole object here: no other check runs and no ORC is written"
_K = ("kernel",)


def _rule(rid: str, summary: str, what: str, why: str, fix: str, objtool: str,
          severity: str = "error", profiles: tuple[str, ...] = _K, switches: str = "") -> None:
    register(Rule(rid, summary, what, why, fix, objtool=objtool, severity=severity,
                  profiles=profiles, switches=switches, family="objtool-input"))


# -- decoding ---------------------------------------------------------------------------
_rule("undecodable-instruction", "bytes in code that do not decode (fatal)",
      "bytes in an executable section that are no x86-64 instruction (data in .text, a "
      "truncated instruction at the end of a section)", _FATAL,
      "keep data out of executable sections", "can't decode instruction at %s:0x%lx")
register(Rule(
    "code-left-out", "a linked image's stretch of code that is no x86-64 code",
    "in a linked image (hypervisor, vmlinux), the bytes from a symbol to the next where "
    "something does not decode as x86-64: 16- or 32-bit boot code, a trampoline, data "
    "without an STT_OBJECT symbol; framevet leaves the stretch out and goes on",
    "nothing in the stretch is walked, checked or described by ORC: say so rather than "
    "abandon the file (objtool abandons an object on its first undecodable byte)",
    "nothing to fix if the stretch is meant to be 16/32-bit code or data; give data an "
    "STT_OBJECT symbol (.type x,@object; .size) so it is known as data",
    severity="note", family="framevet"))
_rule("invalid-lea-encoding", "lea with a register operand",
      "lea whose ModRM byte names a register (mod = 3), which raises #UD",
      "the bytes are no valid instruction; a code generator or hand-written .byte is wrong",
      "fix the encoding", "invalid LEA encoding at %s:0x%lx", severity="warning")
_rule("enqcmd-instruction", "ENQCMD in kernel code",
      "ENQCMD (f2 0f 38 f8)", "it depends on the PASID MSR, which the kernel does not manage "
      "for its own use", "do not use ENQCMD in the kernel", "ENQCMD instruction at %s:%lx",
      severity="warning")
_rule("notrack-prefix", "indirect branch with the notrack prefix",
      "an indirect call or jmp with the 3e (notrack) prefix",
      "it is exempt from IBT's ENDBR check, a hole in CFI protection",
      "drop the prefix (compile without -fcf-protection=...,notrack)",
      "notrack prefix found at %s:0x%lx", severity="warning")
_rule("missing-function-start", "function symbol not at an instruction boundary (fatal)",
      "an STT_FUNC symbol whose address is inside an instruction", _FATAL,
      "fix the symbol (or the bytes before it)", "%s(): can't find starting instruction",
      profiles=("kernel", "user"))
_rule("cold-without-parent", "X.cold function without X (fatal)",
      "a function symbol named X.cold where no symbol X exists",
      "objtool cannot read the object at all (exit status 1)", "keep the parent's symbol",
      "%s(): can't find parent function")

# -- annotations --------------------------------------------------------------------------
_rule("bad-annotation-reloc", "annotation relocated against a symbol, not a section",
      "a .discard.* annotation whose relocation names a symbol instead of the section symbol "
      "(a STACK_FRAME_NON_STANDARD entry naming a data object is only warned about)",
      "objtool reads the addend as a section offset; " + _FATAL,
      "refer to local labels, which the assembler turns into section-symbol relocations",
      "unexpected relocation symbol type in %s (or \"... in %s: %d\")")
_rule("annotation-target-missing", "annotation that does not point at an instruction (fatal)",
      "an ANNOTATE_* / .discard.* entry (unreachable, reachable, ignore_alts, noendbr, "
      "retpoline_safe, instr_begin/end, intra_function_calls) whose address is not the start "
      "of an instruction", _FATAL, "place the annotation's label at an instruction",
      "can't find (un)reachable insn at %s+0x%lx; bad .discard.<kind> entry")
_rule("retpoline-safe-not-indirect", "ANNOTATE_RETPOLINE_SAFE on the wrong instruction (fatal)",
      "a retpoline-safe annotation on an instruction that is no indirect jump/call, ret or "
      "nop", _FATAL, "put the annotation directly before the indirect branch",
      "retpoline_safe hint not an indirect jump/call/ret/nop")
_rule("intra-function-call-not-direct", "ANNOTATE_INTRA_FUNCTION_CALL on no direct call (fatal)",
      "an intra-function-call annotation on something other than a direct call", _FATAL,
      "annotate the call instruction itself", "intra_function_call not a direct call")
_rule("intra-function-call-dest-missing", "annotated intra-function call into an instruction "
      "(fatal)", "an annotated intra-function call whose target is not an instruction boundary",
      _FATAL, "call a label at an instruction", "can't find call dest at %s+0x%lx")
_rule("unwind-hints-without-rela", "unwind hints without relocations (fatal)",
      ".discard.unwind_hints has no relocation section", "the hints cannot be placed; " + _FATAL,
      "emit the ip field as `.long label - .`", "missing .rela.discard.unwind_hints section")
_rule("unwind-hints-size-mismatch", "unwind hint records of the wrong size (fatal)",
      ".discard.unwind_hints is not a whole number of 12-byte records",
      "the layout differs from objtool 6.1's struct unwind_hint; " + _FATAL,
      "pad every record to 12 bytes (.balign 4)", "struct unwind_hint size mismatch")
_rule("unwind-hint-reloc-missing", "unwind hint without a relocation (fatal)",
      "an unwind hint record whose ip field has no relocation", _FATAL,
      "emit the ip field as `.long label - .`", "can't find reloc for unwind_hints[%d]")
_rule("unwind-hint-insn-missing", "unwind hint not at an instruction (fatal)",
      "an unwind hint whose ip is not the start of an instruction", _FATAL,
      "place the hint's label before an instruction", "can't find insn for unwind_hints[%d]")
_rule("unsupported-unwind-hint-sp-reg", "unwind hint with an unusable CFA register (fatal)",
      "an unwind hint whose sp_reg is not undefined, sp, bp, (sp), r10, r13, di or dx",
      "no CFA can be derived from it; " + _FATAL, "use a register ORC can express",
      "unsupported unwind_hint sp base reg %d")

# -- special sections ---------------------------------------------------------------------
_rule("special-section-size", "special section of partial entries (fatal)",
      ".altinstructions (12-byte entries), __jump_table (16) or __ex_table (12) whose size is "
      "not a whole number of entries",
      "the entry layout is not objtool 6.1's (another kernel version?); " + _FATAL,
      "emit whole entries", "%s size not a multiple of %d")
_rule("special-reloc-missing", "special section entry without relocations (fatal)",
      "an alternative, jump label or exception table entry field (orig, new, key) that is a "
      "constant instead of a relocation", _FATAL, "use `label - .` expressions",
      "can't find orig reloc; can't find new reloc; can't find key reloc")
_rule("alternative-orig-missing", "special entry's address inside an instruction (fatal)",
      "an alternative, jump label or exception entry whose original address is not an "
      "instruction boundary", _FATAL, "fix the entry",
      "special: can't find orig instruction")
_rule("alternative-new-missing", "special entry's target inside an instruction (fatal)",
      "an entry whose replacement, jump target or fixup address is not an instruction "
      "boundary", _FATAL, "fix the entry", "special: can't find new instruction")
_rule("empty-alternative-entry", "alternative with nothing to patch",
      "an .altinstructions entry with orig_len 0 (skipped)",
      "there are no original bytes to replace: the entry is dead",
      "pad the original with nops", "empty alternative entry", severity="warning")
_rule("unsupported-relocation-in-alternatives", "replacement code the kernel cannot relocate "
      "(fatal)", "a relocation in replacement code other than in a call/jmp that is the "
      "replacement's first instruction",
      "apply_alternatives() fixes only that branch's displacement: the copied code would use "
      "a wrong address; " + _FATAL,
      "load addresses outside the alternative, or make the branch its first instruction",
      "unsupported relocation in alternatives section")
_rule("alternative-jump-dest-missing", "replacement jumps past the end of its section (fatal)",
      "a replacement jump to its own end (meaning: after the original code) when nothing "
      "follows the original code in its section", _FATAL,
      "have an instruction after the alternative", "can't find alternative jump destination")
_rule("unsupported-instruction-at-jump-label", "static branch site that is no jmp/nop (fatal)",
      "a __jump_table entry whose code address holds neither a jmp nor a nop",
      "static keys patch only jmp <-> nop; " + _FATAL,
      "point the entry at the static branch's jmp/nop", "unsupported instruction at jump label")

# -- branch and call destinations -----------------------------------------------------------
_rule("jump-dest-missing", "jump into the middle of an instruction (fatal)",
      "a direct jump whose target is not an instruction boundary of decoded code", _FATAL,
      "jump to instruction boundaries", "can't find jump dest instruction at %s+0x%lx",
      profiles=("kernel", "user"))
_rule("call-dest-missing", "call to an address without a symbol (fatal)",
      "a call relocated against a section symbol at an offset where no sized symbol starts",
      _FATAL, "give the target a function symbol", "can't find call dest symbol at %s+0x%lx",
      profiles=("kernel", "user"))
_rule("unsupported-call-to-non-function", "call to a symbol that is not a function (fatal)",
      "a direct call from a function to a local sized symbol that is not STT_FUNC",
      "the callee is never validated as a function; " + _FATAL,
      "mark the target .type @function (SYM_FUNC_START)", "unsupported call to non-function")
_rule("switch-jump-table-missing", "indirect jump whose jump table objtool cannot find (fatal)",
      "a jump table in .rodata whose first entry is the function's own start, or a one-entry "
      "table at offset 0 of its section: objtool takes both for no table", _FATAL,
      "(compiler output quirk) avoid a table entry at the function entry",
      "can't find switch jump table", profiles=("kernel", "user"))

# -- found by the walk ---------------------------------------------------------------------
_rule("validating-ignored-function", "walk enters an ignored function",
      "a path leading into instructions objtool was told to ignore (STACK_FRAME_NON_STANDARD "
      "on a .cold part only)", "the annotation is inconsistent with the control flow; the "
      "walk of the function stops there", "annotate the parent function",
      "BUG: why am I validating an ignored function?")
_rule("pushf-stack-exhausted", "too many nested pushf in alternatives (--uaccess)",
      "more than 31 nested pushf inside alternatives (objtool keeps AC on a 32-bit stack)",
      "AC can no longer be tracked; the walk of the function stops there", "fewer nested pushf",
      "PUSHF stack exhausted", switches="--uaccess")


# -- writing objtool's sections -------------------------------------------------------------
def check_output(ctx: Context) -> Iterator[Finding]:
    """Sections objtool would have to add that the (unlinked) object already has."""
    prog, opts = ctx.prog, ctx.options
    if not prog.strict:
        return
    names = [(opts.retpoline, ".retpoline_sites"), (opts.rethunk, ".return_sites"),
             (opts.ibt, ".ibt_endbr_seal")]
    for on, name in names:
        if on and prog.elf.section(name) is not None:
            yield ctx.finding(-1, OUTPUT.id, f"file already has {name}, skipping")
    if (already_has_orc(prog) and unknown_cfa_base(prog, ctx.result) is None
            and orc_rows(prog, ctx.result)):
        yield ctx.finding(-1, OUTPUT.id, "file already has .orc_unwind section, skipping")


def check_cfa_base(ctx: Context) -> Iterator[Finding]:
    bad = unknown_cfa_base(ctx.prog, ctx.result)
    if bad is not None:
        yield ctx.finding(bad[0], CFA_BASE.id, f"unknown CFA base reg {bad[1]}")


OUTPUT = register(Rule(
    "output-section-exists", "objtool's output section already present",
    "an unlinked object that already has .orc_unwind, .retpoline_sites, .return_sites or "
    ".ibt_endbr_seal (objtool was run on it before)",
    "objtool leaves the old section alone and adds nothing", "run objtool on the original object",
    objtool="file already has %s, skipping (.orc_unwind: \"... section, skipping\")",
    severity="warning", profiles=_K, family="objtool-output", check=check_output))
CFA_BASE = register(Rule(
    "unknown-cfa-base-reg", "CFA in a register ORC cannot express",
    "a CFA based on a register other than sp, bp, r10, r13, di, dx (e.g. a DRAP sequence "
    "through %rcx); stack validation accepts it",
    "ORC generation fails: objtool writes no ORC for the object (exit status still 0)",
    "use %r10 or %r13 as the DRAP register", objtool="unknown CFA base reg %d",
    severity="error", profiles=_K, family="objtool-output", check=check_cfa_base))
