"""--explain: the paths that lead to a finding, with the stack state at every instruction."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from conftest import FIXTURES, ROOT, fv

from framevet.cfg.build import build
from framevet.cfg.disasm import Namer, insn_text
from framevet.load import load_path


def test_a_mismatch_shows_both_paths_from_where_they_split() -> None:
    r = fv("check", "--explain", str(FIXTURES / "stack-state-mismatch" / "cfa.S"))
    lines = [ln.strip() for ln in r.stdout.splitlines()]
    assert "split at f+0x3" in lines[1]
    one = lines.index("path 1 (walked first):")
    two = lines.index("path 2:")
    first, second = lines[one + 1:two], lines[two + 1:]
    assert first[0].startswith("f+0x3: jne f+0x6") and first[0].endswith("(taken)")
    assert first[-1].startswith("f+0x6: pop %rbx") and "cfa=rsp+16 rbx=cfa-16" in first[-1]
    assert second[0].endswith("(not taken)")
    assert second[1].startswith("f+0x5: push %rax")
    assert second[-1].startswith("f+0x6: pop %rbx") and "cfa=rsp+24 rbx=cfa-16" in second[-1]


def test_paths_through_long_functions_keep_what_changes(tmp_path: Path) -> None:
    body = "".join(f" mov %rdi,{8 * i}(%rsi)\n" for i in range(20))
    src = tmp_path / "long.S"
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n push %rbx\n" + body +
                   " test %edi,%edi\n jz 1f\n push %r12\n" + body + "1:\n pop %rbx\n ret\n"
                   ".size f,.-f\n")
    r = fv("check", "--explain", "--format", "json", str(src))
    found = json.loads(r.stdout)
    mismatch = next(f for f in found if f["rule"] == "stack-state-mismatch")
    ex = mismatch["details"]["explain"]
    assert ex["split"].startswith("f+0x")
    one, two = ex["paths"]
    assert one["steps"][0]["insn"].startswith("je ") and one["steps"][0]["note"] == "taken"
    assert two["steps"][0]["note"] == "not taken"
    assert any(s["insn"] == "push %r12" for s in two["steps"])
    assert any(s.get("elided") == 18 for s in two["steps"])    # the 20 stores, minus ends
    assert two["steps"][-1]["state"] == "cfa=rsp+24 rbx=cfa-16 r12=cfa-24"
    assert one["steps"][-1]["state"] == "cfa=rsp+16 rbx=cfa-16"


def test_every_finding_gets_its_path_and_follow_ons() -> None:
    r = fv("check", "--explain", str(ROOT / "examples" / "entry-stubs.S"))
    out = r.stdout
    assert "      gpr_switch_old+0xe: lea gpr_switch_back(%rip),%rcx  cfa=rsp+24 rbx=cfa-16" \
        in out
    assert "2 follow-on findings at this instruction:" in out
    assert "fred_irq_bad+0x11: call external_interrupt" in out


def test_cfi_findings_explain_too() -> None:
    r = fv("cfi", "--explain", str(FIXTURES / "cfi-mismatch" / "push-no-cfi.S"))
    assert "      f+0x0: push %rbx" in r.stdout and "cfa=rsp+16 rbx=cfa-16" in r.stdout


def test_targets_print_by_name(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text("#include <stdlib.h>\nint main(int c, char **v) { if (c > 3) abort(); "
                   "return v[0][0]; }\n")
    exe = tmp_path / "p"
    subprocess.run([shutil.which("gcc") or "gcc", "-O1", "-o", str(exe), str(src)], check=True)
    obj = load_path(str(exe))[0]
    prog = build(obj.elf, "user")
    namer = Namer(obj.elf)
    texts = [insn_text(prog, g, namer) for g in range(len(prog.off))
             if prog.func[g] >= 0 and prog.functions[prog.func[g]].name == "main"]
    assert "call abort@plt" in texts
    assert not [t for t in texts if re.match(r"(call|j[a-z]+) +0x", t)]


def _source(tmp_path: Path, name: str, body: str) -> Path:
    src = tmp_path / name
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n" + body + ".size f,.-f\n")
    return src


def test_findings_reached_only_through_a_mismatch_fold_under_it(tmp_path: Path) -> None:
    # the branch with the extra push is walked first: its frame reaches the ret
    src = _source(tmp_path, "m.S", " push %rbx\n test %edi,%edi\n jz 2f\n1:\n mov %rdi,%rbx\n"
                  " pop %rbx\n ret\n2:\n push %rax\n jmp 1b\n")
    r = fv("check", str(src))
    lines = r.stdout.splitlines()
    assert len([ln for ln in lines if not ln.startswith(" ")]) == 1, r.stdout
    assert lines[0].startswith(f"{src}:9:2: error: f+0x5: stack state mismatch")
    assert lines[1] == ("    + 3 follow-on findings reached only through this state, at f+0x9 "
                        "(return-modified-frame, callee-saved-clobber, "
                        "return-address-overwrite); --explain lists them")
    assert "4 errors in 1 input (3 folded as follow-ons)" in r.stderr
    explained = fv("check", "--explain", str(src)).stdout
    assert "      f+0x9 (line 11): error: return with modified stack frame " \
           "[return-modified-frame]" in explained
    found = json.loads(fv("check", "--format", "json", str(src)).stdout)
    assert len(found) == 4
    assert [f.get("follows") for f in found if f["rule"] != "stack-state-mismatch"] == \
        [{"section": ".text", "section_offset": 5}] * 3


def test_a_misaligned_frame_folds_its_later_frame_findings_only(tmp_path: Path) -> None:
    pushed = _source(tmp_path, "p.S", " push %rbx\n push %rax\n test %edi,%edi\n jz 1f\n"
                     " call g\n pop %rbx\n ret\n1:\n call h\n pop %rbx\n ret\n")
    r = fv("check", "--profile", "user", str(pushed))
    heads = [ln for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    assert [h.split(": ")[2] for h in heads] == ["f+0x6", "f+0xd"], r.stdout
    assert "6 folded as follow-ons" in r.stderr
    # an unrelated register bug after a misaligned call is a finding of its own
    clobber = _source(tmp_path, "c.S", " call g\n mov $1,%ebx\n ret\n")
    r = fv("check", "--profile", "user", str(clobber))
    rules = [ln.rsplit("[", 1)[1] for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    assert rules == ["call-misaligned-stack]", "callee-saved-clobber]"], r.stdout


def test_explain_in_an_alternative_starts_at_the_function_entry(tmp_path: Path) -> None:
    src = _source(tmp_path, "alt.S", """ push %rbx
 mov %rdi,%rbx
