"""Known findings: baselines by fingerprint and `framevet: ignore[RULE]` comments in sources."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ROOT, fv

EXAMPLE = ROOT / "examples" / "entry-stubs.S"


def _copy(tmp: Path) -> Path:
    src = tmp / "stubs.S"
    src.write_text(EXAMPLE.read_text())
    return src


def test_a_baseline_reports_only_new_findings(tmp_path: Path) -> None:
    src = _copy(tmp_path)
    base = tmp_path / "base.json"
    w = fv("check", "--profile", "kernel", "--write-baseline", str(base), str(src))
    assert w.returncode == 0 and w.stdout.count("[caller-frame-write]") == 2
    data = json.loads(base.read_text())
    assert len(data["findings"]) == 10 and data["version"] == "framevet/v1"
    same = fv("check", "--profile", "kernel", "--baseline", str(base), str(src))
    assert same.returncode == 0 and same.stdout == ""
    assert "no findings in 1 input (10 suppressed)" in same.stderr
    # a new bug in a new function, with every old finding moved down by eight lines
    src.write_text(".text\n.globl fresh\n.type fresh,@function\nfresh:\n push %rbx\n ret\n"
                   ".size fresh,.-fresh\n\n" + EXAMPLE.read_text())
    new = fv("check", "--profile", "kernel", "--baseline", str(base), str(src))
    assert new.returncode == 1
    assert [ln.split(": ")[2] for ln in new.stdout.splitlines() if not ln.startswith(" ")] \
        == ["fresh+0x1"]
    assert "10 suppressed)" in new.stderr


def test_a_bad_baseline_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text("[1, 2]")
    r = fv("check", "--profile", "kernel", "--baseline", str(bad), str(EXAMPLE))
    assert r.returncode == 2 and r.stderr.startswith(f"{bad}: error: not a framevet baseline")


def test_inline_ignore_comment_suppresses_that_rule_on_that_line(tmp_path: Path) -> None:
    src = _copy(tmp_path)
    text = src.read_text().replace(
        "\tmovq\t%r15, 0*8+8(%rsp)\n",
        "\tmovq\t%r15, 0*8+8(%rsp)\t# framevet: ignore[caller-frame-write]\n").replace(
        "\tmovq\t%rbx, 5*8+8(%rsp)\n",
        "\tmovq\t%rbx, 5*8+8(%rsp)\t# framevet: ignore[return-address-overwrite]\n")
    src.write_text(text)
    r = fv("check", "--profile", "kernel", str(src))
    hits = [ln for ln in r.stdout.splitlines() if "[caller-frame-write]" in ln]
    assert len(hits) == 1 and "save of rbx" in hits[0]     # the other rule id does not match
    assert "; 1 suppressed)" in r.stderr
    src.write_text(text.replace("ignore[return-address-overwrite]", "ignore[no-such-rule]"))
    r = fv("check", "--profile", "kernel", str(src))
    assert "warning: unknown rule id 'no-such-rule' in framevet: ignore[...]" in r.stderr
