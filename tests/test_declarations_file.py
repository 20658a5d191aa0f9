"""framevet.toml as a file: found in the nearest parent, validated strictly, shown by `config`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from conftest import ROOT, fv

from framevet.cfg.declarations import FUNCTION_KEYS, FunctionDecl

EXAMPLE = ROOT / "examples" / "entry-stubs.S"
GOOD = '[xen_page_fault]\nentry = "iret"\nextra_words = 2\n' \
       '[load_guest_gprs]\nclobbers = ["rbx", "rbp", "r12"]\n'


def _tree(tmp: Path, toml: str) -> Path:
    """examples/entry-stubs.S two folders below a framevet.toml."""
    deep = tmp / "a" / "b"
    deep.mkdir(parents=True)
    shutil.copy(EXAMPLE, deep / "entry-stubs.S")
    (tmp / "framevet.toml").write_text(toml)
    return deep / "entry-stubs.S"


def _rules(stdout: str) -> set[tuple[str, str]]:
    out = set()
    for line in stdout.splitlines():
        if not line.startswith(" ") and "[" in line:
            symbol = line.split(": ")[2].split("+")[0]
            out.add((symbol, line.rsplit("[", 1)[1].rstrip("]")))
    return out


def test_the_nearest_parent_framevet_toml_applies(tmp_path: Path) -> None:
    src = _tree(tmp_path, GOOD)
    found = _rules(fv("check", str(src)).stdout)
    assert not any(sym in ("xen_page_fault", "load_guest_gprs") for sym, _ in found)
    (tmp_path / "framevet.toml").unlink()
    found = _rules(fv("check", str(src)).stdout)
    assert ("xen_page_fault", "sibling-call-modified-frame") in found
    assert ("load_guest_gprs", "callee-saved-clobber") in found


def test_a_typo_is_an_error_naming_file_line_and_key(tmp_path: Path) -> None:
    src = _tree(tmp_path, GOOD.replace("clobbers", "clobber"))
    r = fv("check", str(src))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (f"{tmp_path / 'framevet.toml'}:5: error: [load_guest_gprs] "
                                "unknown key 'clobber' (did you mean 'clobbers'?)")
    # a key written as a sub-table is named on its own header's line
    (tmp_path / "framevet.toml").write_text(GOOD + "\n[load_guest_gprs.noretrun]\nx = 1\n")
    line = (GOOD + "\n").count("\n") + 1
    r = fv("check", str(src))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{tmp_path / 'framevet.toml'}:{line}: error: "
                                "[load_guest_gprs] unknown key 'noretrun' (did you mean "
                                "'noreturn'?)")


def test_bad_values_are_errors(tmp_path: Path) -> None:
    cases = {
        GOOD.replace('"iret"', '"irq"'): ":2: error: [xen_page_fault] entry: 'irq' is not one "
                                          "of iret, regs, call",
        GOOD.replace("= 2", "= true"): ":3: error: [xen_page_fault] extra_words: expected an "
                                       "integer, got True",
        GOOD.replace('"r12"', '"r21"'): ":5: error: [load_guest_gprs] clobbers: unknown value "
                                        "'r21'",
        GOOD + "stray = 1\n": ":6: error: [load_guest_gprs] unknown key 'stray'",
        "top = 3\n" + GOOD: ":1: error: top must be a table",
        GOOD + "[framevet]\nintra_function_call = []\n": ":7: error: [framevet] unknown key",
    }
    for text, expected in cases.items():
        shutil.rmtree(tmp_path / "a", ignore_errors=True)
        src = _tree(tmp_path, text)
        r = fv("check", str(src))
        assert r.returncode == 2, text
        assert expected in r.stderr, (text, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_declaration_no_input_defines_is_a_warning(tmp_path: Path) -> None:
    src = _tree(tmp_path, GOOD + "[no_such_function]\nnoreturn = true\n")
    r = fv("check", str(src))
    assert r.returncode == 1        # the example's real findings, nothing more
    assert (f"{tmp_path / 'framevet.toml'}:6: warning: [no_such_function] declares a "
            "function that none of the inputs defines") in r.stderr
    assert "xen_page_fault" not in r.stderr


def test_unknown_rule_ids_are_errors() -> None:
    r = fv("check", "--disable", "caller-frame-writes", str(EXAMPLE))
    assert r.returncode == 2
    assert r.stderr.strip() == ("--disable: error: unknown rule id 'caller-frame-writes' "
                                "(did you mean 'caller-frame-write'?)")


def test_config_prints_the_declarations_in_force(tmp_path: Path) -> None:
    src = _tree(tmp_path, GOOD + "[elsewhere]\nnoreturn = true\n")
    r = fv("config", str(src))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == f"# declarations in force for {src}, from {tmp_path / 'framevet.toml'}"
    assert f"[xen_page_fault]  # {tmp_path / 'framevet.toml'}:1" in lines
    assert 'clobbers = ["rbx", "rbp", "r12"]' in lines
    assert "[elsewhere]" not in r.stdout and lines[-1].endswith("does not define: elsewhere")


def test_every_function_key_is_a_declaration_field() -> None:
    fields = {f.name for f in dataclasses.fields(FunctionDecl)}
    assert set(FUNCTION_KEYS) == fields
