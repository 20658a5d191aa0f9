"""The rule registry: every finding framevet can report, keyed by rule id.

Each rule carries its documentation (what it catches, why it matters, how to
fix it).  Rules that objtool 6.1 also has keep objtool's exact message text.
Checks that happen during the CFA walk (most objtool rules) are raised by
:mod:`framevet.stack.walker`; checks over the finished walk live in one module each and
expose ``check(ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framevet.findings import Finding
    from framevet.pipeline import Context


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str
    what: str
    why: str
    fix: str
    #: objtool 6.1's message (format string) when objtool has the same check
    objtool: str | None = None
    #: objtool switches that enable it ("" = always with --orc/--stackval)
    switches: str = ""
    severity: str = "warning"
    profiles: tuple[str, ...] = ("kernel", "user")
    family: str = "stack"
    check: Callable[[Context], Iterable[Finding]] | None = None

    def doc(self) -> str:
        lines = [f"{self.id}: {self.summary}", "", f"What: {self.what}", f"Why:  {self.why}",
                 f"Fix:  {self.fix}"]
        if self.objtool:
            lines.append(f"objtool 6.1: \"{self.objtool}\"" +
                         (f" (with {self.switches})" if self.switches else ""))
        lines.append(f"Profiles: {', '.join(self.profiles)}; severity: {self.severity}")
        return "\n".join(lines)


REGISTRY: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    if rule.id in REGISTRY:
        raise ValueError(f"duplicate rule id {rule.id}")
    REGISTRY[rule.id] = rule
    return rule


def all_rules() -> dict[str, Rule]:
    _load()
    return REGISTRY


def get(rule_id: str) -> Rule | None:
    _load()
    return REGISTRY.get(rule_id)


_LOADED = False


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from framevet.rules import (  # noqa: F401  (registration side effects)
        callee_saved,
        caller_frame,
        cfi,
        emulation,
        ibt,
        misaligned_call,
        noinstr,
        objtool_input,
        objtool_stack,
        retpoline,
        return_address,
        sls,
        unreachable,
        unret,
    )
