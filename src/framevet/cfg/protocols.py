"""Write-order protocol declarations: ``[FUNCTION.protocol.NAME]`` and
``[framevet.copy_helpers]`` in ``framevet.toml`` (docs/write-order.md).

An *expression* names a value at function entry: a register (``rdi``), a
symbol's address (``active_cfg``), an 8-byte load (``[rdi+0x40]``), sums with
constants and registers (``[rdi+0x10]+rsi-8``), and for ``when`` a final mask
(``[[rdi+0x10]+0x218] & 0x20``).  ``area`` may also be ``ret:FUNC``: the object
FUNC returns.  Expressions are kept in one canonical form, :class:`Expr` (a
sorted tuple of atoms plus a constant), so the dataflow compares them with ``==``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from framevet.load.errors import InputError

KINDS = ("flag", "seqcount", "publish")
REGS64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
PROTOCOL_KEYS = frozenset({"kind", "area", "size", "guard", "data", "when", "copy_helpers",
                           "slot"})
GUARD_KEYS = frozenset({"offset", "size", "bit"})
HELPER_KEYS = frozenset({"dst", "src", "len"})
MASK64 = (1 << 64) - 1


@dataclass(frozen=True, order=True)
class Atom:
    """One non-constant term: ``reg`` (entry value of a register, by name), ``sym``
    (a symbol's address), ``load`` (8 bytes at ``inner``), ``ret`` (what FUNC
    returned), ``stack`` (the CFA: the caller's rsp after the return)."""

    kind: str
    name: str = ""
    inner: Expr | None = None


@dataclass(frozen=True, order=True)
class Expr:
    atoms: tuple[Atom, ...] = ()
    const: int = 0

    def plus(self, k: int) -> Expr:
        return Expr(self.atoms, (self.const + k) & MASK64)

    def add(self, other: Expr) -> Expr:
        return Expr(tuple(sorted(self.atoms + other.atoms)), (self.const + other.const) & MASK64)

    def minus_base(self, base: Expr) -> int | None:
        """k when self == base + k."""
        if self.atoms != base.atoms:
            return None
        k = (self.const - base.const) & MASK64
        return k - (1 << 64) if k >> 63 else k

    @property
    def is_const(self) -> bool:
        return not self.atoms

    def text(self) -> str:
        parts = [_atom_text(a) for a in self.atoms]
        c = self.const - (1 << 64) if self.const >> 63 else self.const
        if c or not parts:
            parts.append(f"{c:+#x}" if parts else f"{c:#x}")
        return "+".join(parts).replace("+-", "-").replace("++", "+")


def _atom_text(a: Atom) -> str:
    if a.kind == "load" and a.inner is not None:
        return f"[{a.inner.text()}]"
    if a.kind == "ret":
        return f"ret:{a.name}"
    return a.name or a.kind


def reg(name: str) -> Expr:
    return Expr((Atom("reg", name),))


def load(inner: Expr) -> Expr:
    return Expr((Atom("load", "", inner),))


@dataclass(frozen=True)
class Condition:
    """One ``when`` term: ``value & mask`` is nonzero (mask 0: ``value`` is nonzero);
    ``negated``: it is zero (written ``!EXPR & MASK``)."""

    value: Expr
    mask: int
    negated: bool = False


@dataclass(frozen=True)
class Guard:
    offset: int
    size: int
    bit: int | None          # flag: the bit that means "open"; seqcount: None (odd = open)


@dataclass(frozen=True)
class CopyHelper:
    name: str
    dst: str
    src: str | None
    len: str | None


@dataclass
class Protocol:
    function: str
    name: str
    kind: str
    area: Expr
    size: int
    guard: Guard | None
    data: tuple[tuple[int, int], ...]
    when: tuple[Condition, ...] = ()
    copy_helpers: tuple[str, ...] = ()
    slot: Expr | None = None
    line: int = 0

    @property
    def ret_of(self) -> str | None:
        a = self.area.atoms
        return a[0].name if len(a) == 1 and a[0].kind == "ret" else None


@dataclass
class WriteOrderDecls:
    protocols: list[Protocol] = field(default_factory=list)
    helpers: dict[str, CopyHelper] = field(default_factory=dict)

    def for_function(self, name: str) -> list[Protocol]:
        return [p for p in self.protocols if p.function == name]

    @property
    def declared_functions(self) -> set[str]:
        return {p.function for p in self.protocols} | set(self.helpers)


# -- expression parser ----------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(\[)|(\])|(\+)|(-)|(&)|(0x[0-9a-fA-F]+|\d+)|"
                    r"(ret:[A-Za-z_.$][\w.$]*)|([A-Za-z_.$][\w.$]*))")


class _Bad(Exception):
    pass


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _Bad(f"unexpected {text[pos:].strip()[:12]!r}")
        out.append(m.group(0).strip())
        pos = m.end()
    return out


