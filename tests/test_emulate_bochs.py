"""Emulation of AVX, AVX2 and AVX-512 code under Bochs (issue 14)."""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import pytest

from framevet.emulate import CPU_MODELS, RunStats, diff, run_abi, run_raw
from framevet.emulate.backend import needs_bochs
from framevet.emulate.bochs import BochsMachine
from framevet.emulate.child import Crash, Supervisor
from framevet.emulate.image import link
from framevet.load import load_path

FIX = Path(__file__).parent / "fixtures" / "emulate"
LANES = str(FIX / "lane-sums.S")
LANE_ARGS = "ptr:1024:rand,ptr:64,long:16..16"
FRAMEVET, DWARF = "framevet's CFA table", "DWARF CFI (.eh_frame)"
LIBC_A = "/usr/lib/x86_64-linux-gnu/libc.a"


def _symbols(path: str) -> dict[str, int]:
    return {s.name: s.offset for s in load_path(path)[0].elf.symbols if s.name}


def test_auto_picks_bochs_only_for_code_unicorn_cannot_run() -> None:
    objs = load_path(LANES)
    assert needs_bochs(link(objs)) is not None
    assert needs_bochs(link(load_path(str(FIX / "cfi-frame.S")))) is None
    stats = RunStats()
    assert run_abi(objs, "colsum_sse2", LANE_ARGS, runs=1, stats=stats) == []
    assert stats.backend == "bochs (tigerlake)"          # the object has AVX code
    stats = RunStats()
    assert run_abi(objs, "colsum_sse2", LANE_ARGS, runs=1, stats=stats,
                   emulator="unicorn") == []
    assert stats.backend == "unicorn"


@pytest.mark.parametrize("wide", ["colsum_avx2", "colsum_avx512"])
def test_avx2_and_avx512_lane_sums_equal_sse2(wide: str) -> None:
    stats = RunStats()
    assert diff(f"{LANES}:colsum_sse2", f"{LANES}:{wide}", runs=3, args_spec=LANE_ARGS,
                stats=stats) == []
    assert stats.runs == 3 and stats.instructions > 3 * 2 * 16 * 3


@pytest.mark.parametrize(("bad", "lane"), [("colsum_avx2_badlane", 5),
                                           ("colsum_avx512_badlane", 0)])
def test_one_wrong_lane_diverges_at_the_store_that_wrote_it(bad: str, lane: int) -> None:
    found = diff(f"{LANES}:colsum_sse2", f"{LANES}:{bad}", runs=2, args_spec=LANE_ARGS)
    assert [f.rule for f in found] == ["diff-divergence"], [f.text() for f in found]
    f = found[0]
    assert f.symbol == bad
    assert f"argument 2's buffer at offset {4 * lane}:" in f.message
    assert any(f"B: {bad}+0x{f.offset:x}: vmovdqu" in line for line in f.trace), f.trace


def test_lane_sums_run_clean_with_unwinding_at_every_step() -> None:
    for fn in ("colsum_avx2", "colsum_avx512"):
        stats = RunStats()
        assert run_abi(load_path(LANES), fn, LANE_ARGS, runs=2, stats=stats) == []
        u = stats.unwind
        assert stats.returned == 2 and u.checked[FRAMEVET] == u.checked[DWARF] == u.steps
        assert u.steps == stats.instructions > 2 * 16 * 4


def test_wrong_cfi_after_avx2_work_fails_at_the_first_wrong_instruction() -> None:
    path = str(FIX / "avx2-cfi.S")
    assert run_abi(load_path(path), "avx2_frame_ok", "ptr:128:rand", runs=2) == []
    found = run_abi(load_path(path), "avx2_frame_bad", "ptr:128:rand", runs=2)
    assert [f.rule for f in found] == ["unwind-failure"], [f.text() for f in found]
    syms = _symbols(path)
    f = found[0]
    assert f.offset == syms["bad_first"] - syms["avx2_frame_bad"]
    assert f.message.startswith(f"unwinding with {DWARF} fails here")
    assert f"{FRAMEVET} unwinds correctly here" in f.message


def test_dirty_upper_halves_are_observed_at_return(tmp_path: Path) -> None:
    src = Path(LANES).read_text()
    dirty = tmp_path / "dirty.S"
    dirty.write_text(src.replace("\tvzeroupper\n", "", 1))      # colsum_avx2's
    found = run_abi(load_path(str(dirty)), "colsum_avx2", LANE_ARGS, runs=2)
    assert [f.rule for f in found] == ["abi-violation"], [f.text() for f in found]
    assert "upper halves dirty" in found[0].message
    assert "observed in the registers" in found[0].message
    assert "colsum_avx2+0x" in found[0].message     # names the last ymm writer
    # the last writes are 128-bit VEX ones, which zero the upper bits: the state the CPU
    # tracks is still dirty (only vzeroupper/vzeroall clean it)
    src = (FIX / "avx2-cfi.S").read_text()
    (tmp_path / "zeroed.S").write_text(src.replace("\tvzeroupper\n", "", 1))
    found = run_abi(load_path(str(tmp_path / "zeroed.S")), "avx2_frame_ok", "ptr:128:rand",
                    runs=1)
    assert [f.rule for f in found] == ["abi-violation"], [f.text() for f in found]
    assert "upper bits happen to be zero" in found[0].message


