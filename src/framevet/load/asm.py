"""Assembly source input: assemble with the system compiler, keep the line table."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from framevet.load.elf import parse_elf
from framevet.load.errors import InputError
from framevet.load.lines import read_line_table
from framevet.load.object import LoadedObject


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise InputError("gcc", "no C compiler found to assemble the source (set CC)")
    return cc


def assemble(path: str, cflags: list[str]) -> LoadedObject:
    if not os.path.isfile(path):
        raise InputError(path, "no such file")
    with tempfile.TemporaryDirectory(prefix="framevet-") as tmp:
        out = os.path.join(tmp, "out.o")
        cmd = [compiler(), "-c", "-g", *cflags, "-o", out, path]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise InputError(path, "assembler timed out") from None
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "rror" in ln),
                         proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "")
            raise InputError(path, f"assembly failed: {first}")
        with open(out, "rb") as fh:
            data = fh.read()
    return LoadedObject(parse_elf(data, path), path, read_line_table(data, path),
                        assembled=True)
