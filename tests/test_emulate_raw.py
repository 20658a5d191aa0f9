"""Emulation: raw stubs at a base address, generated as Xen's io_emul_stub_setup() does."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from framevet.emulate import RawTarget, RunStats, diff, parse_symbols, run_raw
from framevet.load import LoadedObject, load_path
from framevet.load.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "emulate"
STUB_VA = 0xFFFF82D07FFF1040          # this_stubs->addr + STUB_BUF_SIZE / 2
HELPERS = 0xFFFF82D040200000          # Xen .text
PROLOGUE = bytes.fromhex("53 55 4154 4155 4156 4157 57")
EPILOGUE = bytes.fromhex("5f 415f 415e 415d 415c 5d 5b c3")
IO = bytes([0x90, 0xE4, 0x71])        # nop; in $0x71, %al


def call(at: int, target: int) -> bytes:
    """APPEND_CALL: e8 + (int32_t)disp, truncating like the C would."""
    disp = (target - (at + 5)) & 0xFFFF_FFFF
    return b"\xe8" + struct.pack("<I", disp)


def old_stub(helper: int = HELPERS) -> bytes:
    return call(STUB_VA, helper) + IO + b"\xc3"


def new_stub() -> bytes:
    p = PROLOGUE
    p += call(STUB_VA + len(p), HELPERS)
    p += IO
    p += call(STUB_VA + len(p), HELPERS + 0x40)
    return p + EPILOGUE


@pytest.fixture(scope="module")
def rop() -> list[LoadedObject]:
    return load_path(str(FIX / "gpr-switch-rop.S"))


@pytest.fixture(scope="module")
def callret() -> list[LoadedObject]:
    return load_path(str(FIX / "gpr-switch-callret.S"))


def test_old_generated_stub_is_flagged_for_its_returns(rop: list[LoadedObject]) -> None:
    stats = RunStats()
    found = run_raw(old_stub(), STUB_VA, symbols={"host_to_guest_gpr_switch": HELPERS},
                    link_with=rop, args_spec="ptr:256:rand", runs=4, max_size=64,
                    path="old.bin", stats=stats)
    assert stats.returned == 4
    ret = [f for f in found if f.symbol == "stub" and f.rule == "abi-violation"]
    assert [(f.offset, f.address) for f in ret] == [(8, STUB_VA + 8)]
    assert "jumps to guest_to_host_gpr_switch+0x0" in ret[0].message
    assert any(f.symbol == "stub" and f.rule == "unwind-failure" for f in found)
    assert not any(f.rule in ("stub-size", "rel32-reach") for f in found)


def test_new_generated_stub_is_clean_but_too_big_for_32_bytes(
        callret: list[LoadedObject]) -> None:
    syms = parse_symbols([f"load_guest_gprs={HELPERS:#x}",
                          f"save_guest_gprs={HELPERS + 0x40:#x}"])
    found = run_raw(new_stub(), STUB_VA, symbols=syms, link_with=callret,
                    args_spec="ptr:256:rand", runs=4, max_size=32, path="new.bin")
    assert [(f.rule, f.offset) for f in found] == [("stub-size", 32)]
    assert "stub is 36 bytes, larger than its 32-byte buffer" in found[0].message
    assert run_raw(new_stub(), STUB_VA, symbols=syms, link_with=callret,
                   args_spec="ptr:256:rand", runs=2, max_size=64) == []


def test_truncated_rel32_is_reported() -> None:
    far = STUB_VA + (3 << 30)
    found = run_raw(old_stub(far), STUB_VA, symbols={"host_to_guest_gpr_switch": far},
                    args_spec="ptr:256:rand", runs=1)
    reach = [f for f in found if f.rule == "rel32-reach"]
    assert len(reach) == 1 and reach[0].offset == 0 and reach[0].severity == "error"
    assert "beyond the ±2 GiB of rel32" in reach[0].message
    assert any("jumps to unmapped address" in f.message for f in found)


def test_undeclared_call_target_is_a_warning_and_an_unmapped_jump() -> None:
    found = run_raw(old_stub(), STUB_VA, runs=1)
    assert any(f.rule == "rel32-reach" and f.severity == "warning" for f in found)
    assert any(f.rule == "abi-violation" and "jumps to unmapped" in f.message for f in found)


def test_declared_symbols_without_code_are_external_stubs() -> None:
    found = run_raw(old_stub(), STUB_VA, symbols={"host_to_guest_gpr_switch": HELPERS},
                    runs=2)
    assert found == []       # the stub returns normally: the external clobbers caller-saved


def test_raw_diff_old_vs_new_generated_stub(rop: list[LoadedObject],
                                            callret: list[LoadedObject]) -> None:
    a = RawTarget("old.bin", STUB_VA, code=old_stub(),
                  symbols={"host_to_guest_gpr_switch": HELPERS}, link_with=rop)
    b = RawTarget("new.bin", STUB_VA, code=new_stub(),
                  symbols={"load_guest_gprs": HELPERS, "save_guest_gprs": HELPERS + 0x40},
                  link_with=callret)
    assert diff(a, b, runs=8, args_spec="ptr:256:rand") == []


def test_raw_bad_input(rop: list[LoadedObject]) -> None:
    with pytest.raises(InputError):
        run_raw(old_stub(), STUB_VA, entry=100)
    with pytest.raises(InputError):
        run_raw(old_stub(), STUB_VA, symbols={"x": STUB_VA + 2})
    with pytest.raises(InputError):
        run_raw(b"", STUB_VA)
    with pytest.raises(InputError):
        parse_symbols(["nothing"])
    with pytest.raises(InputError, match="overlapping"):
        run_raw(old_stub(), STUB_VA, link_with=rop,
                symbols={"guest_to_host_gpr_switch": STUB_VA + 8})
    with pytest.raises(InputError, match="defined by a linked object"):
        run_raw(old_stub(), STUB_VA, link_with=rop,
                symbols={"host_to_guest_gpr_switch": HELPERS,
                         "guest_to_host_gpr_switch": HELPERS})
