"""Loading the Bochs CPU (``bochscpu-python``): the glibc shim, the CPU model, fast registers.

``bochscpu-python`` 0.4.0 is Bochs's x86-64 CPU (AVX, AVX2, FMA, BMI1/2, AVX-512) behind a
nanobind module.  Three things about it shape this module:

* Its wheels reference ``__isoc23_strtoull`` and ``__isoc23_sscanf``, which glibc exports
  only from 2.38 on.  On an older glibc framevet compiles a two-function shim with the
  system C compiler (the same ``gcc`` that assembles ``.S`` inputs), caches it, and loads
  it with ``RTLD_GLOBAL`` before the module, so the references resolve to it.
* The CPU model (what ``cpuid`` reports and which instructions raise #UD) is a Bochs
  parameter read when the first CPU is created, so it is set once per process, before
  that.  framevet runs Bochs in a child process anyway (see :mod:`framevet.emulate.child`).
* Reading 17 registers through the binding's properties costs ~2.8 us per instruction;
  the general registers of Bochs's (single, global) CPU object are read instead through a
  ctypes view, located once by finding a known register state in the object.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from types import ModuleType

#: ``--cpu`` name -> (index in Bochs's cpudb, Bochs's name, what it adds over SSE4.2)
CPU_MODELS: dict[str, tuple[int, str, str]] = {
    "sandybridge": (19, "corei7_sandy_bridge_2600k", "AVX"),
    "ivybridge": (23, "corei7_ivy_bridge_3770k", "AVX"),
    "haswell": (24, "corei7_haswell_4770", "AVX, AVX2, FMA, BMI1/2"),
    "broadwell": (25, "broadwell_ult", "AVX, AVX2, FMA, BMI1/2, ADX"),
    "ryzen": (22, "ryzen", "AVX, AVX2, FMA, BMI1/2, ADX, SHA"),
    "skylake-x": (26, "corei7_skylake_x", "AVX2, AVX-512 F/CD/BW/DQ/VL"),
    "cannonlake": (27, "corei3_cnl", "AVX2, AVX-512 F/CD/BW/DQ/VL/IFMA/VBMI, SHA"),
    "icelake": (28, "corei7_icelake_u", "AVX2, AVX-512 (+VBMI2, VNNI, BITALG, VPOPCNTDQ), "
                "VAES, GFNI"),
    "tigerlake": (29, "tigerlake", "AVX2, AVX-512 (Ice Lake's + VP2INTERSECT), VAES, GFNI"),
    "sapphirerapids": (30, "sapphire_rapids", "AVX2, AVX-512 (+FP16, BF16), AMX"),
    "arrowlake": (31, "arrow_lake", "AVX2, AVX-VNNI, SHA, no AVX-512"),
}
DEFAULT_CPU = "tigerlake"

_SHIM_SOURCE = b"""\
/* framevet: glibc < 2.38 lacks the C23 names bochscpu-python's wheels link against */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
unsigned long long __isoc23_strtoull(const char *s, char **end, int base)
{ return strtoull(s, end, base); }
int __isoc23_sscanf(const char *s, const char *fmt, ...)
{ va_list ap; va_start(ap, fmt); int n = vsscanf(s, fmt, ap); va_end(ap); return n; }
"""


class BochsUnavailable(Exception):
    """The Bochs backend cannot be loaded here; the message says why."""


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "framevet")
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = os.path.join(tempfile.gettempdir(), f"framevet-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def shim_needed() -> bool:
    """True when this C library lacks the C23 ``strtoull``/``sscanf`` names."""
    libc = ctypes.CDLL(None)
    return not all(hasattr(libc, n) for n in ("__isoc23_strtoull", "__isoc23_sscanf"))


def build_shim() -> str:
    """Path of the compiled shim, built once into the user's cache directory."""
    digest = hashlib.sha256(_SHIM_SOURCE).hexdigest()[:12]
    target = os.path.join(_cache_dir(), f"isoc23-shim-{digest}.so")
    if os.path.exists(target):
        return target
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BochsUnavailable("glibc < 2.38 needs a small C shim for bochscpu-python, "
                               "and no C compiler (gcc) was found to build it")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
        src, out = os.path.join(tmp, "shim.c"), os.path.join(tmp, "shim.so")
        with open(src, "wb") as fh:
            fh.write(_SHIM_SOURCE)
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out, src],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BochsUnavailable(f"building the glibc shim for bochscpu-python failed: "
                                   f"{proc.stderr.strip()[:200]}")
        os.replace(out, target)
    return target


