"""The write-order state machine, shared by the static rule and the emulated check.

A path (or a run) moves through ``off -> open -> done`` (publish: ``off ->
published``).  Each store into the area is judged with the guard state it
leaves: on x86-64 stores become visible in program order, so a data store
outside the open phase, or one instruction that both moves the guard and writes
data, is exactly what a reader can observe.  Locations are opaque integers (an
instruction id or a pc); ``describe`` turns them into ``SYM+0xOFF``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from framevet.cfg.protocols import Protocol


@dataclass(frozen=True)
class Phase:
    state: str = "off"              # off / open / done / published
    opened: int = -1                # where it was opened / published
    closed: int = -1
    pending: tuple[tuple[int, int], ...] = ()   # data stores before the open: (loc, k)
    wrote: bool = False             # data stored on this path


@dataclass(frozen=True)
class Verdict:
    loc: int
    message: str
    key: str


Describe = Callable[[int], str]


class Judge:
    def __init__(self, proto: Protocol, describe: Describe) -> None:
        self.p = proto
        self.describe = describe
        g = proto.guard
        self.gbyte = g.offset + (g.bit or 0) // 8 if g is not None else -1

    def _name(self, k: int) -> str:
        return f"{self.p.name}+{k:#x}"

    def _opener(self, loc: int) -> str:
        g = self.p.guard
        assert g is not None
        if self.p.kind == "seqcount":
            return f"{self.describe(loc)} makes the sequence at +{g.offset:#x} odd"
        return f"{self.describe(loc)} sets bit {g.bit} of +{g.offset:#x}"

    def data_in(self, lo: int, hi: int) -> int | None:
        """First data byte in [lo, hi), or None."""
        for a, b in self.p.data:
            s, e = max(a, lo), min(b, hi)
            if s < e:
                return s
        return None

    def store(self, ph: Phase, loc: int, lo: int, hi: int,
              opens: bool | None) -> tuple[Phase, list[Verdict]]:
        """A store of area bytes [lo, hi); ``opens``: the guard state it leaves
        (True open, False closed, None unknown or not touched)."""
        out: list[Verdict] = []
        k = self.data_in(lo, hi)
        touches = lo <= self.gbyte < hi
        g = self.p.guard
        assert g is not None
        if touches and opens is not None:
            was_open = ph.state == "open"
            if opens and not was_open:
                if k is not None:
                    out.append(Verdict(loc, f"one store both opens the update and writes data "
                                       f"at +{k:#x}; x86 does not order the parts of one store",
                                       "merged-open"))
                ph = replace(ph, state="open", opened=loc, wrote=ph.wrote or k is not None)
                for ploc, pk in ph.pending:
                    out.append(Verdict(ploc, f"store to {self._name(pk)} before the update is "
                                       f"opened ({self._opener(loc)} later)", "before-open"))
                return replace(ph, pending=()), out
            if not opens and was_open:
                if k is not None:
                    out.append(Verdict(loc, f"one store both closes the update and writes data "
                                       f"at +{k:#x}; x86 does not order the parts of one store",
                                       "merged-close"))
                return replace(ph, state="done", closed=loc), out
            if not opens and not was_open and self.p.kind == "seqcount" and k is None \
                    and ph.state == "off":
                out.append(Verdict(loc, "sequence goes from even to even: the odd phase is "
                                   "missing", "even-even"))
        if k is None:
            return ph, out
        ph = replace(ph, wrote=True)
        if ph.state == "off":
            return replace(ph, pending=ph.pending + ((loc, k),)), out
        if ph.state == "done":
            out.append(Verdict(loc, f"store to {self._name(k)} after "
                               f"{self.describe(ph.closed)} closed the update", "after-close"))
        return ph, out

    def publish_store(self, ph: Phase, loc: int, lo: int) -> list[Verdict]:
        if ph.state != "published":
            return []
        slot = self.p.slot.text() if self.p.slot is not None else "its slot"
        return [Verdict(loc, f"store to {self._name(lo)} after {self.describe(ph.opened)} "
                        f"published it to {slot}", "after-publish")]

    def published(self, ph: Phase, loc: int) -> Phase:
        return replace(ph, state="published", opened=loc) if ph.state == "off" else ph

    def at_return(self, ph: Phase, loc: int) -> list[Verdict]:
        out: list[Verdict] = []
        if self.p.kind == "publish":
            return out
        if ph.state == "open":
            out.append(Verdict(loc, f"returns with the update open (opened at "
                               f"{self.describe(ph.opened)})", "returns-open"))
        for ploc, pk in ph.pending:
            out.append(Verdict(ploc, f"store to {self._name(pk)} before the update is opened "
                               f"(it is not opened on this path)", "before-open"))
        return out
