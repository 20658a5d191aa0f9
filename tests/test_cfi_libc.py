"""End to end on real glibc 2.36 objects (the system's libc.a): framevet's own CFA
table against the shipped CFI, and what ``check_cfi`` reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dwarf import libc_member

from framevet.decode import insn as d
from framevet.load import load_path
from framevet.unwind import dwarf
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import check_cfi


def cfa_agreement(path: Path) -> tuple[int, int, int]:
    """(agreeing, total, unreachable) instructions inside FDEs, CFA rule only;
    ``unreachable``: disagreements at instructions no path reaches (dead code)."""
    (obj,) = load_path(str(path))
    table = cfa_table(obj.elf)
    prog = table.prog
    agree = total = dead = 0
    for fde in dwarf.read_cfi(obj.elf).fdes:
        ds = prog.secmap[fde.section]
        for i, off in enumerate(ds.off):
            if fde.covers(off):
                g = prog.base[ds.index] + i
                total += 1
                same = fde.rule_at(off).same_cfa(table.rule_at_gid(g))
                agree += same
                dead += not same and table.result.cfi[g] is None
    return agree, total, dead


@pytest.mark.parametrize("member", [
    "vfprintf-internal.o",    # PIC switch tables and computed-goto tables (step0_jumps)
    "vfscanf-internal.o",     # jump tables whose base lives in a callee-saved register
    "strcasecmp_l-sse4_2.o",  # hand-written: lea table(%rip); movslq; lea; jmp *%r10
    "memmove-ssse3.o",        # computed jumps into 64-byte blocks, no table
    "fputc.o",                # exception landing pad, fputc.cold
    "pthread_cancel.o",       # noreturn __pthread_unwind
    "getcwd.o",               # syscall returns
    "wordexp.o",              # a table base reloaded by a lea in the prologue
])
def test_cfa_agrees_everywhere(member: str, tmp_path: Path) -> None:
    """Everywhere the code can reach (strcasecmp_l-sse4_2 has 7 dead instructions)."""
    agree, total, dead = cfa_agreement(libc_member(member, tmp_path))
    assert total > 0 and agree + dead == total, (member, total - agree)
    assert dead == (7 if member == "strcasecmp_l-sse4_2.o" else 0)


def test_trampolines_realign_on_rbx(tmp_path: Path) -> None:
    """_dl_runtime_resolve/_profile: entered with two extra words (PLT0), realigned
    through %rbx.  Apart from 6 instructions right after ``mov %rbx,%rsp``, where
    rsp == rbx and the CFI moves the CFA back one instruction later, the rules
    match; check_cfi knows both spellings and reports nothing."""
    path = libc_member("dl-trampoline.o", tmp_path)
    agree, total, dead = cfa_agreement(path)
    assert (total - agree, dead) == (6, 0)
    assert check_cfi(load_path(str(path))[0]) == []


def test_jump_tables_found(tmp_path: Path) -> None:
    (obj,) = load_path(str(libc_member("vfprintf-internal.o", tmp_path)))
    prog = cfa_table(obj.elf).prog
    dyn = [g for g, k in enumerate(prog.kind) if k == d.JUMP_DYNAMIC]
    assert dyn and all(g in prog.jump_table_insn for g in dyn)


@pytest.mark.parametrize("member", ["vfprintf-internal.o", "fputc.o", "memmove-ssse3.o",
                                    "strcmp-sse2.o", "dl-trampoline.o", "gconv_open.o"])
def test_glibc_cfi_is_clean(member: str, tmp_path: Path) -> None:
    """GCC's frame-pointer prologues defer .cfi_offset, epilogues keep stale slots:
    neither is an error, and these objects have no real one."""
    fs = check_cfi(load_path(str(libc_member(member, tmp_path)))[0])
    assert fs == [], "\n".join(f.text() for f in fs)


def test_gmp_loop_without_cfi(tmp_path: Path) -> None:
    """glibc's copy of GMP's mpn_addmul_1 pushes rbx and rbp with no CFI at all."""
    fs = check_cfi(load_path(str(libc_member("addmul_1.o", tmp_path)))[0])
    assert [(f.rule, f.location.text() if f.location else "") for f in fs] == [
        ("cfi-mismatch", "__mpn_addmul_1+0x1"), ("cfi-mismatch", "__mpn_addmul_1+0x2"),
        ("cfi-mismatch", "__mpn_addmul_1+0xe9")]
    assert "CFI says cfa=rsp+8 rbx=same rbp=same but the code has cfa=rsp+24 rbx=cfa-16 " \
        "rbp=cfa-24 for 66 instructions: `push %rbp` at __mpn_addmul_1+0x1 moves the CFA " \
        "from rsp+16 to rsp+24" in fs[1].message
    assert fs[1].details["insns"] == 66


def test_clone_parent_path_lacks_cfi(tmp_path: Path) -> None:
    fs = check_cfi(load_path(str(libc_member("clone.o", tmp_path)))[0])
    assert [(f.rule, f.location.text() if f.location else "") for f in fs] == [
        ("cfi-missing", "__clone+0x30")]
