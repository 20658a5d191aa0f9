"""How much of the executable sections the walk reached (``check --stats``)."""

from __future__ import annotations

from dataclasses import dataclass

from framevet.cfg.program import Program
from framevet.decode import insn as d


@dataclass(frozen=True, slots=True)
class Coverage:
    #: instructions the walk reached
    walked: int
    #: instructions decoded but never reached, padding (nop, int3) apart
    unreached: int
    #: nop and int3 padding never reached
    padding: int
    #: bytes of executable sections not decoded: data, and code that is no x86-64
    not_code_bytes: int

    def text(self) -> str:
        code = self.walked + self.unreached
        share = 100.0 * self.walked / code if code else 100.0
        return (f"{self.walked} instructions walked ({share:.2f} % of the code), "
                f"{self.unreached} decoded but never reached (and {self.padding} of padding), "
                f"{self.not_code_bytes} bytes treated as data or left out")


def coverage(prog: Program, visited: bytearray) -> Coverage:
    """The walk's reach over ``prog``'s instructions (``visited``: the walk's marks)."""
    walked = len(visited) - visited.count(0)
    padding = sum(1 for g, v in enumerate(visited)
                  if not v and prog.kind[g] in (d.NOP, d.TRAP))
    return Coverage(walked, len(visited) - walked - padding, padding, prog.not_code_bytes)
