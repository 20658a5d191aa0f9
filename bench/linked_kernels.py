#!/usr/bin/env python3
"""Linked kernels and hypervisors: Xen 4.17's xen-syms and Debian 6.1's vmlinux.

    python3 bench/linked_kernels.py [--cache DIR] [--only xen|vmlinux]

Downloads ``xen-hypervisor-4.17-amd64-dbg`` and ``linux-image-6.1.0-50-amd64-dbg``
(``apt-get download`` + ``dpkg -x``, about 860 MB, kept in the cache directory) and
prints, with the wall time and the peak RSS of each framevet run:

* ``framevet check --stats`` on xen-syms: the findings by severity and the walk's
  coverage (instructions walked, never reached, bytes treated as data or left out);
* ``framevet orc --dump`` on vmlinux against the ORC the kernel build embedded (read
  by ``framevet orc --read``, as the unwinder reads it): the byte-weighted agreement
  that ``../shared/tools/orc_agree.py`` measures, and the stretches left out.

Run it with ``nice``: the vmlinux run takes minutes and about 3 GB.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("FRAMEVET_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
PACKAGES = {
    "xen": ("xen-hypervisor-4.17-amd64-dbg", "usr/lib/debug/boot/xen-syms-4.17-amd64"),
    "vmlinux": ("linux-image-6.1.0-50-amd64-dbg", "usr/lib/debug/boot/vmlinux-6.1.0-50-amd64"),
}


def fetch(cache: str, which: str) -> str:
    """The package's file, downloaded and unpacked into ``cache`` once."""
    package, member = PACKAGES[which]
    root = os.path.join(cache, which)
    path = os.path.join(root, member)
    if os.path.exists(path):
        return path
    os.makedirs(root, exist_ok=True)
    debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
        debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", debs[0], root], check=True)
    return path


def framevet(*args: str, out: str | None = None) -> tuple[str, str, float, float]:
    """Run framevet: (stdout, stderr, seconds, peak RSS of that run in MB)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    start = time.monotonic()
    with (open(out or os.devnull, "w") as sink, tempfile.TemporaryFile("w+") as so,
          tempfile.TemporaryFile("w+") as se):
        proc = subprocess.Popen([sys.executable, "-m", "framevet.cli", *args], env=env,
                                text=True, stdout=so if out is None else sink, stderr=se)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        secs = time.monotonic() - start
        so.seek(0)
        se.seek(0)
        return so.read(), se.read(), secs, usage.ru_maxrss / 1024


def xen(cache: str) -> None:
    path = fetch(cache, "xen")
    out, err, secs, rss = framevet("check", "--stats", "--no-progress", path)
    sev = {s: len(re.findall(rf": {s}: ", out)) for s in ("error", "warning", "note")}
    stats = next((line for line in err.splitlines() if ": stats: " in line), "")
    print(f"xen-syms check: {sev['error']} errors, {sev['warning']} warnings, "
          f"{sev['note']} notes; {secs:.1f} s, peak RSS {rss:.0f} MB")
    print(f"  {stats.split(': stats: ', 1)[-1]}")


def vmlinux(cache: str) -> None:
    path = fetch(cache, "vmlinux")
    with tempfile.TemporaryDirectory() as tmp:
        ref, cand = os.path.join(tmp, "embedded.orc"), os.path.join(tmp, "framevet.orc")
        _, _, rsecs, _ = framevet("orc", "--read", path, out=ref)
        _, err, secs, rss = framevet("orc", "--dump", path, out=cand)
        spec = importlib.util.spec_from_file_location(
            "orc_agree", os.path.join(SHARED, "tools", "orc_agree.py"))
        assert spec is not None and spec.loader is not None
        agree_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(agree_mod)
        buf = io.StringIO()
        with redirect_stdout(buf):
            agree_mod.main(path, ref, cand)
        agree, total = (int(x) for x in buf.getvalue().split())
    left = [line for line in err.splitlines() if "[code-left-out]" in line]
    print(f"vmlinux orc --dump: {agree} of {total} bytes agree with the embedded ORC "
          f"({100.0 * agree / max(total, 1):.2f} %); {secs:.1f} s, peak RSS {rss:.0f} MB "
          f"(orc --read: {rsecs:.1f} s)")
    print(f"  {len(left)} stretches left out")
    for line in left:
        print(f"    {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "framevet-linked"))
    ap.add_argument("--only", choices=tuple(PACKAGES))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    if args.only in (None, "xen"):
        xen(args.cache)
    if args.only in (None, "vmlinux"):
        vmlinux(args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
