"""Findings as text: the compiler convention editors and CI problem matchers parse.

One line per finding (:meth:`Finding.text`), sorted by input, then source line or
address.  Several findings at one instruction usually have one cause: a wrong
frame at a ``ret`` also leaves callee-saved registers and the return address
wrong.  Those follow-ons are folded under the stack-state finding that explains
them (a count and their rule ids; ``--explain`` lists them, and the paths that
lead to the instruction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from framevet import rules
from framevet.findings import Finding

_SEVERITY_COLOUR = {"error": "\033[1;31m", "warning": "\033[1;35m", "note": "\033[1;36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"
#: a finding of this family at an instruction is the root cause of the others there
ROOT_FAMILY = "stack"
#: families whose findings at the root's instruction follow from it
FOLLOW_ON_FAMILIES = frozenset({"stack", "framevet"})


@dataclass
class Folded:
    """A finding and the follow-on findings at the same instruction that it explains."""

    root: Finding
    follow_ons: list[Finding] = field(default_factory=list)


def sort_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Inputs in the order given, then by source line, else by address; findings at
    one place keep the order they were found in."""
    rank: dict[str, int] = {}
    for f in findings:
        rank.setdefault(f.file, len(rank))

    def key(f: Finding) -> tuple[int, int, str, int, int]:
        addr = f.location.address if f.location is not None else -1
        if f.source is not None:
            return (rank[f.file], 0, f.source[0], f.source[1], addr)
        return (rank[f.file], 1, "", addr, 0)

    return sorted(findings, key=key)


def _place(f: Finding) -> tuple[str, str, int] | None:
    loc = f.location
    return (f.file, loc.section, loc.offset) if loc is not None else None


def fold(findings: Sequence[Finding]) -> list[Folded]:
    """Group each run of findings at one instruction under its first stack-state
    finding (findings of other families there stay on their own); then each group
    whose root follows from another group's root (:attr:`Finding.follows`: reached
    only through its bad state) joins that group.  ``findings`` must be sorted
    (:func:`sort_findings`), so findings at one place are neighbours."""
    registry = rules.all_rules()

    def family(f: Finding) -> str:
        r = registry.get(f.rule)
        return r.family if r is not None else ""

    out: list[Folded] = []
    i = 0
    while i < len(findings):
        key = _place(findings[i])
        j = i + 1
        while key is not None and j < len(findings) and _place(findings[j]) == key:
            j += 1
        group = findings[i:j]
        root = next((f for f in group if family(f) == ROOT_FAMILY), None)
        for f in group:
            if f is root:
                out.append(Folded(f, [o for o in group
                                      if o is not root and family(o) in FOLLOW_ON_FAMILIES]))
            elif root is None or family(f) not in FOLLOW_ON_FAMILIES:
                out.append(Folded(f))
        i = j
    return _join_follow_ons(out)


def _join_follow_ons(items: list[Folded]) -> list[Folded]:
    by_place: dict[tuple[str, str, int], Folded] = {}
    for item in items:
        place = _place(item.root)
        if place is not None:
            by_place.setdefault(place, item)

    def target(item: Folded) -> Folded:
        seen = {id(item)}
        while item.root.follows is not None:
            nxt = by_place.get((item.root.file, *item.root.follows))
            if nxt is None or id(nxt) in seen:
                break
            seen.add(id(nxt))
            item = nxt
        return item

    final = [target(item) for item in items]
    for item, to in zip(items, final, strict=True):
        if to is not item:
            to.follow_ons.extend([item.root, *item.follow_ons])
    return [item for item, to in zip(items, final, strict=True) if to is item]


def finding_line(f: Finding, colour: bool = False) -> str:
    line = f.text()
    if not colour:
        return line
    head, sep, rest = line.partition(f" {f.severity}:")
    sev = f"{_SEVERITY_COLOUR.get(f.severity, _BOLD)}{f.severity}:{_RESET}"
    tail = f" [{f.rule}]"
    body = rest[:-len(tail)] if rest.endswith(tail) else rest
    return f"{_BOLD}{head}{_RESET}{sep and ' '}{sev}{body} {_DIM}[{f.rule}]{_RESET}"


