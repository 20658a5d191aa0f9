"""The command line: formats, exit codes, rule docs, source lines, parallel runs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from conftest import FIXTURES, ROOT, assemble, fv

SEEDS = FIXTURES / "seeds"
#: the seeds are kernel entry code with no kernel section to tell: say so
KERNEL = ("--profile", "kernel")
SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"



def test_exit_codes() -> None:
    clean = assemble(SEEDS / "save-extra-regs-push.S")
    dirty = assemble(SEEDS / "save-extra-regs-slots.S")
    assert fv("check", *KERNEL, str(clean)).returncode == 0
    assert fv("check", *KERNEL, str(dirty)).returncode == 1
    assert fv("check", *KERNEL, "--fail-on", "never", str(dirty)).returncode == 0
    assert fv("check", *KERNEL, "--disable", "caller-frame-write", str(dirty)).returncode == 0
    assert fv("check", *KERNEL, "--bogus-switch", str(clean)).returncode == 2


def test_text_format_names_source_line_and_symbol() -> None:
    r = fv("check", *KERNEL, str(SEEDS / "save-extra-regs-slots.S"))
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{SEEDS / 'save-extra-regs-slots.S'}:8:2: error: ")
    assert "lockdep_sys_exit_thunk+0x0: save of r15 into the caller's frame at cfa+0" in first
    assert first.endswith("[caller-frame-write]")


def test_objtool_format_is_objtools_words() -> None:
    obj = assemble(SEEDS / "fred-frame-builder.S")
    r = fv("check", *KERNEL, "--format", "objtool", "--objtool-only", str(obj))
    assert r.stdout.splitlines() == [
        f"{obj}: warning: objtool: vmx_do_fred_interrupt_irqoff+0x17: "
        "return with modified stack frame",
        f"{obj}: warning: objtool: vmx_do_fred_nmi_irqoff+0x19: "
        "sibling call from callable instruction with modified stack frame",
    ]


def test_json_format() -> None:
    r = fv("check", *KERNEL, "--format", "json", str(SEEDS / "gpr-switch-return-oriented.S"))
    items = json.loads(r.stdout)
    assert {i["rule"] for i in items} >= {"return-address-overwrite", "return-modified-frame"}
    one = next(i for i in items if i["rule"] == "return-address-overwrite")
    for key in ("file", "section", "symbol", "offset", "address", "rule", "severity", "message"):
        assert key in one
    assert one["symbol"] == "host_to_guest_gpr_switch" and one["section"] == ".text"
    assert one["source"]["line"] > 0


def test_sarif_validates_against_the_2_1_0_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    for src in ("gpr-switch-return-oriented.S", "save-extra-regs-push.S"):
        r = fv("check", *KERNEL, "--format", "sarif", str(SEEDS / src))
        log = json.loads(r.stdout)
        jsonschema.validate(log, schema)
        assert log["version"] == "2.1.0"
    results = json.loads(fv("check", *KERNEL, "--format", "sarif",
                            str(SEEDS / "gpr-switch-return-oriented.S")).stdout)
    assert results["runs"][0]["results"], "findings must appear as results"


def test_html_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = fv("check", *KERNEL, "--format", "html", "-o", str(out),
           str(SEEDS / "save-extra-regs-slots.S"))
    assert r.returncode == 1
    text = out.read_text()
    assert "<table>" in text and "caller-frame-write" in text


def test_rules_listing_and_docs() -> None:
    r = fv("rules")
    assert r.returncode == 0
    for rid in ("return-modified-frame", "callee-saved-clobber", "caller-frame-write",
                "return-address-overwrite", "call-misaligned-stack", "missing-int3-after-ret"):
        assert rid in r.stdout
    doc = fv("rules", "return-address-overwrite").stdout
    assert "return stack buffer" in doc and "Fix:" in doc
    assert fv("rules", "no-such-rule").returncode == 2


def test_many_files_in_parallel_keep_input_order() -> None:
    objs = [str(assemble(SEEDS / n)) for n in (
        "save-extra-regs-slots.S", "save-extra-regs-push.S", "fred-frame-builder.S")]
    r = fv("check", *KERNEL, "-j", "2", "--format", "json", *objs)
    files = [i["file"] for i in json.loads(r.stdout)]
    assert files == sorted(files, key=objs.index)
    assert set(files) == {objs[0], objs[2]}


def test_user_profile_misaligned_call(tmp_path: Path) -> None:
    src = tmp_path / "m.S"
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n push %rbx\n call g\n pop %rbx\n"
                   " ret\n.size f,.-f\n.globl h\n.type h,@function\nh:\n sub $8,%rsp\n"
                   " call g\n add $8,%rsp\n ret\n.size h,.-h\n")
    r = fv("check", "--profile", "user", "--format", "json", str(src))
    hits = [(i["symbol"], i["rule"]) for i in json.loads(r.stdout)]
    assert ("f", "call-misaligned-stack") not in hits  # 8 (ret) + 8 (rbx) = 16: aligned
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n call g\n ret\n.size f,.-f\n")
    hits = [(i["symbol"], i["rule"]) for i in json.loads(
        fv("check", "--profile", "user", "--format", "json", str(src)).stdout)]
    assert ("f", "call-misaligned-stack") in hits


def test_abi_and_diff_commands() -> None:
    emu = FIXTURES / "emulate" / "save-extra-regs.S"
    clean = fv("abi", str(emu), "--function", "extra_regs_push", "--runs", "4")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    bad = fv("abi", str(emu), "--function", "extra_regs_slots", "--runs", "4", "--format", "json")
    assert bad.returncode == 1
    assert {i["rule"] for i in json.loads(bad.stdout)} >= {"abi-violation"}
    d = fv("diff", f"{emu}:extra_regs_push", f"{emu}:extra_regs_slots", "--runs", "4")
    assert d.returncode == 1 and "[diff-divergence]" in d.stdout
    same = fv("diff", f"{emu}:extra_regs_push", f"{emu}:extra_regs_push", "--runs", "4")
    assert same.returncode == 0 and "no divergence" in same.stderr


def test_abi_reports_dirty_avx_upper_halves(tmp_path: Path) -> None:
    src = tmp_path / "avx.S"
    src.write_text(".text\n.globl dirty\n.type dirty,@function\ndirty:\n"
                   " vmovdqu (%rdi),%ymm0\n vmovdqu %ymm0,(%rsi)\n ret\n.size dirty,.-dirty\n"
                   ".globl clean\n.type clean,@function\nclean:\n vmovdqu (%rdi),%ymm0\n"
                   " vmovdqu %ymm0,(%rsi)\n vzeroupper\n ret\n.size clean,.-clean\n")
    dirty = json.loads(fv("abi", str(src), "--function", "dirty", "--args", "ptr:64,ptr:64",
                          "--runs", "1", "--format", "json").stdout)
    assert any(i["rule"] == "abi-violation" and "AVX upper halves dirty" in i["message"]
               and i["offset"] == 0x8 for i in dirty)
    clean = json.loads(fv("abi", str(src), "--function", "clean", "--args", "ptr:64,ptr:64",
                          "--runs", "1", "--format", "json").stdout)
    assert not any(i["rule"] == "abi-violation" for i in clean)


def test_every_rule_is_documented() -> None:
    from framevet.rules import all_rules

    doc = (ROOT / "docs" / "rules.md").read_text()
    rules = all_rules()
    assert len(rules) >= 80
    assert [r for r in rules if f"`{r}`" not in doc] == []
    for r in rules.values():
        assert r.what and r.why and r.fix, r.id


def test_linked_user_executable_and_shared_object_are_clean(tmp_path: Path) -> None:
    """CRT stubs without sizes, PLT entries and calls into the PLT are not findings."""
    import shutil
    import subprocess as sp

    src = tmp_path / "prog.c"
    src.write_text("#include <stdio.h>\n#include <string.h>\n"
                   "static int pick(int x) { switch (x) { case 0: return 3; case 1: return 7;"
                   " case 2: return 11; case 3: return 13; case 4: return 17; default: return 0;"
                   " } }\nint main(int argc, char **argv) { char buf[64];"
                   " strcpy(buf, argv[0]); printf(\"%s %d\\n\", buf, pick(argc)); return 0; }\n")
    cc = shutil.which("gcc") or "cc"
    exe, so = tmp_path / "prog", tmp_path / "libprog.so"
    sp.run([cc, "-O2", "-g", "-o", str(exe), str(src)], check=True)
    sp.run([cc, "-O2", "-fPIC", "-shared", "-o", str(so), str(src)], check=True)
    for image in (exe, so):
        r = fv("check", "--profile", "user", str(image))
        assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
