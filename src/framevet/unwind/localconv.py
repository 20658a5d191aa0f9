"""Local helpers with a calling convention of their own.

Hand-written assembly calls local helpers that use callee-saved registers as
scratch (OpenSSL's ``_mul_1x1``, ``mul4x_internal``, ``__rsaz_512_mulx``,
``_aesni_ctr32_ghash_6x``): every caller saved those registers itself and
writes them again before it reads them.  A helper's CFI that says such a
register keeps its "same value" describes a value no caller will ever look at,
so there is nothing to check (the function must be local or hidden: its callers
are its own library's).  Decided from the callers' code: a register is
*dead for the callers* when, at every place a call to the helper returns to, it
is written before it is read on every path (a return reads it: the caller's own
caller wants it back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import OpAccess

from framevet.decode import insn as d
from framevet.load.elf import STB_LOCAL
from framevet.stack.regflow import TRACKED, successors

if TYPE_CHECKING:
    from framevet.cfg.program import Program

_READS = (OpAccess.READ, OpAccess.READ_WRITE, OpAccess.COND_READ, OpAccess.READ_COND_WRITE)
#: a hidden symbol is called from inside its library only: the calls in sight are
#: taken to show the convention (bn_sqrx8x_internal, called from two objects)
_STV_HIDDEN = 2
#: instructions looked at per return point and register before giving up (= live)
_BUDGET = 256


class CallerLiveness:
    """Per local function: the callee-saved registers dead for all its callers."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self._sites: dict[int, list[int]] | None = None
        self._dead: dict[int, frozenset[int]] = {}
        self._rw: dict[int, tuple[int, int]] = {}

    def dead(self, fi: int) -> frozenset[int]:
        """Hardware numbers of the callee-saved registers no caller of ``fi`` reads
        after the call before writing it (empty unless ``fi`` is a local function
        whose callers are all in sight)."""
        got = self._dead.get(fi)
        if got is None:
            got = self._dead[fi] = self._compute(fi)
        return got

    def _compute(self, fi: int) -> frozenset[int]:
        prog = self.prog
        f = prog.functions[fi]
        if f.sym.bind != STB_LOCAL and f.sym.other & 3 != _STV_HIDDEN:
            return frozenset()
        sites = self._call_sites().get(prog.gid(f.sec, f.start), [])
        if not sites:
            return frozenset()
        return frozenset(r for r in TRACKED
                         if all(self._dead_after(s, r) for s in sites))

    def _call_sites(self) -> dict[int, list[int]]:
        """Entry instruction -> the direct calls to it."""
        if self._sites is None:
            prog = self.prog
            entries = getattr(prog, "_user_call_entry", {})
            sites: dict[int, list[int]] = {}
            for g, k in enumerate(prog.kind):
                if k != d.CALL:
                    continue
                sym = prog.call_dest[g]
                t = prog.gid(sym.shndx, sym.offset) if sym is not None and sym.defined \
                    else entries.get(g, -1)
                if t >= 0:
                    sites.setdefault(t, []).append(g)
            self._sites = sites
        return self._sites

    def _reads_writes(self, g: int) -> tuple[int, int]:
        got = self._rw.get(g)
        if got is None:
            info = d.INFO.info(self.prog.instruction(g))
            reads = 0
            for u in info.used_registers():
                if u.access in _READS:
                    hw = d.hw_register(u.register)
                    if hw >= 0:
                        reads |= 1 << hw
            for m in info.used_memory():
                for reg in (m.base, m.index):
                    hw = d.hw_register(reg)
                    if hw >= 0:
                        reads |= 1 << hw
            got = self._rw[g] = (reads, d.gprs_written(info))
        return got

    def _dead_after(self, call: int, r: int) -> bool:
        """``r`` is written before it is read on every path from the return point of
        ``call`` (within the caller's function)."""
        prog = self.prog
        fi = prog.func[call]
        start = prog.next_same_sec(call)
        if start < 0 or fi < 0:
            return False
        seen: set[int] = set()
        work = [start]
        budget = _BUDGET
        while work:
            g = work.pop()
            if g in seen:
                continue
            seen.add(g)
            budget -= 1
            if budget < 0 or prog.func[g] != fi:
                return False
            k = prog.kind[g]
            if k == d.RETURN or k == d.JUMP_DYNAMIC:
                return False
            reads, writes = self._reads_writes(g)
            if reads >> r & 1:
                return False
            if writes >> r & 1:
                continue
            if k in (d.JUMP_COND, d.JUMP_UNCOND) and prog.jump_dest[g] < 0:
                return False          # a tail call: its target may read r
            work.extend(successors(prog, g))
        return True
