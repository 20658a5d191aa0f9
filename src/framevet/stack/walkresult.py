"""What the stack-state walk is asked and what it answers."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass(slots=True)
class Warning:
    gid: int          # -1: no location (objtool's plain WARN)
    rule: str
    message: str
    #: the section objtool names instead of the instruction's own: the one its walk
    #: (validate_branch) started in, e.g. .altinstr_replacement after a replacement
    sec: int = -1
    #: stack-state-mismatch: the instruction the second path came from, and its state
    via: int = -1
    arriving: tuple[int, ...] | None = None


@dataclass
class WalkOptions:
    stackval: bool = False
    uaccess: bool = False
    #: --noinstr (with --link): calls and returns in .noinstr.text/.entry.text functions
    noinstr: bool = False
    #: ... and unwind hints in those sections too (objtool's --noinstr without a full walk)
    noinstr_hints: bool = False
    #: report every warning of a function instead of stopping at the first
    all_warnings: bool = False


@dataclass
class WalkResult:
    #: per gid: the interned CFI tuple (see CFI_FIELDS), or None when never reached
    cfi: list[tuple[int, ...] | None]
    warnings: list[Warning] = field(default_factory=list)
    visited: bytearray = field(default_factory=bytearray)
    #: every distinct CFI tuple the walk recorded (interned states and hints)
    states: list[tuple[int, ...]] = field(default_factory=list)
    #: per gid, the instruction the walk first reached it from (-1: a walk's start)
    pred: array[int] = field(default_factory=lambda: array("i"))
    #: functions (parents) whose walk a warning ended, as objtool ends it: what the
    #: walk did not reach there is not known to be unreachable
    aborted: set[int] = field(default_factory=set)


class WalkAborted(Exception):
    """Ends the walk of a function, as objtool's first warning does."""
