"""Annotations: objtool's ``.discard.*`` sections and framevet's TOML sidecar.

An unlinked object may still carry objtool's annotations (unwind hints,
(un)reachable marks, intra-function calls, STACK_FRAME_NON_STANDARD, retpoline
safe marks); :mod:`framevet.cfg.objtool_annotations` reads them while the program is built,
exactly as objtool does, and they are collected here.  A linked module has
lost them, and hand-written code may never have had them: the sidecar
(``--hints FILE``, default ``framevet.toml`` in the input's folder or the nearest
parent that has one) declares the same
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

import copy
import difflib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from framevet.cfg.program import Program
from framevet.cfg.protocols import WriteOrderDecls, read_write_order
from framevet.cfg.sidecar import SidecarFile, find_sidecar, read_sidecar
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
from framevet.load.errors import InputError
from framevet.load.object import LoadedObject

REG_BY_NAME = {n: i for i, n in enumerate(d.REG_NAMES[:16])}


@dataclass
class FunctionDecl:
    """What a function's ``[name]`` table declares; one field per key of FUNCTION_KEYS."""

    entry: str = "call"
    extra_words: int = 0
    clobbers: frozenset[int] = frozenset()
    noreturn: bool = False
    stack_args: int = 0
    #: objtool's STACK_FRAME_NON_STANDARD: the function is not walked at all
    non_standard: bool = False



@dataclass(frozen=True)
class Key:
    """One key a ``framevet.toml`` table may hold: its type, the values allowed, and how
    the value becomes the field of the same name (FunctionDecl, or the [framevet] dict)."""

    kind: type
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    #: the values a list may hold (empty: any string)
    items: tuple[str, ...] = ()
    convert: Callable[[Any], Any] | None = None


#: the keys of a ``[NAME]`` table (NAME: a function, an assembly label (STT_NOTYPE) or a
#: raw address ``"0xffff82d040201190"``): a new key is a row here plus a field above
FUNCTION_KEYS: dict[str, Key] = {
    "entry": Key(str, "the frame the function starts on", choices=("iret", "regs", "call")),
    "extra_words": Key(int, "words the entry code pushed above the hardware frame", minimum=0),
    "clobbers": Key(list, "callee-saved registers it changes by design", items=tuple(REG_BY_NAME),
                    convert=lambda regs: frozenset(REG_BY_NAME[r] for r in regs)),
    "noreturn": Key(bool, "it never returns"),
    "stack_args": Key(int, "incoming stack-argument words it may read and write", minimum=0),
    "non_standard": Key(bool, "objtool's STACK_FRAME_NON_STANDARD: it is not walked at all"),
}
#: the table of declarations about the object rather than one function, and its keys
GLOBAL_TABLE = "framevet"
GLOBAL_KEYS: dict[str, Key] = {
    "intra_function_calls": Key(list, "calls to a local label (SYMBOL+0xOFF), jumps that push"),
}
_KIND_NAME = {bool: "true or false", int: "an integer", str: "a string", list: "a list"}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _checked(sc: SidecarFile, table: str, key: str, spec: Key, value: Any) -> Any:
    """``value`` converted, if it fits ``spec``; else the error naming file, line and key."""
    def bad(reason: str) -> InputError:
        return sc.error(table, key, f"[{table}] {key}: {reason}")

    if spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.kind)
    if not ok:
        raise bad(f"expected {_KIND_NAME.get(spec.kind, spec.kind.__name__)}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise bad(f"{value!r} is not one of {', '.join(spec.choices)}")
    if spec.minimum is not None and value < spec.minimum:
        raise bad(f"{value} is below {spec.minimum}")
    if spec.kind is list:
        for item in value:
            if not isinstance(item, str):
                raise bad(f"expected strings, got {item!r}")
            if spec.items and item not in spec.items:
                raise bad(f"unknown value {item!r}{_did_you_mean(item, spec.items)}")
    return spec.convert(value) if spec.convert is not None else value


def validate(sc: SidecarFile, tables: dict[str, Any] | None = None
             ) -> tuple[dict[str, FunctionDecl], dict[str, Any]]:
    """Every declaration of a sidecar checked against FUNCTION_KEYS and GLOBAL_KEYS: an
    unknown key, a value of the wrong type or out of range is an error at its line."""
    functions: dict[str, FunctionDecl] = {}
    glob: dict[str, Any] = {}
    for table, spec in (sc.tables if tables is None else tables).items():
        if not isinstance(spec, dict):
            raise sc.error(table, "", f"{table} must be a table: [{table}]")
        keys = GLOBAL_KEYS if table == GLOBAL_TABLE else FUNCTION_KEYS
        values: dict[str, Any] = {}
        for key, value in spec.items():
            k = keys.get(key)
            if k is None:
                raise sc.error(table, key, f"[{table}] unknown key {key!r}"
                               + _did_you_mean(key, keys))
            values[key] = _checked(sc, table, key, k, value)
        if table == GLOBAL_TABLE:
            glob = values
        else:
            functions[table] = FunctionDecl(**values)
    return functions, glob


def read_declarations(path: str) -> tuple[SidecarFile, dict[str, FunctionDecl], dict[str, Any]]:
    """A sidecar read and validated (write-order protocols included)."""
    sc = read_sidecar(path)
    data = copy.deepcopy(sc.tables)
    read_write_order(path, sc.text, data)
    functions, glob = validate(sc, data)
    return sc, functions, glob


@dataclass
class Hints:
    cfi: dict[int, tuple[int, ...]] = field(default_factory=dict)
    save: set[int] = field(default_factory=set)
    restore: set[int] = field(default_factory=set)
    ignored_gids: set[int] = field(default_factory=set)
    retpoline_safe: set[int] = field(default_factory=set)
    functions: dict[str, FunctionDecl] = field(default_factory=dict)
    source: str | None = None
    #: the line of each function's declaration in ``source``
    lines: dict[str, int] = field(default_factory=dict)
    #: write-order protocols and copy helpers (docs/write-order.md)
    write_order: WriteOrderDecls = field(default_factory=WriteOrderDecls)


def _key(state: list[int]) -> tuple[int, ...]:
    return tuple(state[0:9]) + tuple(state[REGS:STATE_LEN])


def read_hints(obj: LoadedObject, prog: Program, sidecar: str | None = None) -> Hints:
    h = Hints()
    _discard_sections(prog, h)
    path = sidecar if sidecar is not None else find_sidecar(obj.elf.path.split("(")[0])
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
    sc = read_sidecar(path)
    data = copy.deepcopy(sc.tables)
    h.source = path
    h.write_order = read_write_order(path, sc.text, data)
    h.functions, fv = validate(sc, data)
    h.lines = {name: sc.line(name) for name in h.functions}
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
