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
