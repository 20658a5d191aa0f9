"""framevet.unwind.dwarf: .eh_frame/.debug_frame read into per-FDE rule tables.

The oracle is binutils: ``readelf -wF`` text, parsed by the bench script's own
parser (independent of framevet.unwind.dwarf), for relocatable objects (libc.a
members), a shared object linked here, and .debug_frame.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, assemble

from framevet.load import load_path
from framevet.load.elf import parse_elf
from framevet.unwind import dwarf
from framevet.unwind.cfarule import CFA_DEREF, CFA_REG, CfaRule

LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")


def libc_member(name: str, tmp: Path) -> Path:
    """One member of the system's libc.a (an oracle every test machine has)."""
    if not LIBC.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{LIBC} missing")
        pytest.skip(f"{LIBC} not installed")
    out = tmp / name
    if not out.exists():
        out.write_bytes(subprocess.run(["ar", "p", str(LIBC), name], check=True,
                                       capture_output=True).stdout)
    return out


def bench_module():
    spec = importlib.util.spec_from_file_location(
        "libc_cfa_agree", ROOT / "bench" / "libc_cfa_agree.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["libc_cfa_agree"] = mod
    spec.loader.exec_module(mod)
    return mod


def compare_with_readelf(path: Path) -> int:
    """Every readelf row of every FDE must equal dwarf.py's rule there; returns rows."""
    b = bench_module()
    text = subprocess.run(["readelf", "-SW", "-sW", "-rW", "-wF", str(path)],
                          capture_output=True, text=True, check=True).stdout
    view = b.parse_readelf(text)
    info = dwarf.read_cfi(load_path(str(path))[0].elf)
    assert not info.errors
    mine = {(f.frame_section, f.section, f.start): f for f in info.fdes}
    assert len(mine) == len(view.fdes)
    rows = 0
    for fde in view.fdes:
        loc = b.fde_section(view, fde)
        assert loc is not None
        m = mine[(fde.frame_section, *loc)]
        assert m.end - m.start == fde.hi - fde.lo
        for pc, cfa, regs in fde.rows:
            off = loc[1] + pc - fde.lo
            if off >= m.end:
                continue
            rows += 1
            rule = m.rule_at(off)
            if cfa == "exp":
                assert rule.kind == CFA_DEREF or rule.expr, (path, hex(off), rule.text())
            else:
                assert b.readelf_cfa(cfa) == b.fv_cfa(rule), (path, hex(off), rule.text())
            mine_regs = dict(rule.reg_rules())
            for r, t in regs.items():
                got = mine_regs.get(r)
                if t in ("u", "s"):
                    assert got in (None, "undefined"), (path, hex(off), r, t, got)
                elif t.startswith("c"):
                    assert got == f"cfa{t[1:]}", (path, hex(off), r, t, got)
                elif t == "exp":
                    assert got is not None and (got.startswith("at(") or got == "exp")
                else:                                  # "r9 (r9)": DW_CFA_register
                    assert got == t.split("(")[1].rstrip(")"), (path, hex(off), r, t, got)
    return rows


@pytest.mark.parametrize("member", [
    "vfprintf-internal.o",          # GCC, many FDEs, remember/restore state
    "memmove-avx-unaligned-erms.o",  # hand-written, section .text.avx
    "__longjmp.o",                  # DW_CFA_register, CFA on rdi
    "libc_sigaction.o",             # DW_CFA_def_cfa_expression, DW_CFA_expression
    "fputc.o",                      # zPLR CIE, a .text.unlikely cold part
    "dl-trampoline.o",              # three executable sections
])
def test_relocatable_matches_readelf(member: str, tmp_path: Path) -> None:
    assert compare_with_readelf(libc_member(member, tmp_path)) > 0


def test_shared_object_matches_readelf(tmp_path: Path) -> None:
    obj = assemble(FIXTURES / "cfi-mismatch" / "ok-gcc-switch.S")
    so = tmp_path / "sw.so"
    subprocess.run(["gcc", "-shared", "-nostdlib", "-o", str(so), str(obj)], check=True)
    assert compare_with_readelf(so) > 0
    elf = parse_elf(so.read_bytes(), str(so))
    fdes = dwarf.read_cfi(elf).fdes
    text = elf.section(".text")
    assert text is not None
    # linked: located by address, and covering the function's symbol
    sw = next(s for s in elf.symbols if s.name == "sw")
    assert any(f.section == text.index and f.start == sw.offset for f in fdes)


def test_debug_frame_of_relocatable(tmp_path: Path) -> None:
    src = tmp_path / "df.S"
    src.write_text(
        "\t.cfi_sections .debug_frame\n\t.text\n\t.globl f\n\t.type f,@function\n"
        "f:\n\t.cfi_startproc\n\tpush %rbx\n\t.cfi_adjust_cfa_offset 8\n"
        "\t.cfi_rel_offset %rbx, 0\n\tpop %rbx\n\t.cfi_adjust_cfa_offset -8\n"
        "\t.cfi_restore %rbx\n\tret\n\t.cfi_endproc\n\t.size f,.-f\n")
    obj = assemble(src)
    elf = parse_elf(obj.read_bytes(), str(obj))
    assert elf.section(".eh_frame") is None
    info = dwarf.read_cfi(elf)
    assert [f.frame_section for f in info.fdes] == [".debug_frame"]
    rows = info.fdes[0].rows
    assert [(o, r.text()) for o, r in rows] == [
        (0, "cfa=rsp+8 ra=cfa-8"), (1, "cfa=rsp+16 rbx=cfa-16 ra=cfa-8"),
        (2, "cfa=rsp+8 ra=cfa-8")]
    assert compare_with_readelf(obj) == 3


def test_expressions_and_registers() -> None:
    """DRAP: CFA = *(rbp-8) and rbx saved at rbp-16, decoded from .cfi_escape."""
    obj = load_path(str(FIXTURES / "cfi-mismatch" / "gcc-drap.S"))[0]
    fde = dwarf.read_cfi(obj.elf).fdes[0]
    texts = [r.text() for _, r in fde.rows]
    assert "cfa=r10+0 ra=cfa-8" in texts
    assert "cfa=[rbp-8] rbx=at(rbp-16) rbp=at(rbp+0) ra=cfa-8" in texts
    deref = next(r for _, r in fde.rows if r.kind == CFA_DEREF)
    assert (deref.reg, deref.off) == (6, -8)


def test_lsda_landing_pads(tmp_path: Path) -> None:
    elf = load_path(str(libc_member("fputc.o", tmp_path)))[0].elf
    fdes = dwarf.read_cfi(elf).fdes
    hot = next(f for f in fdes if f.section_name == ".text")
    assert hot.lsda is not None
    sites = dwarf.call_sites(elf, hot)
    # two calls that may throw, both landing at the cleanup that jumps to fputc.cold
    assert sites == [(0xE5, 0xEA, 0x12A), (0x120, 0x125, 0x12A)]


def test_rule_text_format() -> None:
    r = CfaRule(CFA_REG, 7, 24, ((3, -24), (6, -16), (16, -8)), ((12, "r9"),))
    assert r.text() == "cfa=rsp+24 rbx=cfa-24 rbp=cfa-16 r12=r9 ra=cfa-8"
