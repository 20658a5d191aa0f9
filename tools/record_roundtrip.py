#!/usr/bin/env python3
"""Record ``objtool --dump=orc`` of the objects framevet writes, for the round-trip test.

    python3 tools/record_roundtrip.py [--objtool PATH]

For each module in MODULES: ``framevet orc MOD.ko -o OUT`` then objtool 6.1 dumps OUT;
the dump is stored in tests/data/roundtrip/MOD.orc so the test runs without objtool.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus", "kmod")
OUT = os.path.join(ROOT, "tests", "data", "roundtrip")
MODULES = ["msr", "crc32c-intel", "aesni-intel", "kvm-intel"]
OBJTOOL = "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objtool", default=OBJTOOL)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for m in MODULES:
            out = os.path.join(tmp, f"{m}.ko")
            subprocess.run([sys.executable, "-m", "framevet.cli", "orc",
                            os.path.join(CORPUS, f"{m}.ko"), "-o", out], check=True)
            dump = subprocess.run([args.objtool, "--dump=orc", out], check=True,
                                  capture_output=True, text=True).stdout
            with open(os.path.join(OUT, f"{m}.orc"), "w") as fh:
                fh.write(dump)
            print(f"{m}: {dump.count(chr(10))} entries")


if __name__ == "__main__":
    main()
