"""framevet.api: the typed Python API other tools build on."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from framevet import api
from framevet.load.errors import InputError

EXAMPLE = ROOT / "examples" / "entry-stubs.S"


def test_load_analyse_findings() -> None:
    (obj,) = api.load(EXAMPLE)
    result = api.analyse(obj, explain=True)
    rules = sorted({(f.location.symbol, f.rule) for f in result.findings if f.location})
    assert ("gpr_switch_old", "return-address-overwrite") in rules
    assert ("xen_page_fault", "sibling-call-modified-frame") not in rules   # framevet.toml
    ret = next(f for f in result.findings if f.rule == "return-modified-frame")
    assert ret.details["explain"]["paths"][0]["steps"][-1]["insn"] == "ret"
    same = api.findings(EXAMPLE)
    assert [f.text() for f in same] == [f.text() for f in result.findings]
    assert api.findings(EXAMPLE, disabled=frozenset({"caller-frame-write"})) != same
    with pytest.raises(TypeError):
        api.analyse(obj, no_such_switch=True)


def test_cfa_table_rows() -> None:
    rows = api.cfa_table(EXAMPLE, function="fred_irq_bad")
    assert [r.where for r in rows] == ["fred_irq_bad+0x0", "fred_irq_bad+0x1",
                                       "fred_irq_bad+0x4", "fred_irq_bad+0x17"]
    assert rows[2].cfa == "rbp+16" and rows[2].registers["rbp"] == "cfa-16"
    (obj,) = api.load(EXAMPLE)
    walked = api.analyse(obj).cfa_table(function="fred_irq_bad")
    assert [(r.offset, r.cfa) for r in walked] == [(r.offset, r.cfa) for r in rows]


def test_bad_input_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.o"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="not an ELF file"):
        api.load(bad)
