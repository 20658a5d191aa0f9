"""``framevet scan``: packages read in place, results equal ``check``/``cfi``, the store is
incremental and survives ``kill -9``, bad input becomes an error row."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, assemble, fv
from debs import Builds, build_deb, build_objects, standard_packages, tools_required


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    tools_required()
    return build_objects(tmp_path_factory.mktemp("objs"))


@pytest.fixture(scope="module")
def scanned(builds: Builds, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two standard packages, scanned once."""
    work = tmp_path_factory.mktemp("scan")
    debs = standard_packages(work / "debs", builds)
    db = work / "scan.sqlite"
    r = fv("scan", "--db", str(db), "--format", "json", "-j", "2", str(work / "debs"))
    assert r.returncode == 1, r.stderr      # findings, no errors
    return {"work": work, "debs": debs, "db": db, "json": json.loads(r.stdout),
            "stderr": r.stderr}


def stored_findings(db: Path, scan: int | None = None) -> set[tuple[Any, ...]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT package, path, check_name, rule, severity, symbol, offset, message "
            "FROM file_findings WHERE scan_id = coalesce(?, (SELECT max(id) FROM scans))",
            (scan,)).fetchall()
    return set(rows)


def extracted_findings(deb: Path, dest: Path, profile_of: dict[str, str]) -> set[tuple[Any, ...]]:
    """What ``framevet check`` and ``framevet cfi`` say about the files ``dpkg -x`` unpacks."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    package = deb.name.split("_")[0]
    elves = {"/" + str(p.relative_to(dest)): p for p in sorted(dest.rglob("*"))
             if p.is_file() and p.read_bytes()[:4] in (b"\x7fELF", b"!<ar")}
    runs: list[tuple[str, tuple[str, ...], list[str]]] = [("cfi", ("cfi",), list(elves))]
    for profile in ("kernel", "user"):
        mine = [i for i in elves if profile_of.get(i, "user") == profile]
        if mine:
            runs.append(("check", ("check", "--profile", profile), mine))
    out: set[tuple[Any, ...]] = set()
    for check, args, installed in runs:
        by_name = {str(elves[i]): i for i in installed}
        r = fv(*args, "--format", "json", "--no-progress", *by_name)
        assert r.returncode in (0, 1), r.stderr
        for f in json.loads(r.stdout):
            name, _, member = f["file"].partition("(")
            where = by_name[name] + (f"({member}" if member else "")
            out.add((package, where, check, f["rule"], f["severity"], f["symbol"],
                     f["offset"], f["message"]))
    return out


def test_packages_give_the_findings_of_check_and_cfi_on_the_extracted_files(
        scanned: dict[str, Any], tmp_path: Path) -> None:
    db = scanned["db"]
    with sqlite3.connect(db) as con:
        files = {r[0]: r[1:] for r in con.execute(
            "SELECT f.path, f.package, f.package_version, a.status, a.profile "
            "FROM files f JOIN analyses a ON a.id = f.analysis_id")}
    lib = "/usr/lib/x86_64-linux-gnu/"
    # every ELF image is recorded under its package path, archive members one by one
    assert set(files) == {"/usr/bin/fvprog", lib + "libfvbad.so.1",
                          lib + "libfv.a(push-no-cfi.o)", lib + "libfv.a(ok-built-frame.o)",
                          lib + "libfv.a(regs.o)", "/lib/modules/6.1.0/extra/fvmod.ko"}
    assert files["/usr/bin/fvprog"][:2] == ("fvtest-tools", "1.0-1")
    assert files["/lib/modules/6.1.0/extra/fvmod.ko"][2:] == ("ok", "kernel")
    assert files["/usr/bin/fvprog"][2:] == ("ok", "user")
    profiles = {p: row[3] for p, row in files.items()}
    expected: set[tuple[Any, ...]] = set()
    for deb in scanned["debs"]:
        expected |= extracted_findings(deb, tmp_path / deb.stem, profiles)
    got = stored_findings(db)
    assert got == expected
    rules = {f[3] for f in got}
    assert {"cfi-mismatch", "stack-state-mismatch"} <= rules
    summary = scanned["json"]
    assert summary["files"] == 6 and summary["analysed"] == 6 and summary["cached"] == 0
    assert summary["errors"] == 0 and summary["findings"] == len(got)
    assert summary["by_rule"] == {r: sum(1 for f in got if f[3] == r) for r in rules}


def test_a_second_run_reuses_every_result(scanned: dict[str, Any]) -> None:
    db = scanned["db"]
    r = fv("scan", "--db", str(db), "--format", "json", str(scanned["work"] / "debs"))
    summary = json.loads(r.stdout)
    assert summary["analysed"] == 0 and summary["cached"] == 6, summary
    assert summary["findings"] == scanned["json"]["findings"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM analyses").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM scans WHERE finished IS NOT NULL"
                           ).fetchone()[0] == 2
        # both packages were taken whole from the first scan, by their own hash
        assert con.execute("SELECT scan_id, count(*) FROM sources GROUP BY scan_id"
                           ).fetchall() == [(1, 2), (2, 2)]
    assert stored_findings(db, 1) == stored_findings(db, 2)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_compression_reads_the_same(builds: Builds, scanned: dict[str, Any],
                                          tmp_path: Path, compression: str) -> None:
    standard_packages(tmp_path / "debs", builds, compression)
    db = tmp_path / "c.sqlite"
    # the results of the xz packages are reused: the same bytes, whatever the compression
    shutil.copy(scanned["db"], db)
    r = fv("scan", "--db", str(db), "--format", "json", str(tmp_path / "debs"))
    summary = json.loads(r.stdout)
    assert (summary["files"], summary["cached"], summary["errors"]) == (6, 6, 0), r.stderr
    with sqlite3.connect(db) as con:
        last = con.execute("SELECT max(id) FROM scans").fetchone()[0]
        mine = con.execute("SELECT package, path, sha256 FROM files WHERE scan_id = ? "
                           "ORDER BY 1, 2", (last,)).fetchall()
        first = con.execute("SELECT package, path, sha256 FROM files WHERE scan_id = 1 "
                            "ORDER BY 1, 2").fetchall()
    assert mine == first


def test_bad_input_is_an_error_row_and_the_scan_goes_on(builds: Builds,
                                                        tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    truncated = builds.program.read_bytes()[:3000]
    build_deb(debs, "fvtest-broken", "1", {"/usr/bin/cut-short": truncated,
                                          "/usr/lib/libfvbad.so.1": builds.shared})
    whole = build_deb(tmp_path, "fvtest-corrupt", "1", {"/usr/bin/fvprog": builds.program})
    (debs / whole.name).write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    (debs / "garbage_1_amd64.deb").write_bytes(b"!<arch>\ndebian-binary   " + b"x" * 200)
    db = tmp_path / "s.sqlite"
    r = fv("scan", "--db", str(db), "--format", "json", str(debs))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r.stderr
    assert any("fvtest-broken:/usr/bin/cut-short: error:" in x for x in lines)
    assert any("fvtest-corrupt_1_amd64.deb: error: corrupt package" in x for x in lines)
    assert any("garbage_1_amd64.deb: error: corrupt package" in x for x in lines)
    summary = json.loads(r.stdout)
    assert summary["errors"] == 3
    with sqlite3.connect(db) as con:
        rows = dict(con.execute(
            "SELECT f.path, coalesce(f.error, a.status) FROM files f "
            "LEFT JOIN analyses a ON a.id = f.analysis_id").fetchall())
    assert rows["/usr/lib/libfvbad.so.1"] == "ok"            # the good member still counts
    assert rows["/usr/bin/cut-short"] == "error"
    assert rows[str(debs / whole.name)].startswith("corrupt package")
    with sqlite3.connect(db) as con:
        # none of the three is remembered whole: the next scan reads them again
        assert con.execute("SELECT count(*) FROM sources").fetchone()[0] == 0
    again = fv("scan", "--db", str(db), "--format", "json", str(debs))
    assert again.stderr == r.stderr and json.loads(again.stdout)["analysed"] == 0


def _objects(dest: Path) -> Path:
    """A directory of distinct objects (the stack fixtures) for the kill test."""
    dest.mkdir()
    for i, src in enumerate(sorted(FIXTURES.glob("*/*.S"))[:20]):
        obj = assemble(src)
        (dest / f"{i:03d}-{src.stem}.o").write_bytes(obj.read_bytes())
    return dest


def _contents(db: Path) -> tuple[list[Any], list[Any]]:
    with sqlite3.connect(db) as con:
        files = con.execute(
            "SELECT f.package, f.path, f.sha256, a.status, a.reason, a.profile FROM files f "
            "LEFT JOIN analyses a ON a.id = f.analysis_id ORDER BY 1, 2").fetchall()
        found = con.execute(
            "SELECT a.sha256, x.seq, x.check_name, x.rule, x.symbol, x.offset, x.message "
            "FROM findings x JOIN analyses a ON a.id = x.analysis_id ORDER BY 1, 2").fetchall()
    return files, found


def test_kill_9_and_restart_gives_the_same_database(tmp_path: Path) -> None:
    objs = _objects(tmp_path / "objs")
    whole = tmp_path / "whole.sqlite"
    assert fv("scan", "--db", str(whole), "-j", "2", str(objs)).returncode in (0, 1)
    killed = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "framevet.cli", "scan", "--db", str(killed), "-j", "2",
           str(objs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if killed.exists():
            try:
                with sqlite3.connect(killed, timeout=1) as con:
                    done = con.execute("SELECT count(*) FROM analyses").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 5:
                os.killpg(proc.pid, signal.SIGKILL)     # the scan and its children
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the scan ended before it could be killed"
    assert 5 <= done < len(list(objs.iterdir()))
    r = fv("scan", "--db", str(killed), "--format", "json", "-j", "2", str(objs))
    summary = json.loads(r.stdout)
    assert summary["cached"] >= done and summary["analysed"] + summary["cached"] == len(
        list(objs.iterdir()))
    assert _contents(killed) == _contents(whole)
    with sqlite3.connect(killed) as con:
        assert con.execute("SELECT count(*), count(finished) FROM scans").fetchone() == (1, 1)


def _chromium() -> str:
    """Debian's chromium (.ci/run installs it), so CI never skips the page test."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    pytest.skip("chromium is not installed")


