#!/usr/bin/env python3
"""Account for every objtool 6.1 warning of the shared corpus (MOD.warn).

    python3 bench/corpus_warnings.py

objtool was re-run on the linked modules, which have lost their ``.discard.*``
annotations.  For each warning this prints whether framevet reproduces it, or why
it is an artefact of a lost annotation, checked on the bytes:

* ``unreachable instruction`` right after a ``ud2`` that ``__bug_table`` flags
  BUGFLAG_WARNING: WARN() continues after its ud2; the build marked it with
  ``.discard.reachable``, which the link dropped;
* ``unannotated intra-function call``: a call to a local label (RSB stuffing);
  the build marked it with ``.discard.intra_function_calls``.
"""

from __future__ import annotations

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from framevet.cfg.build import _bug_entries  # noqa: E402
from framevet.decode import insn as d  # noqa: E402
from framevet.load import load_path  # noqa: E402
from framevet.pipeline import Options, analyse  # noqa: E402

CORPUS = os.path.join(os.environ.get("FRAMEVET_SHARED", os.path.join(ROOT, "..", "shared")),
                      "corpus", "kmod")
LINE = re.compile(r"^(?P<file>[^:]+): warning: objtool: (?P<where>[^:]+): (?P<msg>.*)$")


def classify(path: str, where: str, msg: str) -> tuple[str, str]:
    obj = load_path(path)[0]
    ctx = analyse(obj, Options(objtool_only=True))
    prog = ctx.prog
    texts = {f.objtool_text().split(": warning: objtool: ", 1)[1] for f in ctx.findings}
    if f"{where}: {msg}" in texts:
        return "reproduced", "framevet reports the same warning"
    name, _, off = where.rpartition("+")
    sec_off = None
    for s in obj.elf.symbols:
        if s.name == name and s.defined:
            sec_off = (s.shndx, s.offset + int(off, 16))
            break
    if sec_off is None:  # section+offset form
        sec = obj.elf.section(name)
        sec_off = (sec.index, int(off, 16)) if sec is not None else None
    if sec_off is None:
        return "UNEXPLAINED", "location not found"
    g = prog.gid(*sec_off)
    if msg == "unreachable instruction":
        prev = g - 1
        bug = obj.elf.section("__bug_table")
        warn_ud2 = set()
        if bug is not None:
            warn_ud2 = {prog.gid(*a) for a, flags in _bug_entries(prog, bug.index, bug.data)
                        if flags & 1}
        if prev >= 0 and prog.kind[prev] == d.BUG and prev in warn_ud2:
            if ctx.result.visited[g]:
                return ("lost annotation", "follows WARN()'s ud2 (__bug_table BUGFLAG_WARNING; "
                        ".discard.reachable dropped at link time): framevet walks on")
    if msg == "unannotated intra-function call" and g >= 0 and g in prog.intra_calls:
        return ("lost annotation", "RSB-stuffing call to a local label "
                "(.discard.intra_function_calls dropped at link time): framevet follows it")
    return "UNEXPLAINED", ""


def main() -> int:
    rows = []
    for warn in sorted(glob.glob(os.path.join(CORPUS, "*.warn"))):
        ko = warn[:-5] + ".ko"
        with open(warn) as fh:
            lines = fh.read().splitlines()
        for line in lines:
            m = LINE.match(line)
            if not m:
                continue
            verdict, why = classify(ko, m["where"], m["msg"])
            rows.append((os.path.basename(ko), m["where"], m["msg"], verdict, why))
    for r in rows:
        print(" | ".join(r))
    bad = [r for r in rows if r[3] == "UNEXPLAINED"]
    print(f"{len(rows)} warnings: {len(rows) - len(bad)} accounted for, {len(bad)} unexplained")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
