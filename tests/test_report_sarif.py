"""SARIF as GitHub code scanning reads it: locations, fingerprints, rule help, fixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
from _pytest.monkeypatch import MonkeyPatch
from conftest import FIXTURES, ROOT, assemble, fv

SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
EXAMPLE = ROOT / "examples" / "entry-stubs.S"


def _sarif(*args: str) -> dict:
    r = fv(*args, "--format", "sarif")
    log = json.loads(r.stdout)
    jsonschema.validate(log, SCHEMA)
    return log


def test_every_result_has_a_location_and_a_fingerprint(tmp_path: Path) -> None:
    obj = assemble(EXAMPLE)
    for args in (("check", str(EXAMPLE)), ("check", str(obj)),
                 ("cfi", str(FIXTURES / "cfi-mismatch" / "push-no-cfi.S"))):
        run = _sarif(*args)["runs"][0]
        assert run["results"], args
        for res in run["results"]:
            assert res["partialFingerprints"]["framevet/v1"]
            loc = res["locations"][0]
            phys = loc["physicalLocation"]
            assert phys["artifactLocation"]["uriBaseId"] == "SRCROOT"
            if args[1].endswith(".S"):
                assert phys["region"]["startLine"] > 0
                assert phys["region"]["startColumn"] == 2     # the tab before the insn
            else:   # a binary: the instruction by name and address
                assert "address" in phys and loc["logicalLocations"][0]["name"]
    results = _sarif("check", str(obj))["runs"][0]["results"]
    hit = next(r for r in results if "gpr_switch_old+0x4" in r["message"]["text"])
    assert hit["locations"][0]["physicalLocation"]["address"]["absoluteAddress"] == 0x26


def test_kernel_module_findings_have_a_location(tmp_path: Path) -> None:
    src = tmp_path / "stubs.S"
    src.write_text(EXAMPLE.read_text() +
                   '\n.section .gnu.linkonce.this_module,"aw"\n.quad 0\n')
    ko = tmp_path / "stubs.ko"
    subprocess.run(["gcc", "-c", "-o", str(ko), str(src)], check=True)
    run = _sarif("check", str(ko), "--sarif-root", str(tmp_path))["runs"][0]
    assert len(run["results"]) >= 8     # (the example's framevet.toml is not beside it)
    for res in run["results"]:
        assert res["partialFingerprints"]["framevet/v1"]
        assert res["properties"]["profile"] == "kernel"
        phys = res["locations"][0]["physicalLocation"]
        assert phys["artifactLocation"]["uri"] == "stubs.ko"
        assert phys["address"]["absoluteAddress"] >= 0
        assert res["locations"][0]["logicalLocations"][0]["name"] in \
            res["message"]["text"]


def test_uris_are_relative_to_the_sarif_root(tmp_path: Path) -> None:
    run = _sarif("check", str(EXAMPLE), "--sarif-root", str(ROOT))["runs"][0]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in run["results"]}
    assert uris == {"examples/entry-stubs.S"}
    base = run["originalUriBaseIds"]["SRCROOT"]["uri"]
    assert urlparse(base).scheme == "file" and Path(urlparse(base).path) == ROOT


def test_fingerprints_survive_code_moving(tmp_path: Path) -> None:
    src = tmp_path / "stubs.S"
    src.write_text(EXAMPLE.read_text())
    first = _sarif("check", str(src), "--sarif-root", str(tmp_path))["runs"][0]["results"]
    again = _sarif("check", str(src), "--sarif-root", str(tmp_path))["runs"][0]["results"]
    fps = [r["partialFingerprints"]["framevet/v1"] for r in first]
    assert fps == [r["partialFingerprints"]["framevet/v1"] for r in again]
    assert len(set(fps)) == len(fps)
    # ten lines and a function added above: every old finding keeps its fingerprint
    src.write_text("\n" * 10 + ".text\n.globl pad\n.type pad,@function\npad:\n nop\n ret\n"
                   ".size pad,.-pad\n" + EXAMPLE.read_text())
    moved = _sarif("check", str(src), "--sarif-root", str(tmp_path))["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in moved] != \
        [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in first]
    assert [r["partialFingerprints"]["framevet/v1"] for r in moved] == fps


def test_rules_carry_markdown_help_shipped_in_the_package(monkeypatch: MonkeyPatch) -> None:
    for var in ("FRAMEVET_RULE_DOCS_URL", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(var, raising=False)
    driver = _sarif("check", str(EXAMPLE))["runs"][0]["tool"]["driver"]
    assert urlparse(driver["informationUri"]).scheme == "file"
    by_id = {r["id"]: r for r in driver["rules"]}
    rule = by_id["stack-state-mismatch"]
    assert "cfa1=4+16" in rule["help"]["markdown"] and rule["help"]["text"]
    page = Path(urlparse(rule["helpUri"]).path)
    assert page.is_file() and page.read_text() == rule["help"]["markdown"]
    for r in by_id.values():
        assert Path(urlparse(r["helpUri"]).path).is_file(), r["id"]
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "rule_docs.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_help_uri_is_a_web_address_when_one_is_given(monkeypatch: MonkeyPatch,
                                                     tmp_path: Path) -> None:
    for var in ("FRAMEVET_RULE_DOCS_URL", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
                "GITHUB_SHA"):
        monkeypatch.delenv(var, raising=False)
    base = "https://example.org/framevet/blob/v1/src/framevet/rules/pages"
    driver = _sarif("check", str(EXAMPLE), "--rule-docs-url", base)["runs"][0]["tool"]["driver"]
    rule = next(r for r in driver["rules"] if r["id"] == "caller-frame-write")
    assert rule["helpUri"] == f"{base}/caller-frame-write.md"
    assert driver["informationUri"] == f"{base}/index.md"
    monkeypatch.setenv("FRAMEVET_RULE_DOCS_URL", base + "/")
    driver = _sarif("check", str(EXAMPLE))["runs"][0]["tool"]["driver"]
    assert {urlparse(r["helpUri"]).scheme for r in driver["rules"]} == {"https"}
    # a GitHub Actions job in a checkout of framevet: the pages at the commit checked
    monkeypatch.delenv("FRAMEVET_RULE_DOCS_URL")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "someone/framevet")
    monkeypatch.setenv("GITHUB_SHA", "0123abc")
    pages = Path(urlparse(_rule_page("caller-frame-write")).path).parent
    driver = _sarif("check", str(EXAMPLE), "--sarif-root",
                    str(pages.parents[3]))["runs"][0]["tool"]["driver"]
    rule = next(r for r in driver["rules"] if r["id"] == "caller-frame-write")
    assert rule["helpUri"] == ("https://github.com/someone/framevet/blob/0123abc/"
                               "src/framevet/rules/pages/caller-frame-write.md")
    outside = _sarif("check", str(EXAMPLE), "--sarif-root", str(tmp_path))
    assert urlparse(outside["runs"][0]["tool"]["driver"]["rules"][0]["helpUri"]).scheme == \
        "file"


def _rule_page(rule_id: str) -> str:
    from framevet.rules.registry import doc_uri
    return doc_uri(rule_id)


def test_cfi_corrections_are_sarif_fixes() -> None:
    src = FIXTURES / "cfi-mismatch" / "early-restore.S"
    results = _sarif("cfi", str(src))["runs"][0]["results"]
    fixed = [r for r in results if r.get("fixes")]
    assert fixed
    change = fixed[0]["fixes"][0]["artifactChanges"][0]
    assert change["artifactLocation"]["uri"].endswith("early-restore.S")
    inserted = change["replacements"][0]["insertedContent"]["text"]
    assert inserted.strip().startswith(".cfi_")
    line = change["replacements"][0]["deletedRegion"]["startLine"]
    assert line == fixed[0]["locations"][0]["physicalLocation"]["region"]["startLine"]
