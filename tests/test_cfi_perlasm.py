"""OpenSSL perlasm frame shapes (``tests/fixtures/cfi-mismatch/*perlasm*.S``): the
stack model keeps every copy of the CFA (registers, stack slots), so a CFI that
names another copy than framevet's own spelling is the same rule; wrong CFI in the
same style is still found; what framevet cannot judge gets one note."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, fv

from framevet.load import load_path
from framevet.unwind.cfatable import cfa_table
from framevet.unwind.cficheck import check_cfi

MISMATCH = FIXTURES / "cfi-mismatch"

SHAPES = ["ok-perlasm-slot-frame.S", "ok-perlasm-rotating-slot.S",
          "ok-perlasm-reload-through-copy.S", "ok-perlasm-local-convention.S",
          "ok-perlasm-local-call.S", "ok-perlasm-frame-register.S"]


def rows(name: str) -> list[tuple[int, str]]:
    (obj,) = load_path(str(MISMATCH / name))
    return [(r.offset, r.rule.text()) for r in cfa_table(obj.elf).rows[".text"]]


def findings(name: str) -> list[tuple[str, str, str]]:
    (obj,) = load_path(str(MISMATCH / name))
    return [(f.rule, f.location.text() if f.location else "", f.message)
            for f in check_cfi(obj)]


@pytest.mark.parametrize("name", SHAPES)
def test_shape_cfi_is_clean_and_cfa_known(name: str) -> None:
    assert findings(name) == []
    assert all("undefined" not in t for _, t in rows(name))


def test_slot_frame_copy_kept_in_rax() -> None:
    """aesni_multi_cbc_encrypt: the CFA moves to the slot at the store while %rax keeps
    its copy; the early exit reaches the epilogue with the slot rule, and the
    restores through %rax count; ``lea (%rax),%rsp`` brings the CFA back to rsp."""
    got = rows("ok-perlasm-slot-frame.S")
    assert (0x16, "cfa=[rsp+16]+8 rbx=cfa-16 rbp=cfa-24 r12=cfa-32 r15=cfa-40 ra=cfa-8") \
        in got
    assert got[-3:] == [(0x3e, "cfa=[rsp+16]+8 rbx=cfa-16 ra=cfa-8"),
                        (0x42, "cfa=[rsp+16]+8 ra=cfa-8"), (0x45, "cfa=rsp+8 ra=cfa-8")]


def test_slot_frame_joins_two_spellings() -> None:
    """The loop's back edge arrives with cfa=rax+8 where the CFA was recorded as
    *(rsp+16)+8: %rax holds the copy the slot holds, so it is one state."""
    out = fv("check", "--profile", "user", "--format", "json",
             str(MISMATCH / "ok-perlasm-slot-frame.S"))
    assert "stack-state-mismatch" not in out.stdout
    assert "callee-saved-clobber" not in out.stdout
    assert out.returncode == 0, out.stdout + out.stderr


def test_rotating_slot_follows_the_copy() -> None:
    """sha256_block_data_order_avx2: ``pushq 56(%rsp)`` copies the slot; the stores of
    the next round write over the old one, so the CFA moves to the copy."""
    got = dict(rows("ok-perlasm-rotating-slot.S"))
    assert any(t.startswith("cfa=[rsp-8]+8") for t in got.values())
    assert any(t.startswith("cfa=rsi+8") for t in got.values())


def test_reload_through_rsp_copy() -> None:
    """whirlpool_block: ``mov 32(%rbx),%rsi`` with %rbx = rsp+128 reads the slot, so
    %rsi holds the copy (the CFI's rsi+8 is framevet's *(rsp+160)+8) and the
    restores through %rsi count."""
    got = rows("ok-perlasm-reload-through-copy.S")
    assert got[-3:] == [(0x3a, "cfa=[rsp+160]+8 rbx=cfa-16 ra=cfa-8"),
                        (0x3e, "cfa=[rsp+160]+8 ra=cfa-8"), (0x41, "cfa=rsp+8 ra=cfa-8")]


def test_local_call_has_its_own_frame() -> None:
    """Code after the ``ret`` entered only by ``call`` (both labels called, the first
    falls into the second) is a local function: cfa=rsp+8, not the caller's + 8."""
    (obj,) = load_path(str(MISMATCH / "ok-perlasm-local-call.S"))
    table = cfa_table(obj.elf)
    assert table.at(".text", 0x4).text() == "cfa=rsp+16 ra=cfa-8"     # the caller
    for off in (0x20, 0x27, 0x2e):                                  # both entries
        assert table.at(".text", off).text() == "cfa=rsp+8 ra=cfa-8"


def test_frame_register_set_before_realignment() -> None:
    """poly1305_blocks_avx512: ``lea -8(%rsp),%r11`` then ``and $-512,%rsp`` a few
    instructions later: CFA r11+16 (not objtool's DRAP rule r11+0)."""
    got = rows("ok-perlasm-frame-register.S")
    assert any(t == "cfa=r11+16 ra=cfa-8" for _, t in got)
    assert got[-1][1] == "cfa=rsp+8 ra=cfa-8"


