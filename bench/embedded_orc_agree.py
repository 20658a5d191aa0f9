#!/usr/bin/env python3
"""ORC agreement on kernel modules that still carry objtool's build-time ORC.

    python3 bench/embedded_orc_agree.py MODULE.ko... | --dir DIR [--sample N --seed S]

Distribution modules ship the ORC objtool generated per object file at build time
(``.orc_unwind``/``.orc_unwind_ip``).  For each module this scores framevet's ORC,
generated from the code alone, against that embedded ORC with
``../shared/tools/orc_agree.py`` (byte-weighted), and prints the modules below
100 %, the total and the count.  For example, with Debian's generic 6.1 image:

    apt-get download linux-image-6.1.0-50-amd64-unsigned
    dpkg -x linux-image-6.1.0-50-amd64-unsigned_*.deb img
    python3 bench/embedded_orc_agree.py --dir img/lib/modules
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import os
import random
import sys
import tempfile
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from framevet.load import load_path  # noqa: E402
from framevet.load.errors import InputError  # noqa: E402
from framevet.pipeline import Options, analyse  # noqa: E402
from framevet.unwind.orc import dump_text, generate  # noqa: E402
from framevet.unwind.orcread import dump_existing  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*")
    ap.add_argument("--dir")
    ap.add_argument("--sample", type=int)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    mods = list(args.modules)
    if args.dir:
        mods += sorted(glob.glob(os.path.join(args.dir, "**", "*.ko"), recursive=True))
    if args.sample:
        mods = random.Random(args.seed).sample(mods, min(args.sample, len(mods)))
    spec = importlib.util.spec_from_file_location(
        "orc_agree", os.path.join(ROOT, "..", "shared", "tools", "orc_agree.py"))
    assert spec and spec.loader
    agree_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agree_tool)
    total_a = total_t = scored = 0
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, cand_path = os.path.join(tmp, "ref.orc"), os.path.join(tmp, "cand.orc")
        for m in mods:
            try:
                obj = load_path(m)[0]
                ref = dump_existing(obj.elf)
            except InputError as exc:
                print(f"{m}: skipped ({exc.reason})")
                continue
            ctx = analyse(obj, Options(orc_only=True, all_warnings=False, objtool_only=True))
            with open(ref_path, "w") as fh:
                fh.write(ref)
            with open(cand_path, "w") as fh:
                fh.write(dump_text(ctx.prog, generate(ctx.prog, ctx.result)))
            out = io.StringIO()
            with redirect_stdout(out):
                agree_tool.main(m, ref_path, cand_path)
            a, t = map(int, out.getvalue().split())
            total_a, total_t, scored = total_a + a, total_t + t, scored + 1
            if a != t:
                print(f"{os.path.basename(m)}: {a}/{t} = {100 * a / t:.3f} %")
    print(f"modules scored: {scored}")
    print(f"agreement total: {total_a}/{total_t} bytes = {100 * total_a / max(total_t, 1):.4f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
