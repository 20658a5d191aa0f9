"""The work for one ELF image: the same analysis ``framevet check`` and ``framevet cfi`` run.

:func:`analyse_image` parses the bytes, picks the profile, and calls
:func:`framevet.pipeline.analyse` (``check``) and
:func:`framevet.unwind.cficheck.check_cfi` (``cfi``); what comes back is plain data
(:class:`Outcome`) so it crosses a pipe or a Dask cluster unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from framevet import __version__
from framevet.findings import Finding
from framevet.load.elf import ElfObject, parse_elf
from framevet.load.errors import InputError
from framevet.load.object import LoadedObject
from framevet.pipeline import Options, analyse
from framevet.unwind.cficheck import check_cfi

CHECKS = ("check", "cfi")
EM_X86_64 = 62
#: sections only the kernel's build puts into an object: they pick the kernel profile
KERNEL_SECTIONS = (".modinfo", ".gnu.linkonce.this_module", "__ksymtab", "__ksymtab_gpl",
                   "__ex_table", ".altinstructions", ".orc_unwind", ".return_sites",
                   "__bug_table", ".static_call_sites")


#: packages whose code does not change a file's findings (left out of :func:`version`)
NOT_ANALYSIS = ("cli", "scan")


@dataclass(frozen=True)
class ScanOptions:
    """What decides a file's findings: which checks, the profile, and ``check``'s options."""

    checks: tuple[str, ...] = CHECKS
    #: "auto" picks per file (:func:`profile_of`); "kernel" or "user" forces one
    profile: str = "auto"
    check: Options = field(default_factory=lambda: Options(profile="user"))

    def digest(self) -> str:
        """A stable hash of everything above: results are reused only under the same one."""
        opts = asdict(self.check)
        opts.pop("profile")
        opts["disabled"] = sorted(opts["disabled"])
        hints = opts.pop("hints_file")
        if hints:
            with open(hints, "rb") as fh:
                opts["hints_sha256"] = hashlib.sha256(fh.read()).hexdigest()
        text = json.dumps({"checks": sorted(self.checks), "profile": self.profile,
                           "options": opts}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """What analysing one image gave: status "ok", "error", "timeout" or "skipped"."""

    status: str
    reason: str = ""
    profile: str = ""
    seconds: float = 0.0
    findings: list[dict[str, Any]] = field(default_factory=list)


@functools.cache
def version() -> str:
    """framevet's version plus a digest of its code: a changed analysis is a new version,
    so its results are never mistaken for the old one's."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.parent.name in NOT_ANALYSIS:
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def skip_reason(data: bytes) -> str:
    """Why an ELF image is not one framevet analyses ("" when it is): checked from its
    header, before any work is sent out."""
    if len(data) < 64:
        return ""       # too short for a header: parse_elf reports the truncation
    if data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    machine, = struct.unpack_from("<H", data, 18)
    if machine != EM_X86_64:
        return f"ELF machine {machine}, not x86-64"
    kind, = struct.unpack_from("<H", data, 16)
    if kind not in (1, 2, 3):
        return f"ELF type {kind} holds no code to check"
    return ""


def profile_of(elf: ElfObject) -> str:
    """"kernel" for an object the kernel's build made, else "user": decided by the
    sections only kernel objects carry (module info, exception and symbol export tables,
    alternatives, ORC)."""
    names = {s.name for s in elf.sections}
    return "kernel" if any(n in names for n in KERNEL_SECTIONS) else "user"


def analyse_image(data: bytes, display: str, options: ScanOptions) -> Outcome:
    """Run the chosen checks on one image; an unreadable image is an "error" outcome."""
    start = time.perf_counter()
    try:
        elf = parse_elf(data, display)
    except InputError as exc:
        return Outcome("error", exc.reason, seconds=time.perf_counter() - start)
    profile = profile_of(elf) if options.profile == "auto" else options.profile
    obj = LoadedObject(elf, display)
    found: list[tuple[str, Finding]] = []
    try:
        if "check" in options.checks:
            ctx = analyse(obj, replace(options.check, profile=profile))
            found.extend(("check", f) for f in ctx.findings)
        if "cfi" in options.checks:
            found.extend(("cfi", f) for f in check_cfi(obj))
    except InputError as exc:
        return Outcome("error", exc.reason, profile, time.perf_counter() - start)
    rows = [finding_row(check, f) for check, f in found]
    return Outcome("ok", "", profile, time.perf_counter() - start, rows)


def finding_row(check: str, f: Finding) -> dict[str, Any]:
    """A finding as the store keeps it: no file name (the same bytes may sit at many paths)."""
    j = f.to_json()
    j.pop("file", None)
    j["check"] = check
    src = j.pop("source", None)
    j["source_path"] = src["path"] if src else None
    j["source_line"] = src["line"] if src else None
    details = j.pop("details", None)
    j["details"] = json.dumps(details, sort_keys=True, default=str) if details else None
    return j
