"""Builds framevet's per-instruction modules as C extensions with Cython.

The ``.py`` files stay the one source: Cython compiles them as they are, and a module
whose compiled build is missing or older than its source is imported from the ``.py``
(``src/framevet/__init__.py``).  Without a C compiler or Python's headers the install
still succeeds, says why nothing was compiled, and framevet runs as pure Python.
``FRAMEVET_PURE=1`` at install time skips the compilation.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: the modules that run once per instruction (decode, CFG, the stack walks, the CFA
#: table, the CFI interpreter and its comparison with framevet's walk)
NATIVE_MODULES = [
    "framevet.decode.insn", "framevet.decode.state",
    "framevet.cfg.program", "framevet.cfg.build",
    "framevet.stack.walker", "framevet.stack.effects", "framevet.stack.transfers",
    "framevet.stack.usermodel", "framevet.stack.userframe", "framevet.stack.cfacopies",
    "framevet.stack.regflow",
    "framevet.unwind.dwarf", "framevet.unwind.cfarule", "framevet.unwind.cfatable",
    "framevet.unwind.userwalk", "framevet.unwind.cficheck", "framevet.unwind.cfiplaces",
]


def _say(message: str) -> None:
    print(f"framevet: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compiles in parallel; a failure leaves the pure-Python modules in use."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 -- any build failure means pure Python
            _say(f"compiled modules not built ({e}); framevet runs as pure Python")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            _say(f"{ext.name} not compiled ({e}); it runs as pure Python")


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("FRAMEVET_PURE", "") not in ("", "0"):
        _say("FRAMEVET_PURE is set: nothing compiled; framevet runs as pure Python")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        _say(f"Cython is missing ({e}); framevet runs as pure Python")
        return []
    sources = [os.path.join("src", *m.split(".")) + ".py" for m in NATIVE_MODULES]
    try:
        extensions = cythonize(sources, compiler_directives={"language_level": 3},
                               quiet=True, nthreads=os.cpu_count() or 1)
    except Exception as e:  # noqa: BLE001 -- a Cython error means pure Python
        _say(f"Cython could not translate the modules ({e}); framevet runs as pure Python")
        return []
    for ext in extensions:
        # Cython's C is mostly calls into Python's C API: -O1 runs about as fast as
        # -O3 and compiles in a fraction of the time; no debug information
        ext.extra_compile_args = ["-O1", "-g0"]
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