def _parse_sum(toks: list[str], i: int, allow_ret: bool) -> tuple[Expr, int]:
    total = Expr()
    sign = 1
    expect_term = True
    while i < len(toks):
        t = toks[i]
        if expect_term:
            if t == "[":
                inner, i = _parse_sum(toks, i + 1, False)
                if i >= len(toks) or toks[i] != "]":
                    raise _Bad("missing ']'")
                term = load(inner)
            elif t[0].isdigit():
                term = Expr((), int(t, 0))
            elif t.startswith("ret:"):
                if not allow_ret:
                    raise _Bad(f"{t} must be the whole expression")
                term = Expr((Atom("ret", t[4:]),))
            elif t in REGS64:
                term = reg(t)
            elif t in ("]", "+", "-", "&"):
                raise _Bad(f"expected a register, symbol, number or '[' before {t!r}")
            else:
                term = Expr((Atom("sym", t),))
            if sign < 0:
                if not term.is_const:
                    raise _Bad("only constants can be subtracted")
                term = Expr((), -term.const & MASK64)
            total = total.add(term)
            expect_term = False
            i += 1
        elif t in ("+", "-"):
            sign = 1 if t == "+" else -1
            expect_term = True
            i += 1
        else:
            break
    if expect_term:
        raise _Bad("expression ends where a term is expected")
    return total, i


def parse_expr(text: str, allow_mask: bool = False,
               allow_ret: bool = False) -> Expr | Condition:
    """Parse one declaration expression; raises ValueError with the reason."""
    try:
        toks = _tokens(text)
        if not toks:
            raise _Bad("empty expression")
        expr, i = _parse_sum(toks, 0, allow_ret)
        if any(a.kind == "ret" for a in expr.atoms) and (len(expr.atoms) > 1 or expr.const):
            raise _Bad("ret:FUNC must be the whole expression")
        if i < len(toks) and toks[i] == "&" and allow_mask:
            if i + 2 != len(toks) or not toks[i + 1][0].isdigit():
                raise _Bad("'&' must be followed by one constant at the end")
            return Condition(expr, int(toks[i + 1], 0))
        if i != len(toks):
            raise _Bad(f"unexpected {toks[i]!r}")
        return Condition(expr, 0) if allow_mask else expr
    except _Bad as exc:
        raise ValueError(str(exc)) from None


# -- reading the sidecar ----------------------------------------------------------
def _line_of(lines: list[str], header: str, key: str | None = None) -> int:
    """1-based line of ``[header]`` (or of ``key`` inside it, or of a dotted key)."""
    pat = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in header.split("."))
                     + r"\s*\]")
    start = next((n for n, ln in enumerate(lines) if pat.match(ln)), None)
    if start is None:
        return 0
    if key is None:
        return start + 1
    kpat = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for n in range(start + 1, len(lines)):
        if lines[n].lstrip().startswith("["):
            break
        if kpat.match(lines[n]):
            return n + 1
    return start + 1


