#!/usr/bin/env python3
"""Record objtool 6.1's answers for the assembled fixtures (the test oracle).

For every ``.S`` in a rule folder of ``tests/fixtures/rules.json`` or in
``tests/fixtures/stack-forms/`` (or the FILES given) this script

1. assembles the file with ``gcc -c`` into a temporary directory and keeps the
   pristine object next to the source as ``<name>.o`` (the exact bytes objtool
   saw, so tests need neither objtool nor the same assembler version);
2. runs objtool on a fresh copy of that object once per switch set, from inside
   the temporary directory with the relative name ``<name>.o``, so the warning
   lines read ``<name>.o: warning: objtool: ...``;
3. after every switch set that contains ``--orc`` runs ``objtool --dump=orc``;
4. writes ``<name>.objtool.json`` next to the source.

JSON layout (keys sorted, two-space indent, trailing newline)::

    {
      "fixture": "<rule-id>/<name>.S",
      "orc": "<--dump=orc text after plain --orc>",
      "switches": {
        "<switch string>": {
          "exit": N,                 # objtool's exit status
          "warnings": ["..."],       # stderr lines, in objtool's order
          "stdout": ["..."],         # only when objtool printed to stdout
          "orc": "..."               # only when this set contains --orc and
                                     # its dump differs from the top-level "orc"
        }
      }
    }

Switch sets: the five base sets below for every fixture, plus the sets listed
for the fixture's folder in ``FOLDER_SWITCHES``, plus any set named in the
source by a line containing ``objtool-switches: <switch string>``.

``--verify`` checks the recorded JSON files (no objtool needed) against
``tests/fixtures/rules.json``: a triggering fixture must make objtool print its
folder's message under one of the rule's switch sets (or a set its source
names), an ``ok-`` fixture must never print it and must be warning-free under
the rule's switch sets (unless its source says ``objtool-expect-other-warnings``),
and ``stack-forms`` fixtures must be warning-free under --orc.

Usage: python3 tools/record_objtool.py [--objtool PATH] [--verify] [FILES...]
Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RULES_JSON = FIXTURES / "rules.json"
DEFAULT_OBJTOOL = "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool"

BASE_SWITCHES = [
    "--orc",
    "--orc --stackval",
    "--orc --sls",
    "--orc --retpoline --rethunk",
    "--orc --uaccess",
]

# --noinstr, --ibt and --unret refuse to run without --link on objtool 6.1
# ("error: objtool: --noinstr requires --link", exit 1); the first set of each
# group records that refusal, the others what a --link run prints.
NOINSTR_SWITCHES = ["--noinstr", "--noinstr --link", "--orc --noinstr --link"]
IBT_SWITCHES = ["--ibt", "--ibt --link", "--orc --ibt --link"]
UNRET_SWITCHES = [
    "--unret --rethunk",
    "--unret --rethunk --link",
    "--orc --unret --rethunk --link",
]

FOLDER_SWITCHES: dict[str, list[str]] = {
    "call-leaves-noinstr": NOINSTR_SWITCHES,
    "pv-ops-target-instrumented": NOINSTR_SWITCHES,
    "return-with-instrumentation-enabled": NOINSTR_SWITCHES,
    "relocation-to-non-endbr": IBT_SWITCHES,
    "data-relocation-to-non-endbr": IBT_SWITCHES,
    "iret-regs-hint-without-endbr": IBT_SWITCHES,
    "ret-before-untrain": UNRET_SWITCHES,
    "early-indirect-call": UNRET_SWITCHES,
    "unret-validation-failed": UNRET_SWITCHES,
}

DIRECTIVE = re.compile(r"objtool-switches:\s*([^*\n]+?)\s*(?:\*/)?\s*$")


def switch_sets(src: Path) -> list[str]:
    sets = list(BASE_SWITCHES)
    sets += FOLDER_SWITCHES.get(src.parent.name, [])
    for line in src.read_text().splitlines():
        m = DIRECTIVE.search(line)
        if m:
            sets.append(" ".join(m.group(1).split()))
    seen: set[str] = set()
    out = []
    for s in sets:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("OBJTOOL_ARGS", None)  # objtool reads extra options from here
    env["LC_ALL"] = "C"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def lines(text: str, tmp: Path, objname: str) -> list[str]:
    text = text.replace(str(tmp / objname), objname).replace(str(tmp) + "/", "")
    return [ln for ln in text.splitlines() if ln.strip()]


def record_one(src: Path, objtool: str) -> dict[str, Any]:
    name = src.stem
    objname = name + ".o"
    with tempfile.TemporaryDirectory(prefix="framevet-rec-") as td:
        tmp = Path(td)
        pristine = tmp / "pristine.o"
        asm = run(["gcc", "-c", str(src), "-o", str(pristine)], tmp)
        if asm.returncode != 0:
            raise RuntimeError(f"{src}: gcc -c failed:\n{asm.stderr}")
        shutil.copyfile(pristine, src.with_suffix(".o"))

        results: dict[str, dict[str, Any]] = {}
        for sw in switch_sets(src):
            work = tmp / "run"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            shutil.copyfile(pristine, work / objname)
            p = run([objtool, *sw.split(), objname], work)
            entry: dict[str, Any] = {
                "exit": p.returncode,
                "warnings": lines(p.stderr, work, objname),
            }
            out = lines(p.stdout, work, objname)
            if out:
                entry["stdout"] = out
            if "--orc" in sw.split():
                d = run([objtool, "--dump=orc", objname], work)
                dump = d.stdout
                if d.returncode != 0 or d.stderr.strip():
                    dump += "".join(f"[dump exit {d.returncode}] {ln}\n"
                                    for ln in lines(d.stderr, work, objname))
                entry["_orc"] = dump
            results[sw] = entry

    top = results.get("--orc", {}).get("_orc", "")
    for entry in results.values():
        dump = entry.pop("_orc", None)
        if dump is not None and dump != top:
            entry["orc"] = dump
    return {
        "fixture": f"{src.parent.name}/{src.name}",
        "orc": top,
        "switches": results,
    }


def summary(rec: dict[str, Any]) -> str:
    parts = []
    for sw, e in rec["switches"].items():
        n = len(e["warnings"])
        if n or e["exit"]:
            parts.append(f"[{sw}]={n}" + (f"/exit{e['exit']}" if e["exit"] else ""))
    return " ".join(parts) if parts else "clean"


def find_fixtures(args: list[str]) -> list[Path]:
    """The FILES given, else every .S in a rule folder of rules.json or stack-forms/.

    Other folders under tests/fixtures/ (e.g. emulation fixtures) are not ours.
    """
    if args:
        return [Path(a).resolve() for a in args]
    folders = set(json.loads(RULES_JSON.read_text())["rules"]) | {"stack-forms"}
    return sorted(p for p in FIXTURES.glob("*/*.S") if p.parent.name in folders)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def verify(files: list[Path]) -> int:
    """Check recorded JSON against rules.json (see module docstring)."""
    rules = json.loads(RULES_JSON.read_text())["rules"]
    bad = 0
    for src in files:
        js = src.parent / (src.stem + ".objtool.json")
        if not js.exists():
            print(f"{rel(src)}: FAIL no recorded json")
            bad += 1
            continue
        rec = json.loads(js.read_text())
        text = src.read_text()
        folder = src.parent.name
        problems = []
        if folder == "stack-forms":
            w = rec["switches"]["--orc"]["warnings"]
            if w:
                problems.append(f"--orc not clean: {w}")
        elif folder not in rules:
            problems.append("folder has no entry in rules.json")
        else:
            rule = rules[folder]
            rx = re.compile(rule["regex"])
            hits = {sw: [w for w in e["warnings"] if rx.search(w)]
                    for sw, e in rec["switches"].items()}
            extra = [" ".join(m.group(1).split())
                     for m in map(DIRECTIVE.search, text.splitlines()) if m]
            if src.stem.startswith("ok-"):
                for sw, h in hits.items():
                    if h:
                        problems.append(f"near-miss triggers under [{sw}]: {h[0]}")
                if "objtool-expect-other-warnings" not in text:
                    for sw in rule["switches"]:
                        e = rec["switches"].get(sw)
                        if e and e["warnings"]:
                            problems.append(
                                f"near-miss not clean under [{sw}]: {e['warnings'][0]}")
            else:
                want = rule["switches"] + extra
                if not any(hits.get(sw) for sw in want):
                    problems.append(f"message not printed under any of {want}")
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        bad += bool(problems)
        print(f"{rel(src)}: {status}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objtool", default=os.environ.get("OBJTOOL", DEFAULT_OBJTOOL),
                    help="objtool 6.1 binary (default: %(default)s)")
    ap.add_argument("--verify", action="store_true",
                    help="check the recorded JSON against tests/fixtures/rules.json")
    ap.add_argument("files", nargs="*", help="fixture .S files (default: all)")
    a = ap.parse_args(argv)

    files = find_fixtures(a.files)
    if a.verify:
        return verify(files)

    if not (os.path.isfile(a.objtool) and os.access(a.objtool, os.X_OK)):
        print(f"objtool not found at {a.objtool} (see --objtool)", file=sys.stderr)
        return 2
    status = 0
    for src in files:
        try:
            rec = record_one(src, a.objtool)
        except RuntimeError as e:
            print(f"{rel(src)}: ERROR {e}")
            status = 1
            continue
        out = src.parent / (src.stem + ".objtool.json")
        out.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
        print(f"{rel(src)}: {summary(rec)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