def test_cpu_model_decides_what_cpuid_says_and_what_executes() -> None:
    assert "haswell" in CPU_MODELS and "tigerlake" in CPU_MODELS
    objs = load_path(LANES)
    found = run_abi(objs, "colsum_avx512", LANE_ARGS, runs=1, cpu="haswell")
    assert len(found) == 1 and "raises #UD" in found[0].message, [f.text() for f in found]
    assert "(haswell)" in found[0].message and found[0].offset == 0
    assert run_abi(objs, "colsum_avx2", LANE_ARGS, runs=1, cpu="haswell") == []
    has512 = str(FIX / "cpu-dispatch.S")
    assert diff(f"{has512}:has_avx512", f"{has512}:one", runs=1, cpu="tigerlake") == []
    found = diff(f"{has512}:has_avx512", f"{has512}:one", runs=1, cpu="haswell")
    assert [f.rule for f in found] == ["diff-divergence"] and "rax" in found[0].message


@pytest.mark.parametrize("emulator", ["bochs", "unicorn"])
def test_ms_abi_requires_xmm6_to_xmm15_back(emulator: str) -> None:
    path = str(FIX / "cpu-dispatch.S")
    assert run_abi(load_path(path), "clobber_xmm7", runs=1, emulator=emulator) == []
    found = run_abi(load_path(path), "clobber_xmm7", runs=1, emulator=emulator, abi="ms")
    assert [f.rule for f in found] == ["abi-violation"], [f.text() for f in found]
    assert "callee-saved xmm7 not restored" in found[0].message


def test_an_emulator_crash_is_one_finding_not_a_lost_run(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def work(n: int) -> int:
        if n == 1:
            faulthandler.disable()       # pytest's would print the child's stack
            os.abort()
        return n * 2

    sup = Supervisor(work, timeout=30)
    with sup:
        assert sup.call(2) == 4
        got = sup.call(1)
        assert isinstance(got, Crash) and "SIGABRT" in got.reason
        assert sup.call(3) == 6                      # a fresh worker takes over
    real_run = BochsMachine.run

    def crash_second_run(self: BochsMachine) -> object:
        if self.state.world_seed == crash_seed:
            faulthandler.disable()
            os.abort()
        return real_run(self)

    from framevet.emulate.spec import make_state, parse_args_spec

    crash_seed = make_state(parse_args_spec(LANE_ARGS), 0, 1).world_seed
    monkeypatch.setattr(BochsMachine, "run", crash_second_run)
    stats = RunStats()
    found = run_abi(load_path(LANES), "colsum_avx2", LANE_ARGS, runs=3, stats=stats)
    assert [f.rule for f in found] == ["emulation-error"], [f.text() for f in found]
    assert "the emulator process died (SIGABRT)" in found[0].message
    assert stats.runs == 2 and stats.returned == 2    # runs 0 and 2 were judged


@pytest.mark.skipif(not os.path.exists(LIBC_A), reason="no libc.a")
@pytest.mark.parametrize(("member", "function", "sibling", "args"), [
    ("strlen-avx2.o", "__strlen_avx2", "strlen-sse2.o", "ptr:300:str"),
    ("strlen-evex.o", "__strlen_evex", "strlen-sse2.o", "ptr:300:str"),
    ("strchr-avx2.o", "__strchr_avx2", "strchr-sse2.o", "ptr:300:str,int:0..255"),
    ("memmove-avx-unaligned-erms.o", "__memmove_avx_unaligned_erms",
     "memmove-sse2-unaligned-erms.o", "ptr:5000,ptr:5000:rand,long:2000..5000"),
])
def test_glibc_avx2_and_evex_functions_unwind_and_equal_sse2(member: str, function: str,
                                                             sibling: str, args: str) -> None:
    from framevet.emulate import FunctionTarget
    from framevet.emulate.survey import TUNABLES, members

    objs = members(LIBC_A, {member, sibling})
    stats = RunStats()
    found = run_abi(objs[member], function, args, runs=4, values=TUNABLES, stats=stats)
    assert found == [], [f.text() for f in found]
    u = stats.unwind
    assert stats.returned == 4 and u.steps > 40
    assert u.checked[FRAMEVET] == u.checked[DWARF] == u.steps
    sse2 = function.replace("avx_", "sse2_").replace("avx2", "sse2").replace("evex", "sse2")
    assert diff(FunctionTarget(LIBC_A, sse2, loaded=[objs[sibling]]),
                FunctionTarget(LIBC_A, function, loaded=[objs[member]]), runs=4,
                args_spec=args, values=TUNABLES) == []


def test_raw_stub_at_a_hypervisor_address_gives_the_same_findings_under_both() -> None:
    from test_emulate_raw import HELPERS, STUB_VA, old_stub

    rop = load_path(str(FIX / "gpr-switch-rop.S"))
    runs: dict[str, list[tuple[str, str, int, str]]] = {}
    for emulator in ("unicorn", "bochs"):
        stats = RunStats()
        found = run_raw(old_stub(), STUB_VA, symbols={"host_to_guest_gpr_switch": HELPERS},
                        link_with=rop, args_spec="ptr:256:rand", runs=3, stats=stats,
                        emulator=emulator)
        assert stats.returned == 3 and stats.backend.startswith(emulator)
        runs[emulator] = sorted((f.rule, f.symbol, f.offset, f.message) for f in found)
    assert runs["unicorn"] == runs["bochs"] != []


def test_cfa_expression_adding_after_the_load_unwinds() -> None:
    """OpenSSL's realigned AVX2 frames: CFA = [rsp+56] + 8 (``DW_OP_plus_uconst`` after
    ``DW_OP_deref``); the add used to be dropped, so every step unwound 8 bytes short."""
    path = str(FIX / "cfa-deref.S")
    found = run_abi(load_path(path), "realigned_avx2", "ptr:32:rand", runs=2)
    assert not [f for f in found if f.message.startswith(f"unwinding with {DWARF}")], \
        [f.text() for f in found]
    # framevet's own table follows the slot too, until rsp is reloaded from it (+0x27)
    assert all(f.offset >= 0x27 for f in found), [f.text() for f in found]
