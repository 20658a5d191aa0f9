"""Small Debian packages for the scan tests, built with ``dpkg-deb --build`` from objects
compiled here: a program, a shared library, a static library and a kernel-style object."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FIXTURES, assemble

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(int argc, char **argv) {
    int v[64];
    for (int i = 0; i < 64; i++) v[i] = (i * 7919) % 61 + argc;
    qsort(v, 64, sizeof v[0], cmp);
    printf("%d %s\n", v[argc], argv[0]);
    return 0;
}
"""

#: fixtures with CFI findings, and clean ones, for the libraries
LIB_SOURCES = ("cfi-mismatch/early-restore.S", "cfi-mismatch/wrong-offset.S",
               "cfi-mismatch/ok-hand.S")
ARCHIVE_SOURCES = ("cfi-mismatch/push-no-cfi.S", "cfi-mismatch/ok-built-frame.S",
                   "stack-state-mismatch/regs.S")
KMOD_SOURCE = "stack-state-mismatch/cfa.S"


def tools_required() -> None:
    """gcc, ar and dpkg-deb; CI's Debian machine has them, so there a gap fails."""
    missing = [t for t in ("gcc", "ar", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing tools: {missing}")
        pytest.skip(f"missing tools: {missing}")


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


@dataclass
class Builds:
    program: Path
    shared: Path
    archive: Path
    kmod: Path


def build_objects(work: Path) -> Builds:
    """Compile and link the ELF files the packages carry."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "prog.c"
    src.write_text(PROGRAM)
    program = work / "prog"
    _run("gcc", "-O2", "-o", program, src)
    shared = work / "libfvbad.so.1"
    _run("gcc", "-shared", "-nostdlib", "-o", shared,
         *(assemble(FIXTURES / s) for s in LIB_SOURCES))
    archive = work / "libfv.a"
    members = []
    for s in ARCHIVE_SOURCES:
        obj = work / Path(s).with_suffix(".o").name
        shutil.copy(assemble(FIXTURES / s), obj)
        members.append(obj)
    _run("ar", "rcs", archive, *members)
    # a kernel object: the module-info section is what marks it as one
    ksrc = work / "fvmod.S"
    ksrc.write_text((FIXTURES / KMOD_SOURCE).read_text()
                    + '\n\t.section .modinfo,"a"\n\t.asciz "license=GPL"\n')
    kmod = work / "fvmod.ko"
    _run("gcc", "-c", "-o", kmod, ksrc)
    return Builds(program, shared, archive, kmod)


def build_deb(out_dir: Path, package: str, version: str, files: dict[str, Path | bytes],
              compression: str = "xz") -> Path:
    """``dpkg-deb --build`` a package holding ``files`` (installed path -> content)."""
    root = out_dir / f"{package}-{compression}-root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: framevet tests <tests@invalid>\nDescription: framevet scan test\n")
    for where, content in files.items():
        dest = root / where.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            shutil.copy(content, dest)
    deb = out_dir / f"{package}_{version}_amd64.deb"
    _run("dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", root, deb)
    shutil.rmtree(root)
    return deb


def standard_packages(out_dir: Path, b: Builds, compression: str = "xz") -> list[Path]:
    """Two packages: tools (program, shared and static library, a text file) and a
    kernel module."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tools = build_deb(out_dir, "fvtest-tools", "1.0-1", {
        "/usr/bin/fvprog": b.program,
        "/usr/lib/x86_64-linux-gnu/libfvbad.so.1": b.shared,
        "/usr/lib/x86_64-linux-gnu/libfv.a": b.archive,
        "/usr/share/doc/fvtest-tools/README": b"not code\n",
    }, compression)
    kmod = build_deb(out_dir, "fvtest-kmod", "2.0", {
        "/lib/modules/6.1.0/extra/fvmod.ko": b.kmod,
    }, compression)
    return [tools, kmod]
