#!/usr/bin/env python3
"""Every figure of "native speed and bounded memory" in one run.

    python3 bench/speed.py [--objtool PATH] [--kvm KVM.ko] [--vmlinux VMLINUX]
                           [--large LIB.so] [--rust EXE] [--cfi FILE...] [--skip WHAT,...]

Prints, each measured in this run (wall time of a process, peak RSS of that same
process from ``wait4``):

``corpus``   ``framevet check -j 1`` over the corpus modules in one process, against
             objtool 6.1 ``--orc --module`` run once per module on copies, one after
             the other (target: wall ratio <= 1.0).
``kvm``      kvm.ko alone, one process each: wall ratio (<= 1.5) and peak-RSS ratio
             (<= 1.5).  ``--kvm`` names it; otherwise it is taken from Debian's
             ``linux-image-*-cloud-amd64-unsigned`` (``apt-get download``).
``cfi``      ``framevet cfi -j 1`` on python3.11, libcrypto.so.3, libstdc++, bash and a
             Rust program (ripgrep, ``apt-get download ripgrep``, or ``--rust``):
             instructions per second (target >= 300 k), counting instructions as
             ``objdump -d`` does, with objdump's own time and rate beside it, and
             framevet's peak RSS (python3.11: <= 200 MB).
``large``    ``framevet cfi`` on a library of about 100 MB (``--large``, default
             libLLVM-*.so if installed): peak RSS (<= 1 GB).  Slow; skip with
             ``--skip large``.
``vmlinux``  ``framevet orc --dump`` on a whole vmlinux (``--vmlinux``): wall time (<= 60 s)
             and peak RSS (<= 2 GB).
``jobs``     ``framevet check`` over the corpus modules with ``-j 2`` and ``-j 1``:
             the throughput ratio (>= 1.8 on 2 idle cores).

The first line says whether framevet's compiled modules ran (Cython, built at install)
or the pure-Python ones; ``--pure`` measures the pure-Python modules (``FRAMEVET_PURE=1``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("FRAMEVET_SHARED", os.path.join(ROOT, "..", "shared"))
CORPUS = os.path.join(SHARED, "corpus", "kmod")
OBJTOOL_CANDIDATES = [
    "/opt/kbuild/usr/lib/linux-kbuild-6.1/tools/objtool/objtool",
    "/usr/lib/linux-kbuild-6.1/tools/objtool/objtool",
]
LIBDIR = "/usr/lib/x86_64-linux-gnu"
USER_TARGETS = ["/usr/bin/python3.11", f"{LIBDIR}/libcrypto.so.3", f"{LIBDIR}/libstdc++.so.6",
                "/usr/bin/bash"]
_INSN_LINE = re.compile(rb"^ *[0-9a-f]+:\t[0-9a-f ]+\t", re.MULTILINE)


@dataclass
class Run:
    wall: float
    rss_mb: float
    status: int
    #: user + system CPU seconds (on a loaded machine the wall time mostly waits)
    cpu: float = 0.0


def run(cmd: list[str], stdout: int | None = subprocess.DEVNULL) -> Run:
    """One process: wall time, and its own peak RSS (``wait4``, not the children's max)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return Run(wall, usage.ru_maxrss / 1024, p.returncode, usage.ru_utime + usage.ru_stime)


def native_status() -> str:
    """Which of framevet's compiled modules the framevet below loads."""
    probe = "import json, framevet.cli.main, framevet; print(json.dumps(framevet.NATIVE))"
    exe = framevet()[0]
    python = exe if exe.endswith(("python", "python3")) else sys.executable
    try:
        out = subprocess.run([python, "-c", probe], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({e})"
    loaded = json.loads(out)
    used = sum(v == "compiled" for v in loaded.values())
    if not loaded:
        return "pure Python (no compiled build installed)"
    why = {v for v in loaded.values() if v != "compiled"}
    return f"{used} of {len(loaded)} compiled modules in use" + (
        f" ({'; '.join(sorted(why))})" if why else "")


def framevet(*args: str) -> list[str]:
    exe = shutil.which("framevet", path=os.path.dirname(sys.executable)) or shutil.which(
        "framevet")
    return [exe, *args] if exe else [sys.executable, "-m", "framevet.cli", *args]


def find_objtool(path: str | None) -> str:
    for cand in [path] if path else OBJTOOL_CANDIDATES:
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("objtool 6.1 not found: apt-get download linux-kbuild-6.1 && "
             "dpkg -x linux-kbuild-6.1_*.deb /opt/kbuild (or pass --objtool PATH)")


def fetch_deb(package: str, member: str, tmp: str) -> str | None:
    """``member`` (a path glob) from Debian package ``package``, downloaded into tmp."""
    try:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True,
                       capture_output=True)
        deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
        subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "x")], check=True)
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None
    hits = glob.glob(os.path.join(tmp, "x", member), recursive=True)
    return hits[0] if hits else None


