"""Command-line details: --value, --symbol, emulator limits, cfa's formats, -o, file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import FIXTURES, ROOT, assemble, fv
from test_dwarf import libc_member

EXAMPLE = ROOT / "examples" / "entry-stubs.S"
MEMMOVE = "memmove-sse2-unaligned-erms.o"
MEMMOVE_ARGS = ("-f", "__memmove_sse2_unaligned_erms", "--args", "ptr:4096,ptr:4096,long:0..4096",
                "--runs", "4")


def test_value_sets_an_undefined_data_symbol(tmp_path: Path) -> None:
    obj = libc_member(MEMMOVE, tmp_path)
    # glibc's tunable reads as 0 without a value: every copy looks non-temporal
    # and its 4-page prefetch loop reads past the buffers
    bare = fv("abi", str(obj), *MEMMOVE_ARGS)
    assert bare.returncode == 1 and "past the end of argument 2" in bare.stdout
    set_ = fv("abi", str(obj), *MEMMOVE_ARGS,
              "--value", "__x86_shared_non_temporal_threshold=0xc0000")
    assert set_.returncode == 0, set_.stdout + set_.stderr
    assert set_.stdout == ""
    bad = fv("abi", str(obj), *MEMMOVE_ARGS, "--value", "oops")
    assert bad.returncode == 2 and "--value: error: expected SYMBOL=VALUE" in bad.stderr


def test_symbol_without_raw_is_an_error() -> None:
    r = fv("abi", str(FIXTURES / "emulate" / "save-extra-regs.S"), "-f", "extra_regs_push",
           "--symbol", "helper=0x1000")
    assert r.returncode == 2
    assert r.stderr.strip() == "--symbol: error: names call targets of a raw stub; it needs " \
                               "--raw STUB.bin"


def test_an_emulator_limit_is_not_a_divergence(tmp_path: Path) -> None:
    src = tmp_path / "v.S"
    src.write_text(".text\n.globl a\n.type a,@function\na:\n mov %rdi,%rax\n ret\n.size a,.-a\n"
                   ".globl b\n.type b,@function\nb:\n vmovdqu (%rsi),%ymm0\n mov %rdi,%rax\n"
                   " vzeroupper\n ret\n.size b,.-b\n")
    # (unicorn cannot run AVX; --emulator auto would pick Bochs, which can)
    r = fv("diff", f"{src}:a", f"{src}:b", "--args", "long,ptr:64", "--runs", "2",
           "--emulator", "unicorn", "--format", "json")
    found = json.loads(r.stdout)
    assert [f["rule"] for f in found] == ["emulation-error"]
    assert "cannot emulate AVX instruction" in found[0]["message"]
    assert "no divergence" not in r.stderr


def test_cfa_json_by_function_with_names(tmp_path: Path) -> None:
    r = fv("cfa", "--format", "json", "--function", "fred_irq_bad", str(EXAMPLE))
    doc = json.loads(r.stdout)
    (func,) = doc[0]["functions"]
    assert func["function"] == "fred_irq_bad"
    rows = func["rows"]
    assert [r["where"] for r in rows] == ["fred_irq_bad+0x0", "fred_irq_bad+0x1",
                                          "fred_irq_bad+0x4", "fred_irq_bad+0x17"]
    assert rows[2]["cfa"] == "rbp+16" and rows[2]["registers"]["rbp"] == "cfa-16"
    text = fv("cfa", "-f", "fred_irq_bad", str(EXAMPLE)).stdout.splitlines()
    assert text[0] == "<fred_irq_bad>:" and text[3] == ".text+4d: cfa=rbp+16 rbp=cfa-16 ra=cfa-8"
    missing = fv("cfa", "-f", "nope", str(EXAMPLE))
    assert missing.returncode == 2 and "no function 'nope'" in missing.stderr


def test_every_command_writes_to_o(tmp_path: Path) -> None:
    emu = FIXTURES / "emulate" / "save-extra-regs.S"
    runs = {
        "check": ["check", str(EXAMPLE)],
        "cfi": ["cfi", str(FIXTURES / "cfi-mismatch" / "push-no-cfi.S")],
        "cfa": ["cfa", str(EXAMPLE)],
        "abi": ["abi", str(emu), "-f", "extra_regs_slots", "--runs", "2"],
        "diff": ["diff", f"{emu}:extra_regs_push", f"{emu}:extra_regs_slots", "--runs", "2"],
        "rules": ["rules"],
        "config": ["config", str(EXAMPLE)],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.out"
        r = fv(*args, "-o", str(out))
        assert r.stdout == "", name
        assert out.stat().st_size > 0, name


def test_written_files_get_the_right_mode(tmp_path: Path) -> None:
    data = assemble(FIXTURES / "seeds" / "save-extra-regs-push.S").read_bytes()
    obj, spare = tmp_path / "f.o", tmp_path / "g.o"
    obj.write_bytes(data)
    spare.write_bytes(data)
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "out.o"
    assert fv("orc", str(obj), "-o", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    obj.chmod(0o640)
    assert fv("orc", str(obj), "--in-place").returncode == 0
    assert stat.S_IMODE(obj.stat().st_mode) == 0o640
    bad = fv("orc", str(spare), "-o", str(tmp_path / "no" / "x.o"))
    assert bad.returncode == 2 and "cannot write" in bad.stderr
