"""framevet's outputs are byte-identical to the recordings in tests/data/outputs.

Speed and memory work must not change a single finding, ORC entry or CFA row:
every case (``tools/record_outputs.py``: ORC dumps and checks of corpus modules,
cfa/cfi/check of libc.a members, the bundled example) is run again and compared
with what was recorded.  A change meant to change an output re-records
(``python tools/record_outputs.py``) and commits the reviewed diff.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, corpus_required


def _recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("record_outputs",
                                                  ROOT / "tools" / "record_outputs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REC = _recorder()


@pytest.fixture(scope="module")
def inputs() -> Iterator[Path]:
    corpus_required()
    if not REC.LIBC.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REC.LIBC} missing")
        pytest.skip(f"{REC.LIBC} not installed")
    with REC.inputs() as where:
        yield where


@pytest.mark.parametrize(("case", "argv", "name"), REC.cases(), ids=[c[0] for c in REC.cases()])
def test_output_is_as_recorded(case: str, argv: list[str], name: str, inputs: Path) -> None:
    recorded = (REC.OUT / f"{case}.txt").read_text()
    assert REC.run(argv, name, inputs / REC.folder(case)) == recorded, (
        f"{case}: output changed; if on purpose, re-record with "
        f"`python tools/record_outputs.py {case}` and review the diff")
