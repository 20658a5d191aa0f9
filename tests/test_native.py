"""The compiled build and the pure-Python modules are one program.

``setup.py`` compiles the per-instruction modules with Cython at install time;
``framevet/__init__.py`` loads a compiled module only when it is not older than its
``.py`` and ``FRAMEVET_PURE`` is unset.  CI runs the recorded-output test a second time
under ``FRAMEVET_PURE=1`` (``.ci/run``), so both paths must print the recordings byte
for byte; these tests check that each run really took the path it claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS, corpus_required

import framevet

_REPORT = ("import json, framevet.cli.main, framevet; "
           "print(json.dumps(framevet.NATIVE))")


def _loaded(env_pure: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FRAMEVET_PURE"}
    if env_pure is not None:
        env["FRAMEVET_PURE"] = env_pure
    out = subprocess.run([sys.executable, "-c", _REPORT], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _compiled_builds() -> list[Path]:
    root = Path(framevet.__file__).parent
    return [p for p in root.rglob("*.so") if p.with_name(p.name.split(".")[0] + ".py").exists()]


def test_pure_is_forced_by_the_environment() -> None:
    loaded = _loaded("1")
    assert all(v.startswith("pure: FRAMEVET_PURE") for v in loaded.values()), loaded
    assert set(loaded) == {_module_name(p) for p in _compiled_builds()}


def test_the_install_compiled_the_hot_modules() -> None:
    if not _compiled_builds():
        # a machine without gcc or Python's headers installs pure Python; CI has both
        assert not os.environ.get("CI"), "CI's install compiled nothing (see pip's output)"
        pytest.skip("no compiled build in this install (pip said why)")
    loaded = _loaded(None)
    assert "framevet.stack.walker" in loaded and "framevet.unwind.cficheck" in loaded
    stale = {k: v for k, v in loaded.items() if v != "compiled"}
    if os.environ.get("CI"):
        assert stale == {}, stale


def test_a_source_newer_than_its_build_is_what_runs(tmp_path: Path) -> None:
    # an edited .py is never shadowed by an old compiled module
    pkg = tmp_path / "framevet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(Path(framevet.__file__).read_text())
    (pkg / "sub" / "__init__.py").write_text("")
    builds = _compiled_builds()
    if not builds:
        pytest.skip("no compiled build to copy")
    so = builds[0]
    name = so.name.split(".")[0]
    (pkg / "sub" / so.name).write_bytes(so.read_bytes())
    source = pkg / "sub" / f"{name}.py"
    source.write_text("WHICH = 'source'\n")
    older = (pkg / "sub" / so.name).stat().st_mtime - 10
    os.utime(pkg / "sub" / so.name, (older, older))
    probe = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import framevet, "
             f"framevet.sub.{name} as m; print(m.WHICH, framevet.NATIVE)")
    env = {k: v for k, v in os.environ.items() if k != "FRAMEVET_PURE"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("source ") and "is newer than its compiled build" in out


def test_both_paths_check_the_corpus_alike() -> None:
    # the recordings cover ten modules; this covers every corpus module, once per path
    # (Cython computes some integer expressions in C: a mask of more than 64 bits
    # once came out wrong compiled, on two modules outside the recordings)
    if not _compiled_builds():
        assert not os.environ.get("CI"), "CI's install compiled nothing"
        pytest.skip("no compiled build in this install: one path only")
    corpus_required()
    argv = [sys.executable, "-m", "framevet.cli", "check", "-j", "1", "--no-progress",
            "--format", "json", "--fail-on", "never",
            *sorted(str(p) for p in CORPUS.glob("*.ko"))]
    outs = []
    for pure in ("0", "1"):
        env = {**os.environ, "FRAMEVET_PURE": pure}
        outs.append(subprocess.run(argv, env=env, check=True, capture_output=True,
                                   text=True).stdout)
    assert outs[0] == outs[1]


def _module_name(so: Path) -> str:
    rel = so.relative_to(Path(framevet.__file__).parent.parent)
    return ".".join((*rel.parent.parts, so.name.split(".")[0]))
