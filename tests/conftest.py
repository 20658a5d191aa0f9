"""Shared test helpers: assembling fixtures, finding the shared corpus."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = Path(os.environ.get("FRAMEVET_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus" / "kmod"
_CACHE = Path(os.environ.get("FRAMEVET_TEST_CACHE", "/tmp/framevet-test-objs"))


def assemble(src: Path, flags: tuple[str, ...] = ()) -> Path:
    """``gcc -c`` a fixture into a cache keyed by its content; returns the object."""
    data = src.read_bytes()
    key = hashlib.sha256(data + " ".join(flags).encode()).hexdigest()[:16]
    out = _CACHE / f"{src.stem}-{key}.o"
    if not out.exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.o")
        cc = os.environ.get("CC") or shutil.which("gcc") or "cc"
        subprocess.run([cc, "-c", *flags, "-o", str(tmp), str(src)], check=True)
        tmp.replace(out)
    return out


def fv(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``framevet`` command line as a user would, in a child process."""
    return subprocess.run([sys.executable, "-m", "framevet.cli", *args], capture_output=True,
                          text=True, check=False, timeout=timeout)


def corpus_required() -> Path:
    """The shared corpus; CI always has it beside the clone, so its absence fails there."""
    if not CORPUS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared corpus missing at {CORPUS}")
        pytest.skip(f"shared corpus not found at {CORPUS} (set FRAMEVET_SHARED)")
    return CORPUS