.Lorig:
 .byte 0x0f, 0x1f, 0x44, 0x00, 0x00
.Lorig_end:
 .pushsection .altinstr_replacement,"ax",@progbits
.Lnew:
 push %rax
 xchg %ax,%ax
 xchg %ax,%ax
.Lnew_end:
 .popsection
 .pushsection .altinstructions,"a",@progbits
 .long .Lorig - .
 .long .Lnew - .
 .short 0
 .byte .Lorig_end - .Lorig
 .byte .Lnew_end - .Lnew
 .popsection
 pop %rbx
 ret
 int3
""")
    found = json.loads(fv("check", "--explain", "--format", "json", "--profile", "kernel",
                          str(src)).stdout)
    ret = next(f for f in found if f["rule"] == "return-modified-frame")
    steps = ret["details"]["explain"]["paths"][0]["steps"]
    where = [s["where"] for s in steps]
    assert where[:3] == ["f+0x0", "f+0x1", "f+0x4"], where
    assert steps[2]["note"] == "patch site: an alternative replaces it"
    assert where[3:] == [".altinstr_replacement+0x0", ".altinstr_replacement+0x1",
                         ".altinstr_replacement+0x3", "f+0x9", "f+0xa"]
    assert steps[4]["state"] == "cfa=rsp+24 rbx=cfa-16"
    mismatch = next(f for f in found if f["rule"] == "stack-state-mismatch")
    assert mismatch["details"]["explain"]["split"] == "f+0x4"
