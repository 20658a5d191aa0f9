"""What emulation reports: :class:`Finding` records and the rule ids it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framevet.emulate.image import Image

#: rule ids emulation reports (design §5, plus ``emulation-error`` for runs that
#: could not be judged: unsupported instruction, exhausted budget)
ABI_VIOLATION = "abi-violation"
UNWIND_FAILURE = "unwind-failure"
DIFF_DIVERGENCE = "diff-divergence"
STUB_SIZE = "stub-size"
REL32_REACH = "rel32-reach"
EMULATION_ERROR = "emulation-error"

RULES = (ABI_VIOLATION, UNWIND_FAILURE, DIFF_DIVERGENCE, STUB_SIZE, REL32_REACH,
         EMULATION_ERROR)


@dataclass
class Finding:
    """One result of emulation, located at the instruction that caused it.

    ``file``/``section``/``symbol``/``offset`` follow framevet's finding
    contract (design §4): ``offset`` is relative to ``symbol`` when there is
    one, else to ``section``.  ``address`` is the run-time address the
    instruction was emulated at; ``source`` is ``(path, line)`` for assembled
    sources; ``trace`` holds a few human-readable lines (disassembly around
    the fault, or both sides of a divergence).
    """

    file: str
    section: str
    symbol: str
    offset: int
    rule: str
    severity: str
    message: str
    trace: list[str] = field(default_factory=list)
    address: int | None = None
    source: tuple[str, int] | None = None
    #: offset in ``section`` (``offset`` is symbol-relative when there is a symbol)
    section_offset: int | None = None

    def location(self) -> str:
        if self.symbol:
            return f"{self.symbol}+0x{self.offset:x}"
        if self.section:
            return f"{self.section}+0x{self.offset:x}"
        return f"0x{self.address or 0:x}"

    def text(self) -> str:
        """The one-line text form: ``FILE: SEVERITY: framevet: LOC: MESSAGE [RULE]``."""
        head = f"{self.source[0]}:{self.source[1]}: " if self.source else ""
        return (f"{head}{self.file}: {self.severity}: framevet: {self.location()}: "
                f"{self.message} [{self.rule}]")

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "file": self.file, "section": self.section, "symbol": self.symbol,
            "offset": self.offset, "address": self.address, "rule": self.rule,
            "severity": self.severity, "message": self.message,
        }
        if self.source:
            out["source"] = {"path": self.source[0], "line": self.source[1]}
        if self.trace:
            out["trace"] = list(self.trace)
        return out


def finding_at(image: Image, pc: int, rule: str, severity: str, message: str,
               trace: list[str] | None = None, display: str = "") -> Finding:
    """A :class:`Finding` located at the instruction at run-time address ``pc``."""
    loc = image.locate(pc) if pc else None
    if loc is None:
        name = image.extern_at.get(pc, "")
        return Finding(display, "", name, 0, rule, severity, message, list(trace or []),
                       pc or None, None, None)
    off = loc.sym_offset if loc.symbol else loc.offset
    source = None
    if loc.obj.loaded is not None:
        source = loc.obj.loaded.source_of(loc.section.name, loc.offset)
        if source is not None and not os.path.isfile(source[0]):
            # framevet.load.asm reads DWARF 5 file names without applying
            # .rela.debug_line_str and can return the compilation directory:
            # the assembled file itself is the right answer for one-file sources
            source = (loc.obj.display, source[1])
    return Finding(loc.obj.display, loc.section.name, loc.symbol, off, rule, severity, message,
                   list(trace or []), pc, source, loc.offset)
