"""The text report: compiler-style lines problem matchers parse, sorted, folded, summed up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, ROOT, assemble, fv

SEEDS = FIXTURES / "seeds"
EXAMPLE = ROOT / "examples" / "entry-stubs.S"
#: the example and the seeds are kernel entry code with no kernel section to tell
KERNEL = ("--profile", "kernel")
#: the gcc problem matcher GitHub Actions workflows register (ammaraskar/gcc-problem-matcher,
#: gcc_matcher.json): the column is required
GCC_MATCHER = re.compile(r"^(.*):(\d+):(\d+):\s+(?:fatal\s+)?(warning|error):\s+(.*)$")
#: VS Code's $gcc matcher (vscode-cpptools), which many CI matchers copy: column optional
VSCODE_GCC = re.compile(r"^(.*?):(\d+):(\d*):?\s+(?:fatal\s+)?(warning|error):\s+(.*)$")
#: the form for inputs without a source line
NO_SOURCE = re.compile(r"^(\S+): (error|warning|note): (\S+\+0x[0-9a-f]+) \(0x([0-9a-f]+)\): "
                       r"(.*) \[([a-z0-9-]+)\]$")


def _finding_lines(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if not ln.startswith(" ")]


def test_gcc_problem_matcher_reads_every_finding_line_of_an_assembly_input() -> None:
    for src in (EXAMPLE, *sorted(SEEDS.glob("*.S"))):
        r = fv("check", *KERNEL, str(src))
        lines = _finding_lines(r.stdout)
        for line in lines:
            m = GCC_MATCHER.match(line)
            assert m, line
            assert VSCODE_GCC.match(line), line
            assert m.group(1) == str(src)
            # the column is where the instruction starts on its line
            text = src.read_text().splitlines()[int(m.group(2)) - 1]
            assert text[int(m.group(3)) - 1:].split()[0].isalpha(), (line, text)
            assert re.search(r": [a-z_]+\+0x[0-9a-f]+: .* \[[a-z0-9-]+\]$", line), line
        numbers = [int(GCC_MATCHER.match(ln).group(2)) for ln in lines]  # type: ignore[union-attr]
        assert numbers == sorted(numbers), src
        for line in r.stdout.splitlines():
            if line.startswith(" "):
                assert not GCC_MATCHER.match(line), line


def test_notes_match_the_problem_matcher_and_still_read_as_notes() -> None:
    src = FIXTURES / "cfi-mismatch" / "unmodelled-loop-slot.S"
    r = fv("cfi", str(src))
    lines = _finding_lines(r.stdout)
    notes = [ln for ln in lines if "[cfa-unmodelled]" in ln]
    assert notes and all(GCC_MATCHER.match(ln) for ln in lines)
    for line in notes:
        m = GCC_MATCHER.match(line)
        assert m is not None and m.group(4) == "warning"
        assert m.group(5).startswith("note: ploop+0x")
    found = json.loads(fv("cfi", "--format", "json", str(src)).stdout)
    assert {f["severity"] for f in found if f["rule"] == "cfa-unmodelled"} == {"note"}
    # a note does not fail the run unless asked to
    assert r.returncode == 0 and "1 note" in r.stderr


def _fv_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framevet.cli", *args], capture_output=True,
                          text=True, check=False, timeout=120, cwd=folder)


def test_c_objects_get_file_line_and_column_from_debug_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int ext(int);\nint f(int x)\n{\n\tint r = ext(x);\n"
                   "\t__asm__ volatile(\"push %%rax\" ::: \"memory\");\n"
                   "\treturn r + 1;\n}\n")
    obj = tmp_path / "bad.o"
    subprocess.run([shutil.which("gcc") or "gcc", "-g", "-O1", "-c", "-o", str(obj),
                    str(src)], check=True, cwd=tmp_path)
    lib = tmp_path / "libbad.a"
    subprocess.run(["ar", "rc", str(lib), str(obj)], check=True)
    for path in (obj, lib):
        r = _fv_in(tmp_path, "check", "--profile", "kernel", str(path))
        lines = _finding_lines(r.stdout)
        assert lines, r.stderr
        for line in lines:
            m = GCC_MATCHER.match(line)
            assert m, line
            # the ret the compiler put on the closing brace, as gcc's own line table says
            assert (m.group(1), m.group(2), m.group(3)) == ("bad.c", "7", "1"), line
        assert "f+0x" in lines[0] and "[return-modified-frame]" in lines[0]
    # the HTML listing shows the C source beside the instructions
    page = _fv_in(tmp_path, "check", "--profile", "kernel", "--format", "html", str(obj)).stdout
    assert "<td class='line'>6</td><td class='src'>return r + 1;</td>" in page
    stripped = tmp_path / "nodebug.o"
    subprocess.run([shutil.which("gcc") or "gcc", "-O1", "-c", "-o", str(stripped), str(src)],
                   check=True)
    assert NO_SOURCE.match(_finding_lines(fv("check", "--profile", "kernel",
                                             str(stripped)).stdout)[0])


def test_object_without_source_lines_names_symbol_and_address() -> None:
    obj = assemble(EXAMPLE)
    r = fv("check", *KERNEL, str(obj))
    lines = _finding_lines(r.stdout)
    assert lines
    addresses = []
    for line in lines:
        m = NO_SOURCE.match(line)
        assert m, line
        assert m.group(1) == str(obj)
        addresses.append(int(m.group(4), 16))
    assert addresses == sorted(addresses)
    assert any(ln.startswith(f"{obj}: error: gpr_switch_old+0x4 (0x26): store to the return "
                             "address slot") for ln in lines)


def test_follow_ons_fold_under_their_root_cause() -> None:
    src = FIXTURES / "return-modified-frame" / "push-no-pop.S"
    r = fv("check", *KERNEL, str(src))
    lines = r.stdout.splitlines()
    assert len(_finding_lines(r.stdout)) == 1
    assert lines[0].endswith("return with modified stack frame [return-modified-frame]")
    assert "+ 2 follow-on findings at this instruction (callee-saved-clobber, " \
           "return-address-overwrite); --explain lists them" in lines[1]
    assert "3 errors in 1 input (2 folded as follow-ons)" in r.stderr
    explained = fv("check", *KERNEL, "--explain", str(src)).stdout
    assert "2 follow-on findings at this instruction:" in explained
    assert "[callee-saved-clobber]" in explained and "[return-address-overwrite]" in explained
    # machine-readable formats keep every finding
    found = json.loads(fv("check", *KERNEL, "--format", "json", str(src)).stdout)
    rules = [i["rule"] for i in found]
    assert sorted(rules) == ["callee-saved-clobber", "return-address-overwrite",
                             "return-modified-frame"]


def test_summary_quiet_and_colour() -> None:
    r = fv("check", *KERNEL, str(EXAMPLE))
    assert r.stderr.strip().splitlines()[-1].startswith("framevet: 8 errors in 1 input")
    assert "\033[" not in r.stdout       # not a terminal: no colour
    q = fv("check", *KERNEL, "--quiet", str(EXAMPLE))
    assert q.stderr == "" and q.stdout == r.stdout and q.returncode == 1
    c = fv("check", *KERNEL, "--color", "always", str(EXAMPLE))
    assert "\033[1;31merror:\033[0m" in c.stdout
    clean = fv("check", *KERNEL, str(SEEDS / "fred-frame-builder-fixed.S"))
    assert clean.returncode == 0 and "no findings in 1 input" in clean.stderr


def test_objtool_format_is_unchanged() -> None:
    obj = assemble(FIXTURES / "return-modified-frame" / "push-no-pop.S")
    r = fv("check", *KERNEL, "--format", "objtool", str(obj))
    assert r.stdout.splitlines()[0] == \
        f"{obj}: warning: objtool: f+0x11: return with modified stack frame"
    assert len(r.stdout.splitlines()) == 3 and r.stderr == ""


def test_unwritable_output_is_named() -> None:
    r = fv("check", *KERNEL, "-o", "/nonexistent-dir/r.txt", str(EXAMPLE))
    assert r.returncode == 2
    assert r.stderr.strip() == ("/nonexistent-dir/r.txt: error: cannot write the report: "
                                "No such file or directory")
