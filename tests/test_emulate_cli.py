"""Emulation behind `framevet abi` / `framevet diff` (framevet.cli.emulation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from framevet.cli.emulation import parse_side, read_sidecar, run_abi_command, run_diff_command
from framevet.load.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "emulate"
SAVE = str(FIX / "save-extra-regs.S")
STUB_VA, HELPERS = 0xFFFF82D07FFF1040, 0xFFFF82D040200000


def ns(**kw: object) -> argparse.Namespace:
    base = dict(file=None, function=None, args=None, runs=4, seed=1, raw=None, base="0",
                entry="0", symbol=[], max_size=None, no_unwind=False, cflags="")
    base.update(kw)
    return argparse.Namespace(**base)


def test_abi_command_returns_report_findings() -> None:
    found = run_abi_command(ns(file=SAVE, function="extra_regs_slots"))
    assert len(found) == 6
    f = found[0]
    assert f.location.text() == "extra_regs_slots+0x0" and f.location.offset == 0x48
    j = f.to_json()
    assert j["rule"] == "abi-violation" and j["source"]["line"] > 0
    assert run_abi_command(ns(file=SAVE, function="extra_regs_push")) == []


def test_abi_command_raw_stub_links_file(tmp_path: Path) -> None:
    stub = tmp_path / "old.bin"
    disp = (HELPERS - (STUB_VA + 5)) & 0xFFFF_FFFF
    stub.write_bytes(b"\xe8" + disp.to_bytes(4, "little") + bytes([0x90, 0xE4, 0x71, 0xC3]))
    found = run_abi_command(ns(file=str(FIX / "gpr-switch-rop.S"), raw=str(stub),
                               base=hex(STUB_VA), symbol=[f"host_to_guest_gpr_switch={HELPERS:#x}"],
                               args="ptr:256:rand", max_size=64))
    assert any("return-oriented" in f.message and f.location.text() == "stub+0x8"
               for f in found)


def test_hints_sidecar_declares_clobbers(tmp_path: Path) -> None:
    side = tmp_path / "framevet.toml"
    side.write_text('[load_guest_gprs]\nclobbers = ["rbx", "rbp"]\n[copy]\nstack_args = 2\n')
    clob, stack = read_sidecar(str(side), None)
    assert clob == {"load_guest_gprs": ["rbx", "rbp"]} and stack == {"copy": 2}
    assert read_sidecar(None, str(tmp_path / "x.o")) == (clob, stack)
    side.write_text("[broken")
    with pytest.raises(InputError):
        read_sidecar(str(side), None)


def test_diff_command_and_raw_sides() -> None:
    found = run_diff_command(argparse.Namespace(
        a=f"{SAVE}:extra_regs_push", b=f"{SAVE}:extra_regs_slots", args=None, runs=4, seed=1,
        cflags=""))
    assert [f.rule for f in found] == ["diff-divergence"]
    assert found[0].details["trace"][0].startswith("A = ")
    side = parse_side(f"raw:stub.bin@{STUB_VA:#x}+4,foo={HELPERS:#x}", [])
    assert (side.base, side.entry, side.symbols) == (STUB_VA, 4, {"foo": HELPERS})
    with pytest.raises(InputError):
        parse_side("raw:stub.bin", [])


def test_cli_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    from framevet.cli.main import main

    assert main(["abi", SAVE, "--function", "extra_regs_push", "--runs", "2"]) == 0
    assert main(["abi", SAVE, "--function", "extra_regs_slots", "--runs", "2",
                 "--format", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert {f["rule"] for f in out} == {"abi-violation"}
    assert main(["diff", f"{SAVE}:extra_regs_push", f"{SAVE}:extra_regs_slots"]) == 1
    assert main(["abi", SAVE, "--function", "nope"]) == 2