def test_the_dashboard_renders_in_headless_chromium(scanned: dict[str, Any],
                                                    tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    r = fv("scan", "--db", str(scanned["db"]), "--report", str(page))
    assert r.returncode == 0, r.stderr
    chromium = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    with sqlite3.connect(scanned["db"]) as con:
        last = con.execute("SELECT max(id) FROM scans").fetchone()[0]
        by_rule = dict(con.execute("SELECT rule, count(*) FROM file_findings WHERE scan_id = ? "
                                   "GROUP BY rule", (last,)).fetchall())
    bars = {rule: int(n) for rule, n in
            re.findall(r'<rect class="bar" data-rule="([^"]+)" data-count="(\d+)"', dom)}
    assert bars == by_rule
    assert re.search(rf'id="total-findings"><b>{sum(by_rule.values())}</b>', dom)
    assert re.search(r'id="total-files"><b>6</b>', dom)
    packages = re.search(r'<table id="packages">(.*?)</table>', dom, re.S)
    assert packages
    rows = re.findall(r"<tr><td>([^<]*)</td><td>[^<]*</td><td[^>]*>(\d+)</td><td[^>]*>(\d+)</td>",
                      packages.group(1))
    with sqlite3.connect(scanned["db"]) as con:
        want = con.execute(
            "SELECT package, count(DISTINCT path), count(rule) FROM files f LEFT JOIN findings x "
            "ON x.analysis_id = f.analysis_id WHERE scan_id = ? GROUP BY package", (last,))
        assert sorted(rows) == sorted((p, str(n), str(k)) for p, n, k in want)


def test_the_same_bytes_at_two_paths_are_analysed_once_and_recorded_twice(
        builds: Builds, tmp_path: Path) -> None:
    objs = tmp_path / "objs"
    (objs / "sub").mkdir(parents=True)
    for name in ("a.a", "sub/b.a"):
        (objs / name).write_bytes(builds.archive.read_bytes())
    db = tmp_path / "s.sqlite"
    members = {f"{a}({m})" for a in (str(objs / "a.a"), str(objs / "sub/b.a"))
               for m in ("push-no-cfi.o", "ok-built-frame.o", "regs.o")}
    for run in (1, 2):
        r = fv("scan", "--db", str(db), "--format", "json", str(objs))
        summary = json.loads(r.stdout)
        assert summary["files"] == 6 and summary["analysed"] == (3 if run == 1 else 0)
        with sqlite3.connect(db) as con:
            paths = {p for p, in con.execute("SELECT path FROM files WHERE scan_id = ?", (run,))}
        assert paths == members