def objtool_copies(objtool: str, modules: list[str], tmp: str) -> Run:
    """objtool once per module on fresh copies: summed wall, largest peak RSS."""
    wall, rss = 0.0, 0.0
    cpu = 0.0
    for m in modules:
        dst = os.path.join(tmp, os.path.basename(m))
        shutil.copyfile(m, dst)
        r = run([objtool, "--orc", "--module", dst])
        wall += r.wall
        cpu += r.cpu
        rss = max(rss, r.rss_mb)
    return Run(wall, rss, 0, cpu)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def bench_corpus(objtool: str, modules: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="fv-speed-") as tmp:
        ot = objtool_copies(objtool, modules, tmp)
    fv = run(framevet("check", "-j", "1", "--no-progress", "--fail-on", "never", *modules))
    ratio = fv.wall / ot.wall
    print(f"corpus: {len(modules)} modules: framevet check -j 1 {fv.wall:.2f} s, objtool "
          f"{ot.wall:.2f} s: ratio {ratio:.2f} (target <= 1.0: {verdict(ratio <= 1.0)}); "
          f"CPU {fv.cpu:.2f} s against {ot.cpu:.2f} s")


def bench_kvm(objtool: str, kvm: str) -> None:
    with tempfile.TemporaryDirectory(prefix="fv-speed-") as tmp:
        ot = objtool_copies(objtool, [kvm], tmp)
    fv = run(framevet("check", "-j", "1", "--no-progress", "--fail-on", "never", kvm))
    wr, mr = fv.wall / ot.wall, fv.rss_mb / ot.rss_mb
    print(f"kvm.ko: framevet {fv.wall:.2f} s ({fv.cpu:.2f} s CPU) {fv.rss_mb:.0f} MB, objtool "
          f"{ot.wall:.2f} s ({ot.cpu:.2f} s CPU) "
          f"{ot.rss_mb:.0f} MB: wall ratio {wr:.2f} (target <= 1.5: {verdict(wr <= 1.5)}), "
          f"RSS ratio {mr:.2f} (target <= 1.5: {verdict(mr <= 1.5)})")


def count_insns(path: str) -> tuple[int, float]:
    """Instructions as ``objdump -d`` prints them, and objdump's wall time."""
    with tempfile.TemporaryFile() as out:
        r = run(["objdump", "-d", path], stdout=out.fileno())
        out.seek(0)
        text = out.read()
    return len(_INSN_LINE.findall(text)), r.wall


def bench_cfi(targets: list[str]) -> None:
    total_insns, total_wall = 0, 0.0
    for path in targets:
        n, ob = count_insns(path)
        fv = run(framevet("cfi", "-j", "1", "--no-progress", "--fail-on", "never", path))
        rate = n / fv.wall
        total_insns, total_wall = total_insns + n, total_wall + fv.wall
        extra = ""
        if os.path.basename(path).startswith("python3"):
            extra = f" (RSS target <= 200 MB: {verdict(fv.rss_mb <= 200)})"
        print(f"cfi: {os.path.basename(path)}: {n} insns, framevet {fv.wall:.1f} s = "
              f"{rate / 1000:.0f} k insn/s ({fv.cpu:.1f} s CPU = {n / fv.cpu / 1000:.0f} k "
              f"insn/s of CPU), {fv.rss_mb:.0f} MB{extra}; objdump -d "
              f"{ob:.2f} s = {n / ob / 1000:.0f} k insn/s"
              + ("" if fv.status in (0, 1) else f"; exit {fv.status}"))
    rate = total_insns / total_wall
    print(f"cfi: all: {rate / 1000:.0f} k insn/s (target >= 300 k: {verdict(rate >= 300_000)})")


