"""Emulation: `diff` runs two versions on the same states and reports the first divergence."""

from __future__ import annotations

from pathlib import Path

import pytest

from framevet.emulate import FunctionTarget, RunStats, diff, parse_target
from framevet.load.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "emulate"
SAVE = str(FIX / "save-extra-regs.S")
ROP, CALLRET = str(FIX / "gpr-switch-rop.S"), str(FIX / "gpr-switch-callret.S")


def test_seed002_diff_separates_push_from_slot_saving() -> None:
    found = diff(f"{SAVE}:extra_regs_push", f"{SAVE}:extra_regs_slots", runs=8)
    assert len(found) == 1
    f = found[0]
    assert f.rule == "diff-divergence" and f.severity == "warning"
    assert (f.symbol, f.offset) == ("extra_regs_slots", 0)      # movq %r15, 8(%rsp)
    assert "memory written differs in caller's frame at entry rsp+0x8" in f.message
    assert "A leaves" in f.message and "(untouched)" in f.message
    assert f.trace[0].startswith("A = ") and any(t.startswith("B: ") for t in f.trace)


def test_seed001_rewrite_is_equivalent_on_the_abi_registers_and_memory() -> None:
    stats = RunStats()
    assert diff(f"{ROP}:ioemul_stub", f"{CALLRET}:ioemul_stub", runs=16,
                args_spec="ptr:256:rand", stats=stats) == []
    assert stats.runs == 16 and stats.instructions > 1000


def test_seed001_rewrite_differs_in_caller_saved_rcx() -> None:
    found = diff(f"{ROP}:ioemul_stub", f"{CALLRET}:ioemul_stub", runs=4,
                 args_spec="ptr:256:rand", compare="all")
    assert len(found) == 1
    f = found[0]
    assert "rcx differs at return" in f.message
    assert "guest_to_host_gpr_switch+0x4a" in f.message       # A: popq %rcx
    assert (f.symbol, f.offset) == ("load_guest_gprs", 0x33)  # B: movq UREGS_rcx(%rdi),%rcx


def test_identical_versions_never_diverge() -> None:
    assert diff(f"{SAVE}:extra_regs_push", FunctionTarget(SAVE, "extra_regs_push"),
                runs=4, compare="all") == []


def test_diff_reports_different_endings(tmp_path: Path) -> None:
    src = tmp_path / "v.S"
    src.write_text("""
	.text
	.globl good, bad
	.type good, @function
	.type bad, @function
good:	movq	(%rdi), %rax
	ret
	.size good, .-good
bad:	movq	64(%rdi), %rax
	ret
	.size bad, .-bad
""")
    found = diff(f"{src}:good", f"{src}:bad", runs=2, args_spec="ptr:64:rand")
    assert len(found) == 1 and "A returns; B reads 8 bytes" in found[0].message
    assert (found[0].symbol, found[0].offset) == ("bad", 0)


def test_diff_bad_input() -> None:
    with pytest.raises(InputError):
        parse_target("no-colon")
    with pytest.raises(InputError):
        diff(f"{SAVE}:extra_regs_push", f"{SAVE}:missing", runs=1)
    with pytest.raises(InputError):
        diff(f"{SAVE}:extra_regs_push", f"{SAVE}:extra_regs_push", compare=["xmm9"])
