"""Emulation: the ABI contract (framevet.emulate.run_abi) on assembled fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from framevet.emulate import Budget, RunStats, run_abi
from framevet.emulate.spec import parse_args_spec
from framevet.load import LoadedObject, load_path
from framevet.load.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "emulate"
ARGS = "ptr:64:rand,int:0..63"
# the instruction budget must be what stops a runaway, however loaded the machine is
SMALL = Budget(insns=20_000, seconds=120.0)


@pytest.fixture(scope="module")
def cases() -> list[LoadedObject]:
    return load_path(str(FIX / "abi-cases.S"))


def label_offset(obj: LoadedObject, function: str, label: str) -> int:
    syms = {s.name: s.offset for s in obj.elf.symbols if s.name}
    return syms[label] - syms[function]


@pytest.mark.parametrize("emulator", ["unicorn", "bochs"])
@pytest.mark.parametrize("function", ["ok_index", "ok_mmx_emms", "ok_indirect", "ok_fentry",
                                      "ok_retpoline", "ok_aligned"])
def test_clean_functions_have_no_findings(cases: list[LoadedObject], function: str,
                                          emulator: str) -> None:
    stats = RunStats()
    assert run_abi(cases, function, ARGS, runs=4, seed=1, stats=stats,
                   emulator=emulator) == []
    assert stats.returned == stats.runs == 4


@pytest.mark.parametrize(("function", "rule", "severity", "words"), [
    ("int_index", "abi-violation", "error", "reads 32-bit argument 2 as rsi"),
    ("clobber_rbx", "abi-violation", "error", "callee-saved rbx not restored"),
    ("leave_df", "abi-violation", "error", "direction flag set"),
    ("call_df", "abi-violation", "error", "calls ext_fn with the direction flag set"),
    ("mmx_no_emms", "abi-violation", "error", "MMX/x87 state in use"),
    ("mxcsr_round", "abi-violation", "error", "MXCSR 0x1f80 -> 0x7f80"),
    ("misaligned", "abi-violation", "error", "needs a 16-byte aligned operand"),
    ("unbalanced", "abi-violation", "error", "ret does not return to its caller"),
    ("below_red_zone", "abi-violation", "warning", "below the 128-byte red zone"),
    ("overread", "abi-violation", "error", "just past the end of argument 1's 64-byte buffer"),
    ("runaway", "emulation-error", "warning", "did not return within 20000 instructions"),
    ("avx", "emulation-error", "warning", "cannot emulate AVX instruction"),
    ("trap", "abi-violation", "error", "ud2"),
    ("sys", "emulation-error", "warning", "system calls are not emulated"),
])
@pytest.mark.parametrize("emulator", ["unicorn", "bochs"])
def test_each_violation_is_reported_at_its_instruction(
        cases: list[LoadedObject], function: str, rule: str, severity: str,
        words: str, emulator: str) -> None:
    found = run_abi(cases, function, ARGS, runs=3, seed=7, budget=SMALL, emulator=emulator)
    if function == "avx" and emulator == "bochs":     # Bochs runs AVX: nothing to say
        assert found == [], [f.text() for f in found]
        return
    hits = [f for f in found if words in f.message]
    assert hits, [f.text() for f in found]
    f = hits[0]
    assert (f.rule, f.severity, f.symbol) == (rule, severity, function)
    obj = cases[0]
    bad = label_offset(obj, function, f"bad_{function}")
    if function == "mmx_no_emms":     # the last MMX instruction before ret
        assert f.offset == bad + 7
    elif function == "unbalanced":    # the ret
        assert f.offset == bad + 5
    else:
        assert f.offset == bad
    assert f.file.endswith("abi-cases.S") and f.section == ".text"
    assert f.source is not None and f.source[0].endswith("abi-cases.S")
    # runaway code stops the series after two runs that exhaust the budget
    assert f"(in {2 if function == 'runaway' else 3} of {2 if function == 'runaway' else 3} runs)" \
        in f.message


def test_seed002_push_based_save_is_clean() -> None:
    obj = load_path(str(FIX / "save-extra-regs.S"))
    stats = RunStats()
    assert run_abi(obj, "extra_regs_push", runs=8, stats=stats) == []
    # unwound at every instruction but the external call's stub, with both tables
    u = stats.unwind
    assert u.steps == stats.instructions - stats.runs > 0
    assert u.checked["framevet's CFA table"] == u.checked["DWARF CFI (.eh_frame)"] == u.steps


def test_seed002_slot_based_save_writes_into_the_callers_frame() -> None:
    obj = load_path(str(FIX / "save-extra-regs.S"))
    found = run_abi(obj, "extra_regs_slots", runs=4)
    assert [f.rule for f in found] == ["abi-violation"] * 6
    assert [f.offset for f in found] == [0, 5, 10, 15, 20, 25]
    assert all("into its caller's frame" in f.message for f in found)
    assert "entry rsp+0x8 " in found[0].message and "entry rsp+0x30 " in found[5].message


def test_runs_are_reproducible_from_the_seed(cases: list[LoadedObject]) -> None:
    a = run_abi(cases, "clobber_rbx", ARGS, runs=2, seed=3)
    b = run_abi(cases, "clobber_rbx", ARGS, runs=2, seed=3)
    c = run_abi(cases, "clobber_rbx", ARGS, runs=2, seed=4)
    assert [f.message for f in a] == [f.message for f in b] != [f.message for f in c]


def test_bad_input_is_an_input_error(cases: list[LoadedObject]) -> None:
    with pytest.raises(InputError, match="no function 'nope'"):
        run_abi(cases, "nope")
    for spec in ("ptr", "ptr:0", "ptr:8:blue", "int:5..1", "float", "int:1..x"):
        with pytest.raises(InputError):
            parse_args_spec(spec)
    with pytest.raises(InputError):
        parse_args_spec("ptr:8:copy")


def test_retpoline_thunk_reaches_its_target(cases: list[LoadedObject]) -> None:
    stats = RunStats()
    assert run_abi(cases, "ok_retpoline", "ptr:64:rand", runs=2, stats=stats) == []
    # ok_retpoline's 4 instructions before the thunk, the thunk, ok_index's 3, pop, ret
    assert stats.instructions == 2 * 10


def test_memory_budget_is_checked_before_allocating(cases: list[LoadedObject]) -> None:
    with pytest.raises(InputError, match="memory budget"):
        run_abi(cases, "ok_index", "ptr:100000000000")
    with pytest.raises(InputError, match="memory budget"):
        run_abi(cases, "ok_index", "ptr:8192", budget=Budget(memory=4096))


def test_args_spec_builds_real_buffers() -> None:
    from framevet.emulate.spec import make_state

    specs = parse_args_spec("ptr:100:str,ptr:100:copy,int:0..15,long:5..5,any")
    st = make_state(specs, 0, 0)
    a, b = st.buffers
    assert a.size == 100 and a.addr % 16 == 0 and b"\0" in a.data
    assert a.addr + 112 == a.map_start + a.map_size     # ends at a guard page
    assert st.regs[1] & 0xFFFF_FFFF <= 15 and st.regs[1] >> 32     # junk upper half
    assert st.int_args == {1: st.regs[1] & 0xFFFF_FFFF}
    assert st.regs[2] == 5
