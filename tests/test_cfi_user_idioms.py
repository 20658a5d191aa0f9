"""Profile user: hand-written assembly idioms the stack model follows, each on a
small assembled fixture with correct CFI (``tests/fixtures/cfi-mismatch/ok-*.S``):
framevet's own table must give the CFA the CFI gives, and ``framevet cfi`` must
report nothing."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from framevet.load import load_path
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import check_cfi

MISMATCH = FIXTURES / "cfi-mismatch"

IDIOMS = ["ok-built-frame.S", "ok-perlasm-copy.S", "ok-switch-mem-guard.S",
          "ok-xchg-stack-switch.S", "ok-slot-through-lea.S", "ok-rsp-copy-variable-alloc.S",
          "ok-call-second-entry.S"]


def rows(name: str) -> list[tuple[int, str]]:
    (obj,) = load_path(str(MISMATCH / name))
    return [(r.offset, r.rule.text()) for r in cfa_table(obj.elf).rows[".text"]]


@pytest.mark.parametrize("name", IDIOMS)
def test_idiom_cfi_is_clean(name: str) -> None:
    (obj,) = load_path(str(MISMATCH / name))
    assert check_cfi(obj) == []


def test_frame_built_above_a_caller_block() -> None:
    """libffi's ffi_call_unix64: return address and rbp stored at 24/16(%rax),
    ``mov %rax,%rbp``: CFA rbp+32 through the stack switch and the call, back to
    rsp+8 when ``mov 16(%rbp),%rbp`` reloads rbp (``lea 24(%rbp),%rsp`` before)."""
    assert rows("ok-built-frame.S") == [
        (0, "cfa=rsp+8 ra=cfa-8"),
        (0x1a, "cfa=rbp+32 rbp=cfa-16 ra=cfa-8"),      # after mov %rax,%rbp
        (0x43, "cfa=rsp+8 ra=cfa-8"),                  # after mov 16(%rbp),%rbp
        (0x47, "cfa=rbp+32 rbp=cfa-16 ra=cfa-8"),      # the sse path
    ]


def test_perlasm_copies_of_rsp() -> None:
    """``lea (%rsp),%rax; ...; mov %rax,%rbp``: the CFA follows the copy into rbp and
    survives the realignment and %rax's reuse; ``mov %rbp,%rax`` before the reload
    of rbp through %rax hands it back to %rax; the restores through %rax count."""
    got = rows("ok-perlasm-copy.S")
    assert (9, "cfa=rbp+8 rbx=cfa-16 rbp=cfa-24 ra=cfa-8") in got
    assert (0x25, "cfa=rax+8 rbx=cfa-16 rbp=cfa-24 ra=cfa-8") in got
    assert got[-3:] == [(0x29, "cfa=rax+8 rbx=cfa-16 ra=cfa-8"), (0x2d, "cfa=rax+8 ra=cfa-8"),
                        (0x30, "cfa=rsp+8 ra=cfa-8")]
    assert all("undefined" not in t for _, t in got)


def test_switch_guarded_on_memory() -> None:
    """A stale ``cmp $1,%eax`` before ``movzwl 10(%rdi),%eax`` does not bound the
    table; ``cmpw $3,10(%rdi)`` does: every case is reached."""
    (obj,) = load_path(str(MISMATCH / "ok-switch-mem-guard.S"))
    table = cfa_table(obj.elf)
    prog = table.prog
    assert prog.jump_table_insn
    (g,) = prog.jump_table_insn
    assert len(prog.alts[g]) == 4
    assert all("undefined" not in r.rule.text() for r in table.rows[".text"])


def test_xchg_stack_switch() -> None:
    """``xchg %rsp,%r15``: the CFA moves to %r15 (the old rsp), then to the slot it is
    stored in, then to %rsi that reloads it; the same through rbp."""
    got = rows("ok-xchg-stack-switch.S")
    assert (0x12, "cfa=r15+24 rbx=cfa-16 r15=cfa-24 ra=cfa-8") in got
    assert (0x17, "cfa=[rsp+16]+24 rbx=cfa-16 r15=cfa-24 ra=cfa-8") in got
    assert (0x27, "cfa=rsi+24 rbx=cfa-16 r15=cfa-24 ra=cfa-8") in got
    assert (0x40, "cfa=rbp+16 rbp=cfa-16 ra=cfa-8") in got
    assert (0x45, "cfa=[rsp+16]+16 rbp=cfa-16 ra=cfa-8") in got
    assert all("undefined" not in t for _, t in got)


def test_slot_stored_through_lea_of_rsp() -> None:
    """``lea 128(%rsp),%r10; mov %rax,32(%r10)`` with the CFA on %rax: *(rsp+160)+8."""
    got = rows("ok-slot-through-lea.S")
    assert (0x1e, "cfa=[rsp+160]+8 rbx=cfa-16 ra=cfa-8") in got
    assert got[-1] == (0x37, "cfa=rsp+8 ra=cfa-8")
    assert all("undefined" not in t for _, t in got)


def test_variable_allocation_below_an_rsp_copy() -> None:
    """``mov %rsp,%rbp`` (no classic frame), ``sub %rax,%rsp``: the CFA goes to rbp,
    not lost; ``lea 88(%rbp),%rax`` before rbp's reload through %rax hands it on."""
    got = rows("ok-rsp-copy-variable-alloc.S")
    assert (0x1a, "cfa=rbp+96 rbx=cfa-24 rbp=cfa-16 ra=cfa-8") in got
    assert (0x26, "cfa=rax+8 rbx=cfa-24 rbp=cfa-16 ra=cfa-8") in got
    assert got[-1] == (0x31, "cfa=rsp+8 ra=cfa-8")
    assert all("undefined" not in t for _, t in got)


def test_call_to_a_second_entry_keeps_unwritten_registers() -> None:
    """``call .Lenter`` into a local helper that never writes %r11: the CFA stays
    on %r11 across the call (the ABI's clobber set would lose it)."""
    got = rows("ok-call-second-entry.S")
    assert got[-3:] == [(0x12, "cfa=r11+8 rbp=cfa-16 ra=cfa-8"), (0x2f, "cfa=r11+8 ra=cfa-8"),
                        (0x32, "cfa=rsp+8 ra=cfa-8")]