class _Reader:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def fail(self, line: int, reason: str) -> InputError:
        where = f"{self.path}:{line}" if line else self.path
        return InputError(where, reason)

    def int_of(self, v: Any, line: int, what: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(line, f"{what} must be an integer")
        return v

    def expr(self, v: Any, line: int, what: str, **kw: bool) -> Expr | Condition:
        if not isinstance(v, str):
            raise self.fail(line, f"{what} must be a string expression")
        try:
            return parse_expr(v, **kw)
        except ValueError as exc:
            raise self.fail(line, f"bad expression in {what} {v!r}: {exc}") from None


def read_helpers(path: str, text: str, table: Any) -> dict[str, CopyHelper]:
    r = _Reader(path, text)
    if not isinstance(table, dict):
        raise r.fail(_line_of(r.lines, "framevet.copy_helpers"),
                     "[framevet.copy_helpers] must be a table")
    out: dict[str, CopyHelper] = {}
    for name, spec in table.items():
        line = _line_of(r.lines, "framevet.copy_helpers", name)
        if not isinstance(spec, dict):
            raise r.fail(line, f"copy helper {name} must be an inline table "
                               "{ dst = \"rdi\", src = \"rsi\", len = \"rdx\" }")
        for k in spec:
            if k not in HELPER_KEYS:
                raise r.fail(line, f"copy helper {name}: unknown key {k!r} "
                                   f"(dst, src, len)")
        regs = {}
        for k in HELPER_KEYS:
            v = spec.get(k)
            if v is None:
                if k == "dst":
                    raise r.fail(line, f"copy helper {name}: dst is required")
                continue
            if v not in REGS64:
                raise r.fail(line, f"copy helper {name}: {k} must be a register, not {v!r}")
            regs[k] = v
        out[name] = CopyHelper(name, regs["dst"], regs.get("src"), regs.get("len"))
    return out


def read_protocols(path: str, text: str, function: str, table: Any,
                   helpers: dict[str, CopyHelper]) -> list[Protocol]:
    """``table`` is the value of ``[function.protocol]``: NAME -> spec."""
    r = _Reader(path, text)
    head = f"{function}.protocol"
    if not isinstance(table, dict):
        raise r.fail(_line_of(r.lines, function, "protocol"),
                     f"{head} must be a table of [{head}.NAME] tables")
    return [_protocol(r, function, name, spec, helpers) for name, spec in table.items()]


def _protocol(r: _Reader, function: str, name: str, spec: Any,
              helpers: dict[str, CopyHelper]) -> Protocol:
    header = f"{function}.protocol.{name}"
    hline = _line_of(r.lines, header)
    if not isinstance(spec, dict):
        raise r.fail(hline, f"[{header}] must be a table")

    def line(key: str) -> int:
        return _line_of(r.lines, header, key) or hline

    for k in spec:
        if k not in PROTOCOL_KEYS:
            raise r.fail(line(k), f"[{header}]: unknown key {k!r} "
                                  f"(one of {', '.join(sorted(PROTOCOL_KEYS))})")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise r.fail(line("kind"), f"[{header}]: kind must be flag, seqcount or publish")
    if "area" not in spec:
        raise r.fail(hline, f"[{header}]: area is required")
    area = r.expr(spec["area"], line("area"), "area", allow_ret=True)
    assert isinstance(area, Expr)
    size = r.int_of(spec.get("size"), line("size"), "size")
    if size <= 0:
        raise r.fail(line("size"), "size must be positive")
    guard = _guard(r, header, kind, spec.get("guard"), size, line("guard"))
    data = _data(r, spec.get("data"), size, guard, line("data"))
    when = []
    terms = spec.get("when", [])
    for t in terms if isinstance(terms, list) else [terms]:
        neg = isinstance(t, str) and t.lstrip().startswith("!")
        w = r.expr(t.lstrip()[1:] if neg else t, line("when"), "when", allow_mask=True)
        assert isinstance(w, Condition)
        when.append(replace(w, negated=neg))
    used = spec.get("copy_helpers", [])
    if not isinstance(used, list) or not all(isinstance(u, str) for u in used):
        raise r.fail(line("copy_helpers"), "copy_helpers must be a list of names")
    for u in used:
        if u not in helpers:
            raise r.fail(line("copy_helpers"),
                         f"copy helper {u!r} is not declared in [framevet.copy_helpers]")
    slot = None
    if kind == "publish":
        if "slot" not in spec:
            raise r.fail(hline, f"[{header}]: a publish protocol needs slot")
        s = r.expr(spec["slot"], line("slot"), "slot")
        assert isinstance(s, Expr)
        slot = s
    elif "slot" in spec:
        raise r.fail(line("slot"), "slot applies to kind = \"publish\" only")
    return Protocol(function, name, kind, area, size, guard, data, tuple(when), tuple(used), slot,
                    hline)


def _guard(r: _Reader, header: str, kind: str, g: Any, size: int, line: int) -> Guard | None:
    if kind == "publish":
        if g is not None:
            raise r.fail(line, "guard does not apply to kind = \"publish\"")
        return None
    if not isinstance(g, dict):
        raise r.fail(line, f"[{header}]: guard = {{ offset = N, size = N"
                           f"{', bit = N' if kind == 'flag' else ''} }} is required")
    for k in g:
        if k not in GUARD_KEYS:
            raise r.fail(line, f"guard: unknown key {k!r} (offset, size, bit)")
    off = r.int_of(g.get("offset"), line, "guard.offset")
    gsize = r.int_of(g.get("size", 8), line, "guard.size")
    if gsize not in (1, 2, 4, 8) or off < 0 or off + gsize > size:
        raise r.fail(line, "guard must be 1, 2, 4 or 8 bytes inside the area")
    bit = g.get("bit")
    if kind == "flag":
        bit = r.int_of(bit, line, "guard.bit")
        if not 0 <= bit < 8 * gsize:
            raise r.fail(line, f"guard.bit must be below {8 * gsize}")
    elif bit is not None:
        raise r.fail(line, "a seqcount guard has no bit (odd = write in progress)")
    return Guard(off, gsize, bit)


def _data(r: _Reader, v: Any, size: int, guard: Guard | None,
          line: int) -> tuple[tuple[int, int], ...]:
    if v is None:
        if guard is None:
            return ((0, size),)
        out = []
        if guard.offset:
            out.append((0, guard.offset))
        if guard.offset + guard.size < size:
            out.append((guard.offset + guard.size, size))
        return tuple(out)
    if not isinstance(v, list):
        raise r.fail(line, "data must be a list of [start, end] byte ranges")
    ranges = []
    for item in v:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
                or not 0 <= item[0] < item[1] <= size):
            raise r.fail(line, f"data range {item!r} must be [start, end] inside the area")
        ranges.append((item[0], item[1]))
    return tuple(ranges)


def read_write_order(path: str, text: str, data: dict[str, Any]) -> WriteOrderDecls:
    """Pull the write-order keys out of a parsed sidecar (they are removed from ``data``
    so the per-function readers do not see them)."""
    out = WriteOrderDecls()
    fv = data.get("framevet")
    if isinstance(fv, dict) and "copy_helpers" in fv:
        out.helpers = read_helpers(path, text, fv.pop("copy_helpers"))
    for fname, spec in data.items():
        if fname != "framevet" and isinstance(spec, dict) and "protocol" in spec:
            out.protocols.extend(read_protocols(path, text, fname, spec.pop("protocol"),
                                                out.helpers))
    return out
