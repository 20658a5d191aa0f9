"""Annotations: objtool's ``.discard.*`` sections and framevet's TOML sidecar.

An unlinked object may still carry objtool's annotations (unwind hints,
(un)reachable marks, intra-function calls, STACK_FRAME_NON_STANDARD, retpoline
safe marks); :mod:`framevet.cfg.objtool_annotations` reads them while the program is built,
exactly as objtool does, and they are collected here.  A linked module has
lost them, and hand-written code may never have had them: the sidecar
(``--hints FILE``, default ``framevet.toml`` beside the input) declares the same
facts without touching the source (design §6)::

    [xen_page_fault]            # seed 000: pop %rcx; pop %r11; jmp handler
    entry = "iret"              # "iret" | "regs" | "call"
    extra_words = 2
    [load_guest_gprs]           # seed 001: non-standard convention
    clobbers = ["rbx", "rbp", "r12"]
    [my_die]
    noreturn = true
    [copy_args]
    stack_args = 2              # may read/write 2 argument words above the return address
    [framevet]
    intra_function_calls = ["stub+0x10"]
"""

from __future__ import annotations

import os
import struct
import tomllib
from dataclasses import dataclass, field
from typing import Any

from framevet.cfg.program import Program
from framevet.cfg.protocols import WriteOrderDecls, read_write_order
from framevet.decode import insn as d
from framevet.decode.state import (
    CFA_OFF,
    REGS,
    STACK,
    STATE_LEN,
    T_CALL,
    T_REGS,
    T_REGS_PARTIAL,
    TYPE,
    func_entry_state,
)
from framevet.errors import InputError
from framevet.load.object import LoadedObject

REG_BY_NAME = {n: i for i, n in enumerate(d.REG_NAMES[:16])}


@dataclass
class FunctionDecl:
    entry: str = "call"
    extra_words: int = 0
    clobbers: frozenset[int] = frozenset()
    noreturn: bool = False
    stack_args: int = 0
    #: objtool's STACK_FRAME_NON_STANDARD: the function is not walked at all
    non_standard: bool = False


#: the keys of a ``[NAME]`` table; NAME is a function, an assembly label
#: (STT_NOTYPE) or a raw address (``"0xffff82d040201190"``)
FUNCTION_KEYS = frozenset({"entry", "extra_words", "clobbers", "noreturn", "stack_args",
                           "non_standard"})


@dataclass
class Hints:
    cfi: dict[int, tuple[int, ...]] = field(default_factory=dict)
    save: set[int] = field(default_factory=set)
    restore: set[int] = field(default_factory=set)
    ignored_gids: set[int] = field(default_factory=set)
    retpoline_safe: set[int] = field(default_factory=set)
    functions: dict[str, FunctionDecl] = field(default_factory=dict)
    source: str | None = None
    #: write-order protocols and copy helpers (docs/write-order.md)
    write_order: WriteOrderDecls = field(default_factory=WriteOrderDecls)


def _key(state: list[int]) -> tuple[int, ...]:
    return tuple(state[0:9]) + tuple(state[REGS:STATE_LEN])


def read_hints(obj: LoadedObject, prog: Program, sidecar: str | None = None) -> Hints:
    h = Hints()
    _discard_sections(prog, h)
    path = sidecar
    if path is None:
        cand = os.path.join(os.path.dirname(os.path.abspath(obj.elf.path.split("(")[0])),
                            "framevet.toml")
        path = cand if os.path.isfile(cand) else None
    if path is not None:
        _sidecar(path, prog, h)
    return h


def _discard_sections(prog: Program, h: Hints) -> None:
    """What :func:`cfg.build` read from objtool's annotations (framevet.cfg.objtool_annotations)."""
    h.cfi.update(prog.hint_cfi)
    h.save.update(prog.hint_save)
    h.restore.update(prog.hint_restore)
    h.ignored_gids = prog.ignored
    h.retpoline_safe.update(prog.retpoline_safe)
    _paravirt_sites(prog, h)


def _drop_problems(prog: Program, g: int, rule: str) -> None:
    """The program was built before the sidecar was read: what it reported at ``g``
    that a declaration answers is withdrawn."""
    sec, off = prog.sec_of[g], prog.off[g]
    prog.problems[:] = [p for p in prog.problems
                        if not (p.rule == rule and p.sec == sec and p.off == off)]


def _rel32(prog: Program, g: int) -> int:
    data = prog.elf.sections[prog.sec_of[g]].data
    end = prog.off[g] + prog.length[g]
    return int(struct.unpack_from("<i", data, end - 4)[0])


