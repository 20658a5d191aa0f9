"""Parity with objtool 6.1 on assembled fixtures, against its recorded output.

For every fixture and every recorded switch set, framevet must report every
warning objtool reported, at the same place with the same words (framevet may
report more: docs/rules.md lists why).  Where objtool produced ORC, framevet's
ORC dump must be identical.
"""

from __future__ import annotations

import pytest
from parity import Case, cases, framevet_orc, framevet_warnings

CASES = cases()


def _switch_sets(case: Case) -> list[str]:
    return list(case.record["switches"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reports_every_objtool_warning(case: Case) -> None:
    for sw in _switch_sets(case):
        rec = case.record["switches"][sw]
        expected = [w for w in rec["warnings"] if ": warning: objtool: " in w]
        got = framevet_warnings(case, sw)
        missing = [w for w in expected if w not in got]
        assert not missing, f"{sw}: objtool reported {missing}, framevet {got}"
        if any(w.startswith("error: objtool: --") and " requires --" in w
               for w in rec["warnings"]):
            # objtool refused the switch set (--noinstr/--ibt/--unret without --link)
            assert got == [], f"{sw}: objtool refused to run, framevet {got}"


ORC_CASES = [c for c in CASES if "orc" in c.record]


@pytest.mark.parametrize("case", ORC_CASES, ids=[c.id for c in ORC_CASES])
def test_orc_identical(case: Case) -> None:
    assert framevet_orc(case) == case.record["orc"]


def test_fixture_set_is_complete() -> None:
    # the recorder wrote one folder per rule with triggering and near-miss fixtures
    assert len(CASES) >= 200
    folders = {c.src.parent.name for c in CASES}
    for rule in ("return-modified-frame", "sibling-call-modified-frame", "stack-state-mismatch",
                 "undefined-stack-state", "unreachable-instruction", "stack-forms"):
        assert rule in folders
