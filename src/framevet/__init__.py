"""framevet: verify the stack-frame and register discipline of x86-64 machine code.

The per-instruction modules are compiled to C extensions by Cython when framevet is
installed (``setup.py``; the ``.py`` files stay the one source).  A compiled module is
used only when it is at least as new as its ``.py`` file, so that an edited source is
never shadowed by a stale build, and never when ``FRAMEVET_PURE`` is set to a non-empty
value other than ``0``: then framevet runs as pure Python.  :data:`NATIVE` records,
per module imported, which of the two was loaded and why.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__version__ = "0.1.0"

#: per framevet module that has a compiled build: ``"compiled"``, or why the ``.py``
#: was loaded instead (``"pure: ..."``)
NATIVE: dict[str, str] = {}


def pure_requested() -> bool:
    """``FRAMEVET_PURE`` asks for the pure-Python modules."""
    return os.environ.get("FRAMEVET_PURE", "") not in ("", "0")


class _CompiledOrSource:
    """Finds framevet's modules: a compiled build beside a ``.py`` only when it may be
    used (see the module's doc), the ``.py`` otherwise."""

    @classmethod
    def find_spec(cls, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith(__name__ + ".") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not isinstance(
                spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        origin = spec.origin
        source = os.path.join(os.path.dirname(origin), fullname.rpartition(".")[2] + ".py")
        if not os.path.exists(source):
            return spec
        if pure_requested():
            reason = "pure: FRAMEVET_PURE is set"
        elif os.stat(source).st_mtime > os.stat(origin).st_mtime:
            reason = f"pure: {source} is newer than its compiled build (reinstall to rebuild)"
        else:
            NATIVE[fullname] = "compiled"
            return spec
        NATIVE[fullname] = reason
        return importlib.util.spec_from_file_location(fullname, source)


if not any(f is _CompiledOrSource for f in sys.meta_path):
    sys.meta_path.insert(0, _CompiledOrSource)