def _sidecar(path: str, prog: Program, h: Hints) -> None:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        data = tomllib.loads(text)
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"invalid TOML: {exc}") from None
    h.source = path
    h.write_order = read_write_order(path, text, data)
    fv = data.pop("framevet", {})
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise InputError(path, f"[{name}] must be a table")
        h.functions[name] = _decl(path, name, spec)
    for spot in fv.get("intra_function_calls", []):
        g = _resolve(prog, spot)
        if g < 0:
            raise InputError(path, f"intra_function_calls: no instruction at {spot}")
        dest = prog.gid(prog.sec_of[g], prog.off[g] + prog.length[g] + _rel32(prog, g))
        if dest >= 0:
            prog.kind[g] = d.JUMP_UNCOND
            prog.jump_dest[g] = dest
            prog.ops[g] = ((d.D_PUSH, 0, 0, d.S_CONST, 0, 0),)
            prog.intra_calls.add(g)
            _drop_problems(prog, g, "unannotated-intra-function-call")
    for name, decl in h.functions.items():
        if decl.non_standard:
            h.ignored_gids.update(_code_of(prog, name))
        if decl.entry == "call" and not decl.extra_words:
            continue
        g = _resolve(prog, name)
        if g < 0:
            continue
        st = func_entry_state()
        st[TYPE] = {"iret": T_REGS_PARTIAL, "regs": T_REGS, "call": T_CALL}[decl.entry]
        st[CFA_OFF] = 8 * decl.extra_words + (8 if decl.entry == "call" else 0)
        st[STACK] = st[CFA_OFF]
        h.cfi[g] = _key(st)


def _decl(path: str, name: str, spec: dict[str, Any]) -> FunctionDecl:
    entry = spec.get("entry", "call")
    if entry not in ("iret", "regs", "call"):
        raise InputError(path, f"[{name}] entry must be iret, regs or call")
    regs = set()
    for r in spec.get("clobbers", []):
        if r not in REG_BY_NAME:
            raise InputError(path, f"[{name}] unknown register {r!r} in clobbers")
        regs.add(REG_BY_NAME[r])
    return FunctionDecl(entry, int(spec.get("extra_words", 0)), frozenset(regs),
                        bool(spec.get("noreturn", False)), int(spec.get("stack_args", 0)),
                        bool(spec.get("non_standard", False)))


def _resolve(prog: Program, spot: str) -> int:
    """The instruction at ``NAME[+OFF]`` (a function or any other symbol, such as an
    assembly label) or at a raw address ``0x...``; -1 when there is none."""
    name, _, off = spot.partition("+")
    offset = int(off, 0) if off else 0
    for f in prog.functions:
        if f.name == name:
            return prog.gid(f.sec, f.start + offset)
    for s in prog.elf.symbols:
        if s.name == name and s.defined and s.shndx in prog.base:
            return prog.gid(s.shndx, s.offset + offset)
    if name.lower().startswith("0x"):
        addr = int(name, 16) + offset
        for sec_index in prog.base:
            sec = prog.elf.sections[sec_index]
            start = sec.addr if not prog.elf.relocatable else 0
            if start <= addr < start + sec.size:
                return prog.gid(sec_index, addr - start)
    return -1


def _code_of(prog: Program, name: str) -> list[int]:
    """The instructions of function ``name`` (cold part included), else of the code
    from the label or address ``name`` to the next symbol."""
    for fi, f in enumerate(prog.functions):
        if f.name == name:
            return prog.func_insns(fi)
    g = _resolve(prog, name)
    if g < 0:
        return []
    sec = prog.sec_of[g]
    starts = {s.offset for s in prog.elf.symbols if s.defined and s.shndx == sec and s.name}
    out = [g]
    n = prog.next_same_sec(g)
    while n >= 0 and prog.off[n] not in starts:
        out.append(n)
        n = prog.next_same_sec(n)
    return out


def _paravirt_sites(prog: Program, h: Hints) -> None:
    """Paravirt call sites (``.parainstructions``: u64 address, u8 type, u8 length) are
    patched at boot; in the kernel each carries ANNOTATE_RETPOLINE_SAFE, which a
    linked module has lost with ``.discard.retpoline_safe``."""
    elf = prog.elf
    sec = elf.section(".parainstructions")
    if sec is None or not sec.data:
        return
    for r in elf.relocs.get(sec.index, []):
        if r.offset % 16 or r.offset + 10 > len(sec.data):
            continue
        sym = elf.symbols[r.sym]
        if not sym.defined:
            continue
        start = sym.offset + r.addend
        length = sec.data[r.offset + 9]
        g = prog.gid(sym.shndx, start)
        while g >= 0 and prog.off[g] < start + max(length, 1):
            h.retpoline_safe.add(g)
            g = prog.next_same_sec(g)
