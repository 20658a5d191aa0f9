#!/usr/bin/env python3
"""OpenSSL's AVX2 and AVX-512 routines from libcrypto.a under emulation (issue 14).

    nice python3 bench/openssl_avx.py [LIBCRYPTO_A] [--runs N]

Runs ChaCha20's AVX2 (ChaCha20_8x) and AVX-512 (ChaCha20_avx512, ChaCha20_avx512vl)
block functions and SHA-256's AVX2 and SSSE3 block functions directly (they are the
targets of the cpuid dispatch in ChaCha20_ctr32 and sha256_block_data_order), with
unwinding at every step, and prints one line each: emulator, runs returned,
instructions executed and unwound with each table, and the findings.
Needs Debian's libssl-dev (``apt-get install libssl-dev``).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from framevet.emulate import Budget, RunStats, run_abi  # noqa: E402
from framevet.emulate.survey import members  # noqa: E402

CHACHA = "libcrypto-lib-chacha-x86_64.o"
SHA256 = "libcrypto-lib-sha256-x86_64.o"
#: ChaCha20_ctr32(out, in, len, key[8], counter[4]); sha256 block(state[8], data, blocks)
CHACHA_ARGS = "ptr:1024,ptr:1024:rand,long:1..1024,ptr:32:rand,ptr:16:rand"
SHA_ARGS = "ptr:32:rand,ptr:256:rand,long:1..4"
#: (ChaCha20_ssse3 is left out: for long inputs it dispatches on r10, which its caller
#: ChaCha20_ctr32 loads from OPENSSL_ia32cap_P, so called directly it branches at random)
FUNCTIONS = [(CHACHA, "ChaCha20_8x", CHACHA_ARGS), (CHACHA, "ChaCha20_avx512", CHACHA_ARGS),
             (CHACHA, "ChaCha20_avx512vl", CHACHA_ARGS),
             (SHA256, "sha256_block_data_order_avx2", SHA_ARGS),
             (SHA256, "sha256_block_data_order_ssse3", SHA_ARGS)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive", nargs="?", default="/usr/lib/x86_64-linux-gnu/libcrypto.a")
    ap.add_argument("--runs", type=int, default=8)
    ns = ap.parse_args()
    objs = members(ns.archive, {CHACHA, SHA256})
    fv, dw = "framevet's CFA table", "DWARF CFI (.eh_frame)"
    for member, fn, args in FUNCTIONS:
        st = RunStats()
        # a generous clock: the step budget bounds the run, a loaded machine should not
        found = run_abi(objs[member], fn, args, runs=ns.runs, stats=st,
                        budget=Budget(seconds=120.0))
        u = st.unwind
        print(f"{fn:30} {st.backend:18} returned {st.returned}/{st.runs} executed "
              f"{st.instructions:6} unwound {u.steps:6} framevet {u.checked.get(fv, 0):6} "
              f"dwarf {u.checked.get(dw, 0):6} findings {len(found)}")
        for f in found:
            print(f"    {f.text()[:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
