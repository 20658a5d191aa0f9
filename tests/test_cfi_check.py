"""framevet.unwind.cficheck on assembled fixtures: deliberately wrong CFI is reported at
the right instruction with the right explanation and a fix that works; correct
CFI in GCC's and hand-written assembly's styles yields nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import FIXTURES

from framevet.decode import insn as d
from framevet.load import load_path
from framevet.unwind.cfarule import CFA_UNDEFINED
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import CfiFinding, check_cfi
from framevet.unwind.cfifix import apply_fixes

MISMATCH = FIXTURES / "cfi-mismatch"
MISSING = FIXTURES / "cfi-missing"


def findings(path: Path) -> list[CfiFinding]:
    (obj,) = load_path(str(path))
    return check_cfi(obj)


def summary(fs: list[CfiFinding]) -> list[tuple[str, str, int | None]]:
    return [(f.rule, f"{f.symbol}+0x{f.offset:x}", f.source[1] if f.source else None)
            for f in fs]


# -- cfi-mismatch ------------------------------------------------------------------

EXPECTED = {
    "push-no-cfi.S": [
        ("f+0x1", "CFI says cfa=rsp+8 but the code has cfa=rsp+16",
         "`push %rbx` at f+0x0 moves the CFA from rsp+8 to rsp+16",
         [".cfi_def_cfa_offset 16"]),
        # one finding for the wrong CFA; rbx and rbp, overwritten inside it, join it
        ("f+0x2", "CFI says cfa=rsp+8 rbx=same rbp=same but the code has cfa=rsp+24 "
         "rbx=cfa-16 rbp=cfa-24 for 5 instructions",
         "`push %rbp` at f+0x1 moves the CFA from rsp+16 to rsp+24",
         [".cfi_def_cfa_offset 24", ".cfi_offset %rbx, -16", ".cfi_offset %rbp, -24"]),
        ("f+0xf", "CFI says cfa=rsp+8 rbx=same but the code has cfa=rsp+16 rbx=cfa-16",
         "`pop %rbp` at f+0xe", None),
    ],
    "wrong-offset.S": [
        ("g+0x1", "CFI says rbx=cfa-24 but the code has rbx=cfa-16",
         "`push %rbx` at g+0x0 saves rbx at cfa-16", [".cfi_offset %rbx, -16"]),
        ("g+0x3", "CFI says cfa=rsp+16 rbx=cfa-24 but the code has cfa=rsp+24 rbx=cfa-16",
         "`push %r12` at g+0x1 moves the CFA from rsp+16 to rsp+24",
         [".cfi_def_cfa_offset 24", ".cfi_offset %rbx, -16"]),
        ("g+0x16", "CFI says rbx=cfa-24 but the code has rbx=cfa-16 for 2 instructions",
         "as since g+0x1", None),
    ],
    "early-restore.S": [
        ("k+0x6", "CFI says rbx=same but the code has rbx=cfa-16",
         "`mov $1,%ebx` at k+0x1 overwrites rbx", [".cfi_offset %rbx, -16"]),
        ("k+0x14", "CFI says cfa=rsp+16 but the code has cfa=rsp+32",
         "the CFI changes here, but `mov (%rsp),%rax` at k+0x10 does not change the stack",
         [".cfi_def_cfa_offset 32"]),
    ],
    "fp-no-register.S": [
        ("fp+0x8", "CFI says cfa=rsp+16 but the code has cfa=rbp+16",
         "`sub $0x20,%rsp` at fp+0x4", [".cfi_def_cfa_register %rbp"]),
    ],
    "wrong-register.S": [
        ("rr+0x3", "CFI says rbx=r9 but the code has rbx=r8",
         "`mov %rbx,%r8` at rr+0x0 copies rbx to r8", [".cfi_register %rbx, %r8"]),
    ],
    "gcc-drap.S": [
        ("f+0x4b", "CFI says rbx=at(rbp-16) rbp=at(rbp+0) but the code has rbx=same "
         "rbp=same for 2 instructions", "`pop %rbp` at f+0x4a restores rbp",
         [".cfi_restore %rbx", ".cfi_restore %rbp"]),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mismatch_reported_where_and_why(name: str) -> None:
    fs = findings(MISMATCH / name)
    assert [f.rule for f in fs] == ["cfi-mismatch"] * len(EXPECTED[name]), \
        "\n".join(f.text() for f in fs)
    for f, (where, says, why, fix) in zip(fs, EXPECTED[name], strict=True):
        assert f.location is not None and f.location.text() == where
        assert f.severity == "error"
        assert says in f.message, f.message
        assert why in f.message, f.message
        assert f.source is not None and f.source[0].endswith(name)
        if fix is not None:
            assert f.fix == fix
            assert f.details["fix"] == fix


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fix_makes_the_cfi_right(name: str, tmp_path: Path) -> None:
    src = tmp_path / name
    shutil.copy(MISMATCH / name, src)
    fs = findings(src)
    assert fs
    src.write_text(apply_fixes(src.read_text(), str(src), fs))
    assert [f for f in findings(src) if f.rule == "cfi-mismatch"] == []


@pytest.mark.parametrize("name", ["ok-gcc-switch.S", "ok-hand.S"])
def test_correct_cfi_is_clean(name: str) -> None:
    assert findings(MISMATCH / name) == []


def test_user_forms_are_followed() -> None:
    """Jump-table cases, the cold part, `rep ret`, realignment and a size-less
    function all get a defined CFA from framevet itself."""
    for name in ("ok-gcc-switch.S", "ok-hand.S", "gcc-drap.S"):
        (obj,) = load_path(str(MISMATCH / name))
        table = cfa_table(obj.elf)
        prog = table.prog
        assert prog.jump_table_insn or name != "ok-gcc-switch.S"
        for g in range(len(prog.off)):
            if prog.func[g] >= 0 and prog.kind[g] not in (d.NOP, d.TRAP):
                assert table.rule_at_gid(g).kind != CFA_UNDEFINED, \
                    (name, prog.section_name(prog.sec_of[g]), hex(prog.off[g]))
    (obj,) = load_path(str(MISMATCH / "ok-gcc-switch.S"))
    rows = {(r.section, r.offset): r.rule.text() for rs in cfa_table(obj.elf).rows.values()
            for r in rs}
    assert rows[(".text.unlikely", 0)] == "cfa=rsp+32 rbx=cfa-32 rbp=cfa-24 r12=cfa-16 ra=cfa-8"
    (obj,) = load_path(str(MISMATCH / "ok-hand.S"))
    texts = [r.rule.text() for r in cfa_table(obj.elf).rows[".text"]]
    assert "cfa=rbx+16 rbx=cfa-16 ra=cfa-8" in texts          # realign on rbx
    assert "cfa=rsp+16 r13=cfa-16 ra=cfa-8" in texts          # the size-less function


def test_finding_fields() -> None:
    (f, *_) = findings(MISMATCH / "push-no-cfi.S")
    assert (f.file, f.section, f.symbol, f.offset, f.rule, f.severity) == (
        str(MISMATCH / "push-no-cfi.S"), ".text", "f", 1, "cfi-mismatch", "error")
    d = asdict(f)
    assert d["fix"] == [".cfi_def_cfa_offset 16"]
    assert d["details"]["cfi"].startswith("cfa=rsp+8") and d["details"]["insns"] == 1
    assert "fix, before" in f.text()


# -- cfi-missing -------------------------------------------------------------------

def test_function_without_fde() -> None:
    fs = findings(MISSING / "no-cfi.S")
    assert summary(fs) == [("cfi-missing", "nocfi+0x0", 7)]
    assert "nocfi() has no CFI" in fs[0].message and fs[0].severity == "warning"


def test_function_partly_covered() -> None:
    fs = findings(MISSING / "partial.S")
    assert summary(fs) == [("cfi-missing", "part+0x4", 13)]
    assert "3 instructions of part() are outside its FDE" in fs[0].message


def test_fde_covering_no_function() -> None:
    fs = findings(MISSING / "stray-fde.S")
    assert len(fs) == 1 and fs[0].rule == "cfi-missing"
    assert "covers .text+0x4..0x7, which holds no function" in fs[0].message


def test_stripped_shared_object(tmp_path: Path) -> None:
    """A linked, stripped image: the PIC switch table is read from .rodata, and the
    cold part -- no symbol left, only its FDE, never called -- is walked as the
    continuation of the function that jumps to it."""
    import subprocess

    from conftest import assemble

    from framevet.unwind import dwarf
    so = tmp_path / "sw.so"
    subprocess.run(["gcc", "-shared", "-nostdlib", "-o", str(so),
                    str(assemble(MISMATCH / "ok-gcc-switch.S"))], check=True)
    subprocess.run(["strip", "--strip-all", str(so)], check=True)
    (obj,) = load_path(str(so))
    assert obj.elf.section(".symtab") is None
    assert check_cfi(obj) == []
    table = cfa_table(obj.elf)
    assert table.prog.jump_table_insn
    for fde in dwarf.read_cfi(obj.elf).fdes:
        if fde.section_name.startswith(".plt"):
            continue                    # PLT stubs: the CFI is an expression of rip
        for off, rule in fde.rows:
            assert table.at(fde.section, off).same_cfa(rule), (fde.section_name, hex(off))
