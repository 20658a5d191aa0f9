#!/usr/bin/env python3
"""ORC agreement with objtool's build-time ORC over the shared corpus (issue 2's metric).

    python3 bench/orc_agreement.py [--roundtrip] [--objtool PATH]

For every MOD.ko of ../shared/corpus/kmod: ``framevet orc --dump MOD.ko`` scored with
``../shared/tools/orc_agree.py MOD.ko MOD.embedded.orc <framevet dump>`` (byte-weighted).
Prints each module below 100 %, the minimum, and the total.  With --roundtrip it also
writes each module's ORC (``framevet orc MOD.ko -o OUT``) and checks that
``objtool --dump=orc OUT`` prints exactly framevet's dump.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
OBJTOOL = "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool"


def framevet(*args: str) -> str:
    exe = shutil.which("framevet")
    cmd = [exe] if exe else [sys.executable, "-m", "framevet.cli"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roundtrip", action="store_true")
    ap.add_argument("--objtool", default=OBJTOOL)
    args = ap.parse_args()
    agree_tool = os.path.join(SHARED, "tools", "orc_agree.py")
    modules = sorted(glob.glob(os.path.join(SHARED, "corpus", "kmod", "*.ko")))
    total_a = total_t = 0
    worst = (2.0, "")
    same = 0
    with tempfile.TemporaryDirectory() as tmp:
        for ko in modules:
            name = os.path.basename(ko)[:-3]
            dump = framevet("orc", "--dump", ko)
            cand = os.path.join(tmp, f"{name}.orc")
            with open(cand, "w") as fh:
                fh.write(dump)
            out = subprocess.run([sys.executable, agree_tool, ko, ko[:-3] + ".embedded.orc", cand],
                                 check=True, capture_output=True, text=True).stdout
            a, t = map(int, out.split())
            total_a, total_t = total_a + a, total_t + t
            worst = min(worst, (a / t if t else 1.0, name))
            if a != t:
                print(f"{name}: {a}/{t} = {100 * a / t:.3f} %")
            if args.roundtrip:
                written = os.path.join(tmp, f"{name}.out.ko")
                framevet("orc", ko, "-o", written)
                back = subprocess.run([args.objtool, "--dump=orc", written], check=True,
                                      capture_output=True, text=True).stdout
                if back == dump:
                    same += 1
                else:
                    print(f"{name}: objtool reads framevet's ORC back differently")
    print(f"modules: {len(modules)}")
    print(f"agreement total: {total_a}/{total_t} bytes = {100 * total_a / total_t:.3f} %")
    print(f"lowest module: {worst[1]} {100 * worst[0]:.3f} %")
    if args.roundtrip:
        print(f"round trip identical under objtool --dump=orc: {same}/{len(modules)}")


if __name__ == "__main__":
    main()
