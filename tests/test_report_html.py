"""The HTML report: annotated disassembly, plot, inline findings; rendered in Chromium."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, fv

EXAMPLE = ROOT / "examples" / "entry-stubs.S"
MISMATCH = FIXTURES / "stack-state-mismatch" / "cfa.S"


def _report(tmp: Path, *extra: str) -> str:
    out = tmp / "r.html"
    r = fv("check", "--format", "html", "-o", str(out), str(EXAMPLE), str(MISMATCH), *extra)
    assert r.returncode == 1, r.stderr
    return out.read_text()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing (.ci/run installs Debian's chromium)")
    pytest.skip("chromium not installed (.ci/run installs it)")


def test_annotated_disassembly_with_state_plot_and_findings(tmp_path: Path) -> None:
    page = _report(tmp_path)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page) and "<link" not in page
    assert page.count("<section class='function'") == 4   # the functions with findings
    assert "<th>CFA and saved registers</th>" in page
    assert "<td class='state'>cfa=rsp+24 rbx=cfa-16</td>" in page
    assert "<td class='asm'>lea gpr_switch_back(%rip),%rcx</td>" in page
    assert page.count("<svg class='plot'") == 4 and "<polyline class='depth'" in page
    assert "data-rule='stack-state-mismatch'" in page
    assert "class='insn path1" in page and "class='insn path2" in page   # both paths
    assert "<td class='line'>45</td>" in page and "<td class='src'>ret</td>" in page
    every = _report(tmp_path, "--all")
    assert every.count("<section class='function'") == 6   # + xen_page_fault, load_guest_gprs


def test_abi_trace_and_cfi_fix_appear(tmp_path: Path) -> None:
    out = tmp_path / "cfi.html"
    fv("cfi", "--format", "html", "-o", str(out), str(FIXTURES / "cfi-mismatch" /
                                                     "push-no-cfi.S"))
    assert "corrected CFI here:" in out.read_text() and ".cfi_def_cfa_offset 16" in \
        out.read_text()
    emu = FIXTURES / "emulate" / "save-extra-regs.S"
    out = tmp_path / "diff.html"
    fv("diff", f"{emu}:extra_regs_push", f"{emu}:extra_regs_slots", "--runs", "2",
       "--format", "html", "-o", str(out))
    trace = re.search(r"<pre class='detail'>(.*?)</pre>", out.read_text(), re.S)
    assert trace and "A: extra_regs_push+0x47: ret" in trace.group(1)


def test_renders_and_filters_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    _report(tmp_path)
    page = (tmp_path / "r.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,900", page],
                   capture_output=True, timeout=120, check=False)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 900)
    # the page's own script filters by rule (read from the address) and counts
    dom = subprocess.run([*flags, "--dump-dom", page + "#rule=return-modified-frame"],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert '<span id="shown">2</span>' in dom
    shown = re.findall(r'<tr class="finding error" data-rule="([a-z-]+)"[^>]*?>', dom)
    hidden = re.findall(r'<tr class="finding error" data-rule="([a-z-]+)"[^>]*hidden', dom)
    assert set(shown) - set(hidden) == {"return-modified-frame"}
    assert "stack-state-mismatch" in hidden