_loaded: dict[str, object] = {}


def load() -> ModuleType:
    """Import ``bochscpu`` (after the shim when glibc needs it)."""
    mod = _loaded.get("module")
    if isinstance(mod, ModuleType):
        return mod
    if shim_needed():
        ctypes.CDLL(build_shim(), mode=ctypes.RTLD_GLOBAL)
    try:
        import bochscpu
        import bochscpu.memory  # noqa: F401 - submodule used through the package
    except ImportError as exc:
        raise BochsUnavailable(f"cannot import bochscpu-python: {exc}") from None
    _loaded["module"] = bochscpu
    return bochscpu


def _native(bx: ModuleType) -> ctypes.CDLL:
    return ctypes.CDLL(bx._bochscpu.__file__)


def select_model(cpu: str) -> None:
    """Make Bochs create its CPU as model ``cpu``; only before the process's first Session."""
    if cpu not in CPU_MODELS:
        raise ValueError(f"unknown CPU model {cpu!r}")
    done = _loaded.get("model")
    if done == cpu:
        return
    if done is not None:
        raise RuntimeError(f"Bochs's CPU model is already {done} in this process")
    lib = _native(load())
    get = lib._ZN13bx_real_sim_c14get_param_enumEPKcP10bx_param_c
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p,
                                                  ctypes.c_void_p]
    set_num = lib._ZN14bx_param_num_c3setEl
    set_num.restype, set_num.argtypes = None, [ctypes.c_void_p, ctypes.c_long]
    param = get(None, b"cpu.model", None)
    if not param:
        raise BochsUnavailable("bochscpu-python has no cpu.model parameter")
    set_num(param, CPU_MODELS[cpu][0])
    _loaded["model"] = cpu


def current_model() -> str:
    """The ``--cpu`` name of the model this process's Bochs CPU is (or will be) created as."""
    done = _loaded.get("model")
    return done if isinstance(done, str) else "cannonlake"


#: Bochs's general-register order (rax rcx rdx rbx rsp rbp rsi rdi r8-r15 rip) for each
#: DWARF-ordered register (rax rdx rcx rbx rsi rdi rbp rsp r8-r15 rip)
_BOCHS_SLOT = (0, 2, 1, 3, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16)


@dataclass
class RegView:
    """The 16 GPRs and rip of Bochs's CPU (DWARF order), read without the binding."""

    slots: ctypes.Array[ctypes.c_uint64] | None

    def read(self) -> list[int]:
        assert self.slots is not None
        s = self.slots
        return [s[0], s[2], s[1], s[3], s[6], s[7], s[5], s[4], s[8], s[9], s[10], s[11],
                s[12], s[13], s[14], s[15], s[16]]


def find_registers(values: list[int]) -> RegView:
    """Locate Bochs's register array by the current values (DWARF order, 17 with rip).

    Returns a view with ``slots=None`` when the layout is not the one expected: callers
    then read registers through the binding (slower, same values)."""
    try:
        lib = _native(load())
        base = ctypes.addressof(ctypes.c_uint8.in_dll(lib, "bx_cpu"))
    except (ValueError, AttributeError, OSError):
        return RegView(None)
    want = [0] * 17
    for dwarf, slot in enumerate(_BOCHS_SLOT):
        want[slot] = values[dwarf]
    pattern = b"".join(v.to_bytes(8, "little") for v in want)
    blob = ctypes.string_at(base, 0x1000)
    off = blob.find(pattern)
    if off < 0 or off % 8 or len(set(want)) < 17:
        return RegView(None)
    return RegView((ctypes.c_uint64 * 17).from_address(base + off))


class Vectors:
    """zmm0-31 of Bochs's CPU 0 as integers (bit 0 = lowest bit of the register)."""

    def __init__(self) -> None:
        lib = _native(load())
        self._get, self._set = lib.cpu_get_zmm, lib.cpu_set_zmm
        for f in (self._get, self._set):
            f.restype = None
            f.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint64)]
        self._buf = (ctypes.c_uint64 * 8)()

    def get(self, index: int) -> int:
        self._get(0, index, self._buf)
        return sum(q << (64 * k) for k, q in enumerate(self._buf))

    def set(self, index: int, value: int) -> None:
        for k in range(8):
            self._buf[k] = (value >> (64 * k)) & (1 << 64) - 1
        self._set(0, index, self._buf)
