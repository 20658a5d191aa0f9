#!/usr/bin/env python3
"""write-order on real, correct writers: Xen 4.17's update_runstate_area, Linux 6.1
raid10's seqlock writers and kvm's pvclock writer must raise no ``write-order`` finding;
the same declarations with the guard bit or offset moved must (so the silence comes
from the walk).

    python3 bench/write_order_real.py [--xen xen-syms-4.17-amd64] [--kvm kvm.ko]
                                      [--cache DIR]

Without ``--xen`` it runs ``apt-get download xen-hypervisor-4.17-amd64-dbg`` into
``--cache`` and extracts ``xen-syms-4.17-amd64``; without ``--kvm`` it downloads
``linux-image-6.1.0-50-amd64-unsigned`` and extracts ``kvm.ko``. raid10.ko comes from
the shared corpus (``../shared/corpus/kmod``, or ``FRAMEVET_SHARED``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("FRAMEVET_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))

XEN = """[framevet.copy_helpers]
copy_to_guest_ll = { dst = "rdi", src = "rsi", len = "rdx" }
copy_to_user_hvm = { dst = "rdi", src = "rsi", len = "rdx" }
[update_guest_memory_policy]
[update_runstate_area.protocol.runstate]
kind = "flag"
area = "[rdi+0xd0]"
size = 48
guard = { offset = 8, size = 8, bit = BIT }
when = ["[[rdi+0x10]+0x228] & 0x20", "![[rdi+0x10]+0x5f0] & 0xff"]
copy_helpers = ["copy_to_guest_ll", "copy_to_user_hvm"]
[update_runstate_area.protocol.runstate_compat]
kind = "flag"
area = "[rdi+0xd0]"
size = 44
guard = { offset = 4, size = 8, bit = BIT }
when = ["[[rdi+0x10]+0x228] & 0x20", "[[rdi+0x10]+0x5f0] & 0xff"]
copy_helpers = ["copy_to_guest_ll", "copy_to_user_hvm"]
"""

# the same declarations tests/test_write_order.py checks raid10 with
with open(os.path.join(ROOT, "tests", "fixtures", "write-order", "raid10.toml.template")) as _f:
    RAID10 = _f.read()


KVM = """[kvm_setup_guest_pvclock.protocol.pvti]
kind = "seqcount"
area = "[rsi+0x60]+rdx"
size = 32
guard = { offset = GUARD, size = 4 }
"""


def from_package(cache: str, package: str, name: str) -> str:
    """``name`` from Debian's ``package``, downloaded once into ``cache``."""
    found = glob.glob(os.path.join(cache, package, "**", name), recursive=True)
    if found:
        return found[0]
    os.makedirs(cache, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
    deb = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))[-1]
    subprocess.run(["dpkg", "-x", deb, os.path.join(cache, package)], check=True)
    return glob.glob(os.path.join(cache, package, "**", name), recursive=True)[0]


def check(binary: str, toml_text: str, functions: set[str]) -> tuple[list[str], float]:
    with tempfile.TemporaryDirectory() as tmp:
        toml = os.path.join(tmp, "framevet.toml")
        with open(toml, "w") as fh:
            fh.write(toml_text)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "framevet.cli", "check", "--format", "json",
                            "--fail-on", "never", "--hints", toml, binary],
                           capture_output=True, text=True, check=False)
        dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"framevet failed on {binary}: {r.stderr.strip()}")
    found = [f"{f['symbol']}+{f['offset']:#x}: {f['message']} [{f['rule']}]"
             for f in json.loads(r.stdout) if f["rule"].startswith("write-order")
             or f["symbol"] in functions]
    return found, dt


def report(what: str, good: list[str], bad: list[str], dt: float) -> bool:
    clean = not any("[write-order]" in f for f in good)
    caught = any("[write-order]" in f for f in bad)
    print(f"{what}: correct declaration: {len(good)} finding(s) in the declared functions "
          f"{'(clean)' if clean else ''}; guard moved: {len(bad)} write-order finding(s) "
          f"({'caught' if caught else 'MISSED'}); {dt:.1f} s per run")
    for f in good:
        print("   ", f)
    return clean and caught


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--xen", help="xen-syms-4.17-amd64 (default: download it)")
    ap.add_argument("--kvm", help="Linux 6.1 kvm.ko (default: download it)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/framevet-bench"))
    args = ap.parse_args()
    ok = True
    raid10 = os.path.join(SHARED, "corpus", "kmod", "raid10.ko")
    funcs = {"raise_barrier", "lower_barrier"}
    good, dt = check(raid10, RAID10.replace("GUARD", "0xd8"), funcs)
    bad, _ = check(raid10, RAID10.replace("GUARD", "0xd4"), funcs)
    ok &= report("raid10.ko raise_barrier/lower_barrier (seqlock)", good, bad, dt)
    kvm = args.kvm or from_package(args.cache, "linux-image-6.1.0-50-amd64-unsigned", "kvm.ko")
    funcs = {"kvm_setup_guest_pvclock"}
    good, dt = check(kvm, KVM.replace("GUARD", "0"), funcs)
    bad, _ = check(kvm, KVM.replace("GUARD", "4"), funcs)
    ok &= report("kvm.ko kvm_setup_guest_pvclock (pvclock)", good, bad, dt)
    xen = args.xen or from_package(args.cache, "xen-hypervisor-4.17-amd64-dbg",
                                   "xen-syms-4.17-amd64")
    good, dt = check(xen, XEN.replace("BIT", "63"), {"update_runstate_area"})
    bad, _ = check(xen, XEN.replace("BIT", "62"), {"update_runstate_area"})
    ok &= report("xen-syms 4.17 update_runstate_area (native + compat)", good, bad, dt)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
