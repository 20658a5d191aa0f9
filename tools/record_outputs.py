#!/usr/bin/env python3
"""Record framevet's outputs on corpus modules and libc.a members, for the
byte-identical test (tests/test_recorded_outputs.py).

    python3 tools/record_outputs.py            # re-record every case
    python3 tools/record_outputs.py --check    # compare only, print what differs

Each case is one command line of ``framevet`` run on one input; its stdout, stderr
and exit status are stored in ``tests/data/outputs/CASE.txt``.  Re-record (and
review the diff) when a change is meant to change an output; a change that is
only meant to make framevet faster must leave every recording as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "outputs"
SHARED = Path(os.environ.get("FRAMEVET_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus" / "kmod"
LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")

#: corpus modules: C, hand-written crypto assembly, Xen drivers, KVM's VMX entry
MODULES = ["kvm-intel", "aesni-intel", "crc32c-intel", "chacha-x86_64", "sch_qfq",
           "xen-netfront", "msr", "camellia-x86_64", "poly1305-x86_64", "raid10"]
#: libc.a members: C with switch tables and landing pads, hand-written assembly
LIBC_MEMBERS = ["vfprintf-internal.o", "memmove-ssse3.o", "strcasecmp_l-sse4_2.o",
                "fputc.o", "getcwd.o", "setcontext.o", "sigaction.o", "__longjmp.o",
                "memset-avx2-unaligned-erms.o", "qsort.o", "clone.o"]

KMOD_COMMANDS = {
    "orc": ["orc", "--dump"],
    "check": ["check", "-j", "1", "--no-progress", "--sls", "--retpoline", "--rethunk",
              "--uaccess", "--format", "json", "--fail-on", "never"],
    "objtool": ["check", "-j", "1", "--no-progress", "--objtool-only", "--module", "--sls",
                "--retpoline", "--rethunk", "--format", "objtool", "--fail-on", "never"],
}
USER_COMMANDS = {
    "cfa": ["cfa"],
    "cfi": ["cfi", "-j", "1", "--no-progress", "--format", "json", "--fail-on", "never"],
    "check": ["check", "-j", "1", "--no-progress", "--profile", "user", "--format", "json",
              "--fail-on", "never"],
}


#: the bundled example (assembled with gcc; its framevet.toml is read beside it)
EXAMPLE_COMMANDS = {
    "check": ["check", "-j", "1", "--no-progress", "--profile", "kernel", "--format", "json",
              "--fail-on", "never"],
    "orc": ["orc", "--dump"],
    "cfa": ["cfa", "--profile", "kernel"],
}


def cases() -> list[tuple[str, list[str], str]]:
    """(case name, framevet arguments without the input, input file name)."""
    out = [(f"example-entry-stubs-{what}", argv, "entry-stubs.S")
           for what, argv in EXAMPLE_COMMANDS.items()]
    for m in MODULES:
        for what, argv in KMOD_COMMANDS.items():
            out.append((f"kmod-{m}-{what}", argv, f"{m}.ko"))
    for m in LIBC_MEMBERS:
        for what, argv in USER_COMMANDS.items():
            out.append((f"libc-{m[:-2]}-{what}", argv, m))
    return out


@contextlib.contextmanager
def inputs() -> Iterator[Path]:
    """A directory holding every input under its plain name (paths are part of the
    output, so every case runs in its input's directory on a relative name).  The
    example and its framevet.toml sit in ``example/``, apart from the other inputs,
    which the declarations are not about."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "example").mkdir()
        (d / "objects").mkdir()
        for f in ("entry-stubs.S", "framevet.toml"):
            (d / "example" / f).symlink_to(ROOT / "examples" / f)
        for m in MODULES:
            (d / "objects" / f"{m}.ko").symlink_to(CORPUS / f"{m}.ko")
        for m in LIBC_MEMBERS:
            (d / "objects" / m).write_bytes(subprocess.run(
                ["ar", "p", str(LIBC), m], check=True, capture_output=True).stdout)
        yield d


def folder(case: str) -> str:
    """The folder of ``inputs()`` that holds the case's input."""
    return "example" if case.startswith("example-") else "objects"


def run(argv: list[str], name: str, where: Path) -> str:
    """framevet's stdout, stderr and exit status for ``framevet ARGV NAME`` in ``where``."""
    from framevet.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([*argv, name])
    finally:
        os.chdir(cwd)
    return (f"$ framevet {' '.join(argv)} {name}\n--- exit {status}\n--- stderr\n"
            f"{err.getvalue()}--- stdout\n{out.getvalue()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    ap.add_argument("cases", nargs="*", help="only these cases (default: all)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    bad = 0
    with inputs() as where:
        for case, argv, name in cases():
            if args.cases and case not in args.cases:
                continue
            text = run(argv, name, where / folder(case))
            path = OUT / f"{case}.txt"
            if args.check:
                old = path.read_text() if path.exists() else ""
                if old != text:
                    bad += 1
                    sys.stdout.writelines(difflib.unified_diff(
                        old.splitlines(True), text.splitlines(True), str(path), "now", n=1))
            else:
                path.write_text(text)
                print(f"{case}: {len(text)} bytes")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
