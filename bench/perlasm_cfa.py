#!/usr/bin/env python3
"""OpenSSL's hand-written (perlasm) frames: false CFI findings and unknown CFA bytes.

For the perlasm members of an archive (default: Debian's ``libcrypto.a``, members
whose name matches ``--members``) and for linked images (default:
``libcrypto.so.3``) this script prints, in one run:

* the ``framevet cfi`` findings by rule, and every ``cfi-mismatch`` (each one is
  either a CFI bug explained in docs/cfi.md or a framevet defect);
* the byte-weighted agreement of ``framevet cfa`` with ``readelf -wF``, measured by
  the shared judge's ``tools/cfa_agree.py`` (``../shared``, or ``$FRAMEVET_SHARED``):
  bytes where the CFI has a rule, bytes where framevet's rule is the same text, and
  bytes where framevet says ``undefined``.  A linked image's rows are rewritten from
  ``SECTION+OFF`` to addresses first (the judge's tool compares readelf's pc values
  with the offsets of one ``.text``).

    .venv/bin/python bench/perlasm_cfa.py [-j N] [--archive A] [--members REGEX] [IMAGE...]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCHIVE = "/usr/lib/x86_64-linux-gnu/libcrypto.a"
IMAGE = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
#: OpenSSL names its perlasm objects after the script: aes-x86_64.o, rsaz-avx2.o, ...
MEMBERS = r"x86_64|avx"


def framevet(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-m", "framevet.cli", *args], capture_output=True,
                         text=True, check=False, env=env)
    if out.returncode not in (0, 1):
        sys.exit(f"perlasm_cfa.py: error: framevet {args[0]} failed: {out.stderr.strip()}")
    return out


def judge() -> Path:
    shared = Path(os.environ.get("FRAMEVET_SHARED", ROOT.parent / "shared"))
    tool = shared / "tools" / "cfa_agree.py"
    if not tool.exists():
        sys.exit(f"perlasm_cfa.py: error: {tool} not found (set FRAMEVET_SHARED)")
    return tool


def exec_sections(path: str) -> dict[str, int]:
    """Executable section name -> address (readelf -SW)."""
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True).stdout
    secs = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+"
                     r"[0-9a-f]+\s+(\S*)", line)
        if m and "X" in m.group(3):
            secs[m.group(1)] = int(m.group(2), 16)
    return secs


def agreement(path: str, linked: bool, tmp: Path) -> tuple[int, int, int]:
    """(agree, total, undefined) bytes, by the judge's tool."""
    rows = framevet("cfa", path).stdout
    if linked:
        secs = exec_sections(path)
        moved = []
        for line in rows.splitlines():
            m = re.match(r"^(\S+)\+([0-9a-fA-F]+): (.*)$", line)
            if m and m.group(1) in secs:
                moved.append((secs[m.group(1)] + int(m.group(2), 16), m.group(3)))
        rows = "".join(f".text+{a:x}: {r}\n" for a, r in sorted(moved))
    cand = tmp / (Path(path).name + ".cfa")
    cand.write_text(rows)
    out = subprocess.run([sys.executable, str(judge()), path, str(cand)], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def findings(paths: list[str], jobs: int) -> list[dict[str, object]]:
    out = framevet("cfi", "--format", "json", "--no-progress", "-j", str(jobs), *paths)
    return json.loads(out.stdout) if out.stdout.strip() else []


def report(title: str, paths: list[str], linked: bool, jobs: int, tmp: Path) -> None:
    t0 = time.time()
    fs = findings(paths, jobs)
    t1 = time.time()
    agree = total = undef = 0
    for p in paths:
        a, t, u = agreement(p, linked, tmp)
        agree, total, undef = agree + a, total + t, undef + u
    t2 = time.time()
    by_rule = collections.Counter(str(f["rule"]) for f in fs)
    print(f"== {title}: {len(paths)} file(s)")
    print(f"framevet cfi: {dict(sorted(by_rule.items()))} ({t1 - t0:.1f} s)")
    for f in fs:
        if f["rule"] == "cfi-mismatch":
            print(f"  cfi-mismatch {Path(str(f['file'])).name} {f['symbol']}+{f['offset']:#x}: "
                  f"{str(f['message'])[:160]}")
    print(f"framevet cfa vs readelf -wF, bytes where the CFI has a rule: {total}; "
          f"same rule {agree} ({100 * agree / max(total, 1):.2f} %); "
          f"undefined {undef} ({100 * undef / max(total, 1):.3f} %) ({t2 - t1:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", default=[IMAGE])
    ap.add_argument("--archive", default=ARCHIVE)
    ap.add_argument("--members", default=MEMBERS, help="regex on member names")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    a = ap.parse_args()
    judge()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.archive:
            ext = tmp / "ar"
            ext.mkdir()
            subprocess.run(["ar", "x", os.path.abspath(a.archive)], cwd=ext, check=True)
            objs = sorted(str(p) for p in ext.iterdir() if re.search(a.members, p.name))
            report(f"{a.archive} members matching /{a.members}/", objs, False, a.jobs, tmp)
        for image in a.images:
            report(image, [image], True, a.jobs, tmp)


if __name__ == "__main__":
    main()
