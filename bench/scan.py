#!/usr/bin/env python3
"""``framevet scan`` on real Debian packages: speed, incrementality, and agreement with
``framevet check``/``framevet cfi`` run on the extracted files.

The script

* fetches the packages in ``PACKAGES`` with ``apt-get download`` (at least 20, small
  user-space libraries and tools; ``--debs DIR`` keeps them between runs);
* scans the directory three times into fresh databases -- one local worker, two local
  workers, and a ``dask.distributed.LocalCluster`` of two one-thread workers reached
  with ``--scheduler`` -- and prints the files analysed per second of each, in one run;
* scans again into the one-worker database and prints that time as a fraction of the
  first run's (the bar: at most 10 %, with no file analysed);
* checks the three databases hold the same findings, that every ELF image the packages
  hold (``dpkg-deb -x``, archive members one by one) is recorded, and that the findings
  equal ``framevet check --profile P`` and ``framevet cfi`` on the extracted files (P is
  the profile the scan chose for the file).

    nice -n 10 python3 bench/scan.py [--debs DIR] [--json OUT]

It exits 1 when a check fails. It needs ``apt-get`` (network) for the download, and
``distributed`` (``pip install 'framevet[dask]'``) for the cluster run.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGES = ("hostname", "libcom-err2", "libattr1", "libkeyutils1", "debianutils", "libffi8",
            "libacl1", "libmd0", "libbz2-1.0", "libpopt0", "libcap2", "libuuid1", "libbsd0",
            "libjansson4", "libgdbm6", "gzip", "libseccomp2", "liblz4-1", "libtasn1-6",
            "libffi-dev", "zlib1g", "libxxhash0", "libyaml-0-2")
FINDING = ("package", "path", "check_name", "rule", "severity", "symbol", "offset", "message")


def framevet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framevet.cli", *args], capture_output=True,
                          text=True, check=False)


def download(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(dest.glob(f"{p}_*.deb"))]
    if missing:
        cmd = ["apt-get", "download", *missing]
        if subprocess.run(cmd, cwd=dest, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
            subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return sorted(p for name in PACKAGES for p in dest.glob(f"{name}_*.deb"))


def timed_scan(db: Path, debs: Path, *extra: str) -> dict[str, Any]:
    start = time.perf_counter()
    r = framevet("scan", "--db", str(db), "--format", "json", "--no-progress", *extra, str(debs))
    seconds = time.perf_counter() - start
    if r.returncode not in (0, 1):
        sys.exit(f"framevet scan failed ({r.returncode}): {r.stderr}")
    out = json.loads(r.stdout)
    out["wall"] = seconds
    return out


def stored(db: Path) -> set[tuple[Any, ...]]:
    with sqlite3.connect(db) as con:
        return set(con.execute(f"SELECT {', '.join(FINDING)} FROM file_findings "
                               "WHERE scan_id = (SELECT min(id) FROM scans)").fetchall())


def recorded(db: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(db) as con:
        return {(p, q): prof or "user" for p, q, prof in con.execute(
            "SELECT f.package, f.path, a.profile FROM files f "
            "LEFT JOIN analyses a ON a.id = f.analysis_id WHERE f.scan_id = 1")}


def extracted(debs: list[Path], work: Path, profiles: dict[tuple[str, str], str]
              ) -> tuple[set[tuple[str, str]], set[tuple[Any, ...]]]:
    """Every ELF image of the packages, and check's and cfi's findings on them."""
    images: set[tuple[str, str]] = set()
    by_file: dict[str, tuple[str, str]] = {}
    for deb in debs:
        dest = work / deb.stem
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        package = subprocess.run(["dpkg-deb", "-f", str(deb), "Package"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        for p in sorted(dest.rglob("*")):
            if p.is_symlink() or not p.is_file():
                continue
            head = p.read_bytes()[:8]
            installed = "/" + str(p.relative_to(dest))
            if head.startswith(b"\x7fELF"):
                images.add((package, installed))
                by_file[str(p)] = (package, installed)
            elif head == b"!<arch>\n":
                out = subprocess.run(["ar", "t", str(p)], capture_output=True, text=True)
                images.update((package, f"{installed}({m})") for m in out.stdout.split()
                              if m.endswith(".o"))
                by_file[str(p)] = (package, installed)
    findings: set[tuple[Any, ...]] = set()
    runs = [("cfi", ("cfi",), list(by_file))]
    for profile in ("kernel", "user"):
        mine = [f for f, key in by_file.items() if _profile(profiles, key) == profile]
        if mine:
            runs.append(("check", ("check", "--profile", profile), mine))
    for check, args, files in runs:
        r = framevet(*args, "--format", "json", "--no-progress", *files)
        for f in json.loads(r.stdout or "[]"):
            name, _, member = f["file"].partition("(")
            package, installed = by_file[name]
            findings.add((package, installed + (f"({member}" if member else ""), check,
                          f["rule"], f["severity"], f["symbol"], f["offset"], f["message"]))
    return images, findings


def _profile(profiles: dict[tuple[str, str], str], key: tuple[str, str]) -> str:
    """The profile the scan chose for a file, or for the first member of an archive."""
    if key in profiles:
        return profiles[key]
    package, path = key
    return next((p for (pk, q), p in sorted(profiles.items())
                 if pk == package and q.startswith(path + "(")), "user")


def dask_scan(db: Path, debs: Path) -> dict[str, Any]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        return timed_scan(db, debs, "--scheduler", cluster.scheduler_address)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--debs", default=os.path.join(tempfile.gettempdir(), "framevet-bench-debs"),
                    help="where the packages are downloaded (kept between runs)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    debs_dir = Path(args.debs)
    debs = download(debs_dir)
    print(f"{len(debs)} packages in {debs_dir}")
    failures = []
    with tempfile.TemporaryDirectory(prefix="framevet-bench-scan-") as tmp:
        work = Path(tmp)
        runs = {"1 local worker": timed_scan(work / "j1.sqlite", debs_dir, "-j", "1"),
                "2 local workers": timed_scan(work / "j2.sqlite", debs_dir, "-j", "2"),
                "2-worker LocalCluster": dask_scan(work / "dask.sqlite", debs_dir)}
        again = timed_scan(work / "j1.sqlite", debs_dir, "-j", "1")
        first = runs["1 local worker"]
        for name, r in runs.items():
            rate = r["analysed"] / r["wall"]
            print(f"{name:<22} {r['files']:4d} files, {r['analysed']:4d} analysed, "
                  f"{r['findings']:5d} findings, {r['errors']} errors in {r['wall']:7.1f} s: "
                  f"{rate:.2f} files/s")
        ratio = again["wall"] / first["wall"]
        print(f"re-run                 {again['files']:4d} files, {again['analysed']:4d} "
              f"analysed in {again['wall']:.2f} s = {100 * ratio:.1f} % of the first run")
        if again["analysed"] != 0 or ratio > 0.10:
            failures.append("the re-run analysed files or took more than 10 %")
        base = stored(work / "j1.sqlite")
        for name, db in (("2 local workers", "j2"), ("2-worker LocalCluster", "dask")):
            if stored(work / f"{db}.sqlite") != base:
                failures.append(f"{name} found other findings than 1 local worker")
        profiles = recorded(work / "j1.sqlite")
        images, expected = extracted(debs, work / "x", profiles)
        print(f"extracted: {len(images)} ELF images; the scan recorded {len(profiles)}; "
              f"check+cfi on them: {len(expected)} findings, the scan: {len(base)}")
        if set(profiles) != images:
            failures.append(f"recorded files differ: missing {sorted(images - set(profiles))}, "
                            f"extra {sorted(set(profiles) - images)}")
        if base != expected:
            failures.append(f"findings differ from check/cfi: {len(expected - base)} missing, "
                            f"{len(base - expected)} extra")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"runs": runs, "rerun": again, "rerun_ratio": ratio, "failures": failures},
                indent=2))
    for f in failures:
        print(f"FAIL: {f}")
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
