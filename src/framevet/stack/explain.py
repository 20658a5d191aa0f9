"""Why a finding happened: the path the walk took to it, with the state at every step.

The walk records, for every instruction, the instruction it first reached it from
(``WalkResult.pred``); following those links back gives the first path to any
instruction, and every instruction on it carries the state that path had there.
A stack-state mismatch also knows the instruction the second path came from, and
that path's state; the two chains meet where the paths split.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from typing import Any

from framevet.cfg.disasm import Namer, insn_text
from framevet.cfg.program import Program
from framevet.decode import insn as d
from framevet.decode.state import CFA, DRAP, DRAP_REG, NREGS, RA, TYPE, UNDEFINED
from framevet.stack.walkresult import WalkResult

_TYPES = {1: "regs", 2: "regs-partial"}
_BRANCHES = (d.JUMP_COND, d.JUMP_UNCOND, d.JUMP_DYNAMIC, d.JUMP_DYNAMIC_COND, d.CALL,
             d.CALL_DYNAMIC, d.RETURN)
#: paths longer than this show only the steps that change the state or branch
_KEEP_RUN = 2


def describe_state(cfi: tuple[int, ...] | None) -> str:
    """A recorded state in the CFA table's terms: ``cfa=rsp+16 rbx=cfa-16``."""
    if cfi is None:
        return "(not reached)"
    base, off = cfi[0], cfi[1]
    if base == UNDEFINED:
        parts = ["cfa=undefined"]
    else:
        parts = [f"cfa={d.REG_NAMES[base] if 0 <= base < 16 else '?'}{off:+d}"]
    for r in range(NREGS):
        b, o = cfi[9 + 2 * r], cfi[10 + 2 * r]
        if b == UNDEFINED or (r == RA and b == CFA and o == -8):
            continue
        name = d.REG_NAMES[r]
        if b == CFA:
            parts.append(f"{name}=cfa{o:+d}")
        elif 0 <= b < 16:
            parts.append(f"{name}={d.REG_NAMES[b]}")
        else:
            parts.append(f"{name}=[{'rsp' if b == -3 else 'rbp'}{o:+d}]")
    if cfi[TYPE] in _TYPES:
        parts.append(f"type={_TYPES[cfi[TYPE]]}")
    if cfi[DRAP]:
        parts.append(f"drap={d.REG_NAMES[cfi[DRAP_REG]]}")
    return " ".join(parts)


def chain(result: WalkResult, g: int) -> list[int]:
    """The first path the walk took to ``g``: instructions from a walk's start."""
    out: list[int] = []
    seen: set[int] = set()
    pred = result.pred
    while g >= 0 and g not in seen and len(pred) > g:
        out.append(g)
        seen.add(g)
        g = pred[g]
    out.reverse()
    return out


def explain(prog: Program, result: WalkResult, namer: Namer, g: int, via: int = -1,
            arriving: tuple[int, ...] | None = None) -> dict[str, Any] | None:
    """The path(s) to instruction ``g`` as plain data (the report renders them)."""
    if g < 0 or g >= len(result.pred) or result.cfi[g] is None:
        return None
    first = chain(result, g)
    if via < 0:
        return {"paths": [_path(prog, result, namer, "the path the walk took first", first,
                                None)]}
    second = chain(result, via)
    split = 0
    while (split < len(first) - 1 and split < len(second)
           and first[split] == second[split]):
        split += 1
    split = max(split - 1, 0)
    return {
        "split": namer.place(prog, first[split]),
        "paths": [
            _path(prog, result, namer, "path 1 (walked first)", first[split:], None),
            _path(prog, result, namer, "path 2", [*second[split:], g], arriving),
        ],
    }


def _path(prog: Program, result: WalkResult, namer: Namer, label: str, gids: list[int],
          last_state: tuple[int, ...] | None) -> dict[str, Any]:
    states = [result.cfi[x] for x in gids]
    if last_state is not None:
        states[-1] = last_state
    keep = _kept(prog, gids, states)
    steps: list[dict[str, Any]] = []
    run = 0
    for i, x in enumerate(gids):
        if not keep[i]:
            run += 1
            continue
        if run:
            steps.append({"elided": run})
            run = 0
        step: dict[str, Any] = {
            "where": namer.place(prog, x), "section": prog.section_name(prog.sec_of[x]),
            "offset": prog.off[x], "insn": insn_text(prog, x, namer),
            "state": describe_state(states[i])}
        if prog.kind[x] == d.JUMP_COND and i + 1 < len(gids):
            step["note"] = "taken" if prog.jump_dest[x] == gids[i + 1] else "not taken"
        elif (x in prog.alts and i + 1 < len(gids)
              and prog.sec_of[gids[i + 1]] != prog.sec_of[x]):
            step["note"] = "patch site: an alternative replaces it"
        steps.append(step)
    return {"label": label, "steps": steps}


def _kept(prog: Program, gids: list[int], states: list[Any]) -> list[bool]:
    """Which steps a reader needs: the ends, branches, and every change of state."""
    n = len(gids)
    keep = [False] * n
    for i in range(n):
        if (i < 1 or i >= n - 2 or prog.kind[gids[i]] in _BRANCHES
                or (i + 1 < n and prog.sec_of[gids[i + 1]] != prog.sec_of[gids[i]])
                or (i + 1 < n and states[i + 1] != states[i])
                or (i > 0 and states[i] != states[i - 1])):
            keep[i] = True
    # a short gap is cheaper to show than to describe
    i = 0
    while i < n:
        if keep[i]:
            i += 1
            continue
        j = i
        while j < n and not keep[j]:
            j += 1
        if j - i <= _KEEP_RUN:
            keep[i:j] = [True] * (j - i)
        i = j
    return keep


def listing(prog: Program, result: WalkResult, namer: Namer, fi: int,
            source: Callable[[str, int], tuple[str, int] | None]) -> list[dict[str, Any]]:
    """Function ``fi`` (with its ``.cold`` part) instruction by instruction, as the HTML
    report shows it: address, bytes, instruction, the state before it, source line."""
    f = prog.functions[fi]
    parts = {fi} | ({f.child} if f.child >= 0 else set())
    rows: list[dict[str, Any]] = []
    for g in range(len(prog.off)):
        if prog.func[g] not in parts:
            continue
        sec = prog.elf.sections[prog.sec_of[g]]
        off = prog.off[g]
        cfi = result.cfi[g] if g < len(result.cfi) else None
        src = source(sec.name, off)
        text = linecache.getline(src[0], src[1]).strip() if src else ""
        rows.append({
            "section": sec.name, "offset": off, "address": sec.addr + off,
            "where": namer.place(prog, g),
            "bytes": sec.data[off:off + prog.length[g]].hex(" "),
            "insn": insn_text(prog, g, namer), "state": describe_state(cfi),
            "cfa": cfi[1] if cfi is not None and cfi[0] != UNDEFINED else None,
            "line": src[1] if src else None, "source": text,
        })
    return rows
