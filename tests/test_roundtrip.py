"""ORC written into an object reads back as generated (objtool --dump=orc recorded)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, assemble, corpus_required, fv

MODULES = ["msr", "crc32c-intel", "aesni-intel", "kvm-intel"]
RECORDED = ROOT / "tests" / "data" / "roundtrip"
OBJTOOL = shutil.which("objtool") or "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool"



@pytest.mark.parametrize("name", MODULES)
def test_written_orc_reads_back(name: str, tmp_path: Path) -> None:
    ko = corpus_required() / f"{name}.ko"
    before = hashlib.sha256(ko.read_bytes()).hexdigest()
    out = tmp_path / "out.ko"
    assert fv("orc", str(ko), "-o", str(out)).returncode == 0
    generated = fv("orc", "--dump", str(ko)).stdout
    read_back = fv("orc", "--read", str(out)).stdout
    assert generated and read_back == generated
    # what objtool 6.1 printed for this very output, recorded by tools/record_roundtrip.py
    assert (RECORDED / f"{name}.orc").read_text() == generated
    assert hashlib.sha256(ko.read_bytes()).hexdigest() == before  # input untouched


@pytest.mark.skipif(not os.access(OBJTOOL, os.X_OK), reason="objtool 6.1 not installed; "
                    "the recorded dumps above cover the same check")
def test_objtool_reads_framevet_output(tmp_path: Path) -> None:
    # a fixture without section symbols: framevet must add them like objtool does
    obj = assemble(FIXTURES / "stack-forms" / sorted(
        p.name for p in (FIXTURES / "stack-forms").glob("*.S"))[0])
    out = tmp_path / "out.o"
    assert fv("orc", str(obj), "-o", str(out)).returncode == 0
    dump = subprocess.run([OBJTOOL, "--dump=orc", str(out)], capture_output=True, text=True,
                          check=True).stdout
    assert dump == fv("orc", "--dump", str(obj)).stdout


def test_refuses_to_overwrite_input_without_in_place(tmp_path: Path) -> None:
    obj = tmp_path / "x.o"
    shutil.copy(assemble(FIXTURES / "seeds" / "save-extra-regs-push.S"), obj)
    before = obj.read_bytes()
    r = fv("orc", str(obj), "-o", str(obj))
    assert r.returncode == 2 and "--in-place" in r.stderr
    assert obj.read_bytes() == before
    assert fv("orc", str(obj), "--in-place").returncode == 0
    assert fv("orc", "--read", str(obj)).stdout == fv("orc", "--dump", str(
        assemble(FIXTURES / "seeds" / "save-extra-regs-push.S"))).stdout