def detail_lines(f: Finding) -> list[str]:
    """What a finding carries beyond its line: an emulation trace, corrected CFI."""
    out = [f"    {t}" for t in f.details.get("trace") or ()]
    fix = f.details.get("fix")
    if fix:
        out.append("    corrected CFI here:")
        out.extend(f"        {t}" for t in fix)
    fix_end = f.details.get("fix_end")
    if fix_end:
        at = f.details.get("fix_end_at")
        out.append(f"    and before {at}:" if at else "    and after it:")
        out.extend(f"        {t}" for t in fix_end)
    return out


def explain_lines(f: Finding) -> list[str]:
    """The paths that lead to a finding (``--explain``), one instruction per line with
    the state before it, as ``framevet cfa`` would print it there."""
    ex = f.details.get("explain")
    if not ex:
        return []
    out: list[str] = ["    how the walk got here (the state before each instruction):"]
    if ex.get("split"):
        out[0] = (f"    two paths reach it with different states; they split at "
                  f"{ex['split']} (the state before each instruction):")
    for path in ex.get("paths", ()):
        out.append(f"    {path['label']}:")
        heads = [f"{s['where']}: {s['insn']}" for s in path["steps"] if not s.get("elided")]
        width = max((len(h) for h in heads), default=0) + 2
        for s in path["steps"]:
            if s.get("elided"):
                out.append(f"      ... {s['elided']} instructions, state unchanged")
                continue
            head = f"{s['where']}: {s['insn']}"
            note = f"  ({s['note']})" if s.get("note") else ""
            out.append(f"      {head:<{width}}{s['state']}{note}")
    return out


def _follow_on_lines(item: Folded, explain: bool) -> list[str]:
    n = len(item.follow_ons)
    if not n:
        return []
    s = "s" if n > 1 else ""
    here = _place(item.root)
    elsewhere = list(dict.fromkeys(o.location.text() for o in item.follow_ons
                                   if o.location is not None and _place(o) != here))
    if not elsewhere:
        where = "at this instruction"
    else:
        shown = ", ".join(elsewhere[:3]) + (", ..." if len(elsewhere) > 3 else "")
        where = f"reached only through this state, at {shown}"
    if not explain:
        ids = ", ".join(dict.fromkeys(o.rule for o in item.follow_ons))
        return [f"    + {n} follow-on finding{s} {where} ({ids}); --explain lists them"]
    out = [f"    {n} follow-on finding{s} {where}:"]
    for o in item.follow_ons:
        at = ""
        if _place(o) != here and o.location is not None:
            line = f" (line {o.source[1]})" if o.source is not None else ""
            at = f"{o.location.text()}{line}: "
        out.append(f"      {at}{o.severity}: {o.message} [{o.rule}]")
    return out


def render_text(findings: Sequence[Finding], explain: bool = False,
                colour: bool = False) -> str:
    lines: list[str] = []
    for item in fold(findings):
        lines.append(finding_line(item.root, colour))
        lines.extend(detail_lines(item.root))
        if explain:
            lines.extend(explain_lines(item.root))
        lines.extend(_follow_on_lines(item, explain))
    return "".join(ln + "\n" for ln in lines)


def summary(findings: Sequence[Finding], inputs: int, suppressed: int = 0) -> str:
    """One line: how many findings of each severity, in how many inputs."""
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning",
                                                                        "note")}
    parts = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
    folded = sum(len(x.follow_ons) for x in fold(sort_findings(findings)))
    extra = []
    if folded:
        extra.append(f"{folded} folded as follow-ons")
    if suppressed:
        extra.append(f"{suppressed} suppressed")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return (f"framevet: {', '.join(parts) if parts else 'no findings'} in {inputs} "
            f"input{'s' if inputs != 1 else ''}{tail}")
