"""Bad input: one error line naming the file, exit 2, no traceback, no hang, input intact."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, assemble, corpus_required, fv


def run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    return fv(*args, timeout=timeout)


def assert_one_error(r: subprocess.CompletedProcess[str], path: Path, reason: str) -> None:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "error" in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def _ko() -> bytes:
    return (corpus_required() / "msr.ko").read_bytes()


def _variants(tmp: Path) -> list[tuple[Path, str]]:
    ko = _ko()
    out = []

    def put(name: str, data: bytes, reason: str) -> None:
        p = tmp / name
        p.write_bytes(data)
        out.append((p, reason))

    put("truncated.ko", ko[: len(ko) // 3], "truncated")
    put("not-elf.ko", b"#!/bin/sh\necho hello\n" * 10, "not an ELF file")
    put("empty.o", b"", "not an ELF file")
    aarch64 = bytearray(ko)
    struct.pack_into("<H", aarch64, 18, 183)
    put("aarch64.o", bytes(aarch64), "not x86-64")
    elf32 = bytearray(ko)
    elf32[4] = 1
    put("elf32.o", bytes(elf32), "not a 64-bit")
    bad_shoff = bytearray(ko)
    struct.pack_into("<Q", bad_shoff, 0x28, len(ko) * 4)
    put("bad-shoff.o", bytes(bad_shoff), "malformed ELF")
    bad_shnum = bytearray(ko)
    struct.pack_into("<H", bad_shnum, 0x3C, 0xFFF0)
    put("bad-shnum.o", bytes(bad_shnum), "")
    huge_names = bytearray(ko)
    shoff, shstrndx = struct.unpack_from("<Q", ko, 0x28)[0], struct.unpack_from("<H", ko, 0x3E)[0]
    struct.pack_into("<Q", huge_names, shoff + 64 * shstrndx + 24, 0x7FFFFFFFFFFFFFF0)
    put("huge-offset.o", bytes(huge_names), "malformed ELF")
    put("archive.a", b"!<arch>\nfoo.o/          0           0     0     644     999999    `\n",
        "truncated")
    return out


def test_bad_inputs_give_one_line(tmp_path: Path) -> None:
    for path, reason in _variants(tmp_path):
        before = path.read_bytes()
        for cmd in (["check"], ["orc", "--dump"], ["cfa"]):
            r = run(*cmd, str(path))
            assert_one_error(r, path, reason)
        assert path.read_bytes() == before


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.ko"
    assert_one_error(run("check", str(p)), p, "no such file")


def test_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"junk")
    good = assemble(FIXTURES / "seeds" / "save-extra-regs-slots.S")
    r = run("check", "--no-progress", str(bad), str(good))
    assert r.returncode == 2
    assert "caller-frame-write" in r.stdout
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr


def test_hostile_symbol_and_relocation_tables(tmp_path: Path) -> None:
    """Relocations naming symbols past the table, and garbage code bytes."""
    src = tmp_path / "hostile.S"
    src.write_text(".text\n.globl f\n.type f,@function\nf:\n call g\n ret\n"
                   ".byte 0x0f,0xff,0xc4,0xe2,0x7d,0xff,0x06,0x0f,0x0b\n.size f,.-f\n")
    obj = assemble(src)
    data = bytearray(obj.read_bytes())
    # point the first relocation's symbol index far past the symbol table
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(bytes(data)))
    rela = elf.get_section_by_name(".rela.text")
    off = rela["sh_offset"]
    info = struct.unpack_from("<Q", data, off + 8)[0]
    struct.pack_into("<Q", data, off + 8, (0xFFFFFF << 32) | (info & 0xFFFFFFFF))
    bad = tmp_path / "bad-reloc.o"
    bad.write_bytes(bytes(data))
    assert_one_error(run("check", str(bad)), bad, "past the end of the symbol table")
    # garbage code alone is a finding, not a crash
    r = run("check", str(obj))
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr


@pytest.mark.parametrize("junk", [bytes(range(256)) * 64, b"\xff" * 4096, b"\x0f" * 4096])
def test_junk_code_section_terminates(tmp_path: Path, junk: bytes) -> None:
    src = tmp_path / "junk.S"
    body = ",".join(str(b) for b in junk)
    src.write_text(f".text\n.globl f\n.type f,@function\nf:\n.byte {body}\n.size f,.-f\n")
    r = run("check", str(assemble(src)), timeout=60)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
