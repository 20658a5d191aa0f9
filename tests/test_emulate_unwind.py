"""Emulation: unwinding one frame at every instruction, with both tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from framevet.emulate import RunStats, run_abi
from framevet.load import load_path
from framevet.load.archive import iter_members
from framevet.load.elf import parse_elf
from framevet.load.object import LoadedObject

FIX = Path(__file__).parent / "fixtures" / "emulate"
ARGS = "ptr:64:rand,int:0..64"
FRAMEVET, DWARF = "framevet's CFA table", "DWARF CFI (.eh_frame)"
LIBC_A = "/usr/lib/x86_64-linux-gnu/libc.a"


def test_correct_cfi_unwinds_at_every_instruction() -> None:
    stats = RunStats()
    assert run_abi(load_path(str(FIX / "cfi-frame.S")), "sum_bytes", ARGS, runs=6,
                   stats=stats) == []
    u = stats.unwind
    assert u.steps > 100 and u.checked[FRAMEVET] == u.checked[DWARF] == u.steps


@pytest.mark.parametrize(("marker", "directive", "words"), [
    ("after_frame", ".cfi_def_cfa_offset 24", "computes CFA"),
    ("after_rbx", ".cfi_offset %rbx, -40", "recovers rbx"),
    ("after_r12", ".cfi_def_cfa %rsp, 16", "computes CFA"),
])
def test_injected_wrong_cfi_fails_at_exactly_that_instruction(
        tmp_path: Path, marker: str, directive: str, words: str) -> None:
    src = (FIX / "cfi-frame.S").read_text()
    assert f"/* INJECT {marker} */" in src
    bad = tmp_path / "cfi-frame.S"
    bad.write_text(src.replace(f"/* INJECT {marker} */", directive))
    obj = load_path(str(bad))
    syms = {s.name: s.offset for s in obj[0].elf.symbols if s.name}
    found = run_abi(obj, "sum_bytes", ARGS, runs=4)
    assert [f.rule for f in found] == ["unwind-failure"], [f.text() for f in found]
    f = found[0]
    assert f.symbol == "sum_bytes" and f.offset == syms[marker] - syms["sum_bytes"]
    assert f.message.startswith(f"unwinding with {DWARF} fails here")
    assert words in f.message and f"{FRAMEVET} unwinds correctly here" in f.message


def test_return_oriented_gpr_switch_is_flagged_for_its_returns() -> None:
    found = run_abi(load_path(str(FIX / "gpr-switch-rop.S")), "ioemul_stub", "ptr:256:rand",
                    runs=4)
    text = "\n".join(f.text() for f in found)
    by = {(f.symbol, f.offset, f.rule) for f in found}
    assert ("ioemul_stub", 8, "abi-violation") in by            # ret into guest_to_host
    assert "return-oriented control flow" in text
    assert ("host_to_guest_gpr_switch", 0x5b, "abi-violation") in by   # ret, 64 bytes left
    assert ("host_to_guest_gpr_switch", 4, "abi-violation") in by      # movq %rdi,(%rsp)
    # unwinding fails right after the return-address slot is overwritten
    assert ("host_to_guest_gpr_switch", 8, "unwind-failure") in by
    assert any(f.symbol == "guest_to_host_gpr_switch" and f.rule == "unwind-failure"
               for f in found)


def test_call_ret_rewrite_is_clean() -> None:
    stats = RunStats()
    assert run_abi(load_path(str(FIX / "gpr-switch-callret.S")), "ioemul_stub",
                   "ptr:256:rand", runs=4, stats=stats) == []
    assert stats.unwind.checked[FRAMEVET] == stats.instructions


def _libc() -> dict[str, LoadedObject]:
    wanted = {"strlen-sse2.o", "memmove-sse2-unaligned-erms.o", "strcmp-sse2.o",
              "memset-sse2-unaligned-erms.o", "strchr-sse2.o"}
    with open(LIBC_A, "rb") as fh:
        data = fh.read()
    return {n: LoadedObject(parse_elf(b, f"libc.a({n})"), f"libc.a({n})")
            for n, b in iter_members(data, LIBC_A) if n in wanted}


@pytest.mark.skipif(not os.path.exists(LIBC_A), reason="no libc.a")
@pytest.mark.parametrize(("member", "function", "args"), [
    ("strlen-sse2.o", "__strlen_sse2", "ptr:300:str"),
    ("strchr-sse2.o", "__strchr_sse2", "ptr:300:str,int:0..255"),
    ("strcmp-sse2.o", "__strcmp_sse2", "ptr:300:str,ptr:300:copy"),
    ("memmove-sse2-unaligned-erms.o", "__memmove_sse2_unaligned_erms",
     "ptr:5000,ptr:5000:rand,long:0..5000"),
    ("memset-sse2-unaligned-erms.o", "__memset_sse2_unaligned_erms",
     "ptr:5000,int:0..255,long:0..5000"),
])
def test_libc_string_functions_unwind_at_every_step(member: str, function: str,
                                                    args: str) -> None:
    from framevet.emulate.survey import TUNABLES

    objs = _libc()
    stats = RunStats()
    found = run_abi(objs[member], function, args, runs=6, values=TUNABLES, stats=stats)
    assert found == [], [f.text() for f in found]
    u = stats.unwind
    assert stats.returned == 6 and u.steps > 50
    assert u.checked[FRAMEVET] == u.checked[DWARF] == u.steps
