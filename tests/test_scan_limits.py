"""One bad file cannot stall or sink a scan: crashes are retried once and then recorded,
timeouts and the memory limit end only that file's child, locally and on Dask."""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from conftest import FIXTURES, assemble, fv
from distributed import LocalCluster

from framevet.scan.pools import DaskPool, LocalPool, Pool
from framevet.scan.runner import Limits, Scanner
from framevet.scan.store import Store
from framevet.scan.work import Outcome, ScanOptions, analyse_image, version

SOURCES = {"fine": "cfi-mismatch/ok-hand.S", "crash": "cfi-mismatch/wrong-offset.S",
           "slow": "cfi-mismatch/early-restore.S", "hungry": "cfi-mismatch/push-no-cfi.S",
           "victim": "cfi-mismatch/ok-built-frame.S"}


def misbehaving(marker: str, data: bytes, display: str, options: ScanOptions) -> Outcome:
    """The real analysis, except for files named after what they should do to their child."""
    name = Path(display).stem
    if name == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif name == "slow":
        time.sleep(120)
    elif name == "hungry":
        hog = [bytearray(64 << 20) for _ in range(64)]      # 4 GiB, past the limit
        del hog
    elif name == "victim" and not os.path.exists(marker):
        # kill the process that runs this child (a Dask worker) on the first try only
        Path(marker).touch()
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    return analyse_image(data, display, options)


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    objs = tmp_path / "in"
    objs.mkdir()
    for name, src in SOURCES.items():
        (objs / f"{name}.o").write_bytes(assemble(FIXTURES / src).read_bytes())
    return objs


def scan(db: Path, objs: Path, pool: Pool, limits: Limits) -> dict[str, tuple[str, str]]:
    store = Store(str(db))
    try:
        Scanner(store, pool, ScanOptions(), limits).run([str(objs)], version())
        rows = store.db.execute("SELECT f.path, a.status, coalesce(a.reason, '') FROM files f "
                                "JOIN analyses a ON a.id = f.analysis_id").fetchall()
    finally:
        store.close()
    return {Path(p).stem: (s, r) for p, s, r in rows}


def check_outcomes(got: dict[str, tuple[str, str]], timeout: float) -> None:
    assert got["fine"] == ("ok", "")
    assert got["victim"] == ("ok", "")
    status, reason = got["crash"]
    assert status == "error" and reason.startswith("crashed 2 times"), reason
    assert "SIGSEGV" in reason
    if "slow" in got:
        assert got["slow"] == ("timeout", f"no result after {timeout:g} s")
        status, reason = got["hungry"]
        assert status == "error" and "memory limit (256 MiB) exceeded" in reason


def test_local_children_contain_crashes_hangs_and_memory_hogs(
        inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "victim-was-hit"
    marker.touch()          # locally the victim's child has no Dask worker to kill
    limits = Limits(timeout=3, memory_mb=256)
    pool = LocalPool(2, ScanOptions(), limits.timeout, limits.memory_mb,
                     functools.partial(misbehaving, str(marker)))
    got = scan(tmp_path / "s.sqlite", inputs, pool, limits)
    check_outcomes(got, 3)
    err = capsys.readouterr().err.splitlines()
    assert sorted(Path(line.split(":")[0]).stem for line in err) == ["crash", "hungry", "slow"]
    # a timed-out file is tried again only when the limit grows
    again = scan(tmp_path / "s.sqlite", inputs, LocalPool(
        2, ScanOptions(), 3, 256, functools.partial(misbehaving, str(marker))), limits)
    assert again == got
    with sqlite3.connect(tmp_path / "s.sqlite") as con:
        assert con.execute("SELECT count(*) FROM analyses").fetchone()[0] == len(SOURCES)


def test_without_dask_scheduler_says_how_to_get_it(tmp_path: Path) -> None:
    # the import of distributed fails as it does where the extra is not installed
    code = ("import sys; sys.modules['distributed'] = None; from framevet.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "scan", "--db", str(tmp_path / "s.sqlite"),
                        "--scheduler", "tcp://127.0.0.1:9", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("--scheduler: error: Dask is not installed: "
                                "pip install 'framevet[dask]'")


def test_dask_cluster_gives_the_local_results_and_survives_a_killed_worker(
        inputs: Path, tmp_path: Path) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for covered_locally in ("slow", "hungry"):
        (inputs / f"{covered_locally}.o").unlink()
    marker = tmp_path / "victim-was-hit"
    limits = Limits(timeout=3, memory_mb=256)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        pool = DaskPool(cluster.scheduler_address, ScanOptions(), limits.timeout,
                        limits.memory_mb, functools.partial(misbehaving, str(marker)))
        got = scan(tmp_path / "d.sqlite", inputs, pool, limits)
        # and the command line, with the real analysis, against the same cluster
        on_dask = fv("scan", "--db", str(tmp_path / "cli-dask.sqlite"), "--scheduler",
                     cluster.scheduler_address, "--format", "json", str(inputs))
    on_cpu = fv("scan", "--db", str(tmp_path / "cli-local.sqlite"), "--format", "json",
                str(inputs))
    assert on_dask.returncode == on_cpu.returncode == 1, on_dask.stderr + on_cpu.stderr
    assert json.loads(on_dask.stdout)["by_rule"] == json.loads(on_cpu.stdout)["by_rule"]
    assert marker.exists(), "the victim never killed its worker"
    check_outcomes(got, 3)
    findings = ("SELECT f.path, x.seq, x.rule, x.symbol, x.offset, x.message FROM files f "
                "JOIN findings x ON x.analysis_id = f.analysis_id ORDER BY 1, 2")
    with sqlite3.connect(tmp_path / "cli-dask.sqlite") as a, \
            sqlite3.connect(tmp_path / "cli-local.sqlite") as b:
        assert a.execute(findings).fetchall() == b.execute(findings).fetchall()
        assert a.execute("SELECT count(*) FROM findings").fetchone()[0] > 0