def test_local_helper_whose_caller_reads_the_register() -> None:
    """The same helper, but the caller reads %r12 after the second call: the helper's
    "same value" rule for r12 is wrong and is reported."""
    got = findings("perlasm-local-convention-live.S")
    assert [(r, loc) for r, loc, _ in got] == [("cfi-mismatch", "helper+0x12")]
    assert "CFI says r12=same but the code has r12=lost" in got[0][2]


def test_adjust_with_the_wrong_sign() -> None:
    """x25519_fe51_sqr's epilogue: ``.cfi_adjust_cfa_offset 88`` where rsp goes up."""
    got = findings("perlasm-adjust-sign.S")
    assert [(r, loc) for r, loc, _ in got] == [("cfi-mismatch", "psign+0x14")]
    assert got[0][2].startswith("CFI says cfa=rsp+192 but the code has cfa=rsp+8")


def test_push_described_twice() -> None:
    """sha1_multi_block: the second ``.cfi_push`` names %rbx again."""
    got = findings("perlasm-push-twice.S")
    assert got and all(r == "cfi-mismatch" for r, _, _ in got)
    assert got[0][1] == "ppush+0x5"
    assert "CFI says rbx=cfa-24 but the code has rbx=cfa-16" in got[0][2]


def test_unmodelled_slot_is_one_note() -> None:
    """A CFA read back from a slot framevet lost track of (the frame moved in a loop):
    one cfa-unmodelled note at the first instruction, no cfi-mismatch."""
    got = findings("unmodelled-loop-slot.S")
    assert [(r, loc) for r, loc, _ in got] == [("cfa-unmodelled", "ploop+0x49")]
    assert "cfa=[rsp+88]+8" in got[0][2]


def _confirmed(name: str) -> list[dict[str, object]]:
    out = fv("cfi", "--confirm", "--format", "json", str(MISMATCH / name))
    got = [f for f in json.loads(out.stdout) if f["rule"] == "cfi-mismatch"]
    assert got, out.stderr
    return got


def test_confirm_wrong_cfa_yields_wrong_return_address() -> None:
    """--confirm runs psign to its `ret` and unwinds with the CFI: the CFA is 176
    bytes too high, so the return address it yields is not the true one."""
    (f,) = _confirmed("perlasm-adjust-sign.S")
    verdict = str(f["details"]["confirm"])            # type: ignore[index]
    m = re.match(r"confirmed: the CFI yields return address (\S+), the true one is "
                 r"(0x[0-9a-f]+)", verdict)
    assert m and m.group(1) != m.group(2), verdict
    assert verdict in str(f["message"])


def test_confirm_wrong_register_rule() -> None:
    got = _confirmed("perlasm-push-twice.S")
    assert all(str(f["details"]["confirm"]).startswith(        # type: ignore[index]
        "confirmed: the CFI recovers rbx = ") for f in got)


def test_confirm_says_why_not() -> None:
    """Behind a branch on a magic number no run takes; after an AVX instruction
    unicorn cannot execute (once the emulator runs AVX, the run gets there and
    confirms)."""
    got = {str(f["symbol"]): str(f["details"]["confirm"])           # type: ignore[index]
           for f in _confirmed("confirm-reach.S")}
    assert got["magic"] == "not confirmed (path not reached)"
    assert got["wide"] == "not confirmed (AVX)" or got["wide"].startswith("confirmed: ")


def test_confirm_in_sarif() -> None:
    out = fv("cfi", "--confirm", "--format", "sarif", str(MISMATCH / "perlasm-adjust-sign.S"))
    (res,) = json.loads(out.stdout)["runs"][0]["results"]
    assert res["properties"]["confirm"].startswith("confirmed: ")


def test_gcc_drap_epilogue_register_rules(tmp_path: Path) -> None:
    """GCC's own CFI for a DRAP frame keeps rbx/r12/... at ``rbp``-relative addresses
    after ``pop %rbp``: one cfi-mismatch right after the pop, for the instructions up
    to the ``ret``, and --confirm finds a wrong register there."""
    obj = tmp_path / "drap.o"
    subprocess.run(["gcc", "-O2", "-c", "-o", str(obj), str(MISMATCH / "gcc-drap-epilogue.c")],
                   check=True)
    out = fv("cfi", "--confirm", "--format", "json", str(obj))
    got = [f for f in json.loads(out.stdout) if f["rule"] == "cfi-mismatch"]
    assert len(got) == 1, out.stdout
    assert str(got[0]["symbol"]) == "work"
    assert "`pop %rbp`" in str(got[0]["message"]) and "rbx=at(rbp-" in str(got[0]["message"])
    assert str(got[0]["details"]["confirm"]).startswith(          # type: ignore[index]
        "confirmed: the CFI recovers ")