def bench_large(path: str) -> None:
    n, _ = count_insns(path)
    fv = run(framevet("cfi", "-j", "1", "--no-progress", "--fail-on", "never", path))
    size = os.path.getsize(path) / 2**20
    print(f"large: {os.path.basename(path)} ({size:.0f} MB, {n} insns): framevet cfi "
          f"{fv.wall:.0f} s, {fv.rss_mb:.0f} MB (target <= 1024 MB: "
          f"{verdict(fv.rss_mb <= 1024)})")


def bench_vmlinux(path: str) -> None:
    fv = run(framevet("orc", "--dump", path))
    print(f"vmlinux: framevet orc --dump {fv.wall:.1f} s (target <= 60 s: "
          f"{verdict(fv.wall <= 60)}), {fv.rss_mb:.0f} MB (target <= 2048 MB: "
          f"{verdict(fv.rss_mb <= 2048)}), exit {fv.status}")


def bench_jobs(modules: list[str]) -> None:
    args = ["check", "--no-progress", "--fail-on", "never", *modules]
    one = run(framevet(*args[:1], "-j", "1", *args[1:]))
    two = run(framevet(*args[:1], "-j", "2", *args[1:]))
    ratio = one.wall / two.wall
    print(f"jobs: {len(modules)} modules: -j 1 {one.wall:.2f} s, -j 2 {two.wall:.2f} s: "
          f"throughput x{ratio:.2f} (target >= 1.8 on 2 idle cores: {verdict(ratio >= 1.8)}; "
          f"load average now {os.getloadavg()[0]:.1f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objtool")
    ap.add_argument("--kvm", help="kvm.ko (default: from Debian's cloud kernel package)")
    ap.add_argument("--rust", help="a Rust executable (default: ripgrep's rg from Debian)")
    ap.add_argument("--large", help="a ~100 MB library (default: libLLVM-*.so if installed)")
    ap.add_argument("--vmlinux", help="a whole linked vmlinux")
    ap.add_argument("--cfi", nargs="+", metavar="FILE",
                    help="cfi on these files instead of the default set")
    ap.add_argument("--skip", default="", help="comma-separated: corpus,kvm,cfi,large,"
                    "vmlinux,jobs")
    ap.add_argument("--pure", action="store_true",
                    help="run framevet's pure-Python modules (FRAMEVET_PURE=1)")
    args = ap.parse_args()
    if args.pure:
        os.environ["FRAMEVET_PURE"] = "1"
    skip = set(args.skip.split(","))
    objtool = find_objtool(args.objtool)
    modules = sorted(glob.glob(os.path.join(CORPUS, "*.ko")))
    print(f"framevet: {' '.join(framevet())}: {native_status()}; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="fv-speed-debs-") as debs:
        if "corpus" not in skip:
            bench_corpus(objtool, modules)
        if "kvm" not in skip:
            kvm = args.kvm
            if not kvm:
                os.makedirs(os.path.join(debs, "kernel"))
                kvm = fetch_deb("linux-image-6.1.0-50-cloud-amd64-unsigned",
                                "**/kernel/arch/x86/kvm/kvm.ko", os.path.join(debs, "kernel"))
            if kvm:
                bench_kvm(objtool, kvm)
            else:
                print("kvm.ko: not measured (no --kvm and the download failed)")
        if "cfi" not in skip:
            if args.cfi:
                bench_cfi(args.cfi)
            else:
                rust = args.rust
                if not rust:
                    os.makedirs(os.path.join(debs, "rust"))
                    rust = fetch_deb("ripgrep", "usr/bin/rg", os.path.join(debs, "rust"))
                bench_cfi([p for p in USER_TARGETS if os.path.exists(p)] + ([rust] if rust else []))
        if "large" not in skip:
            large = args.large or next(iter(sorted(glob.glob(f"{LIBDIR}/libLLVM-*.so*"))), None)
            if large:
                bench_large(large)
            else:
                print("large: not measured (no --large and no libLLVM installed)")
        if "vmlinux" not in skip:
            if args.vmlinux:
                bench_vmlinux(args.vmlinux)
            else:
                print("vmlinux: not measured (give --vmlinux)")
        if "jobs" not in skip:
            bench_jobs(modules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
