"""The rule registry: every finding framevet can report, keyed by rule id.

Each rule carries its documentation (what it catches, why it matters, how to
fix it).  Rules that objtool 6.1 also has keep objtool's exact message text.
Checks that happen during the CFA walk (most objtool rules) are raised by
:mod:`framevet.stack.walker`; checks over the finished walk live in one module each and
expose ``check(ctx)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
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
    #: the module that registers (and documents) the rule; set by :func:`register`
    module: str = ""
    #: more documentation: how to read the message, worked examples (markdown)
    notes: str = ""

    def doc(self) -> str:
        lines = [f"{self.id}: {self.summary}", "", f"What: {self.what}", f"Why:  {self.why}",
                 f"Fix:  {self.fix}"]
        if self.objtool:
            lines.append(f"objtool 6.1: \"{self.objtool}\"" +
                         (f" (with {self.switches})" if self.switches else ""))
        lines.append(f"Profiles: {', '.join(self.profiles)}; severity: {self.severity}")
        if self.module:
            lines.append(f"Module: {self.module} (fixtures and tests: docs/architecture.md)")
        if self.notes:
            lines += ["", self.notes.replace("`", "")]
        lines.append(f"Doc: {doc_path(self.id)}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The rule's page: what SARIF viewers show as help, shipped in the package."""
        out = [f"# `{self.id}`: {self.summary}", "",
               f"**What it catches.** {self.what}", "",
               f"**Why it matters.** {self.why}", "",
               f"**How to fix it.** {self.fix}", ""]
        if self.objtool:
            switches = f" (with `{self.switches}`)" if self.switches else ""
            out += [f"**objtool 6.1** prints `{self.objtool}`{switches}.", ""]
        if self.notes:
            out += [self.notes, ""]
        out.append(f"Severity {self.severity}; profiles {', '.join(self.profiles)}.")
        fixtures = f"`tests/fixtures/{self.id}/`"
        if self.module:
            path = self.module.replace(".", "/")
            out += ["", f"**Where it lives.** `src/{path}.py`; fixtures {fixtures} if present, "
                    "else the row for this rule in `docs/architecture.md`; "
                    f"`framevet check --explain` shows the paths that lead to a finding."]
        return "\n".join(out) + "\n"


REGISTRY: dict[str, Rule] = {}
#: the rule pages shipped in the package (``tools/rule_docs.py`` writes them)
DOCS = Path(__file__).resolve().parent / "pages"


def doc_path(rule_id: str) -> Path:
    return DOCS / f"{rule_id}.md"


def doc_uri(rule_id: str | None = None) -> str:
    """A ``file:`` URI of a rule's shipped page (of the index without ``rule_id``)."""
    return (doc_path(rule_id) if rule_id else DOCS / "index.md").as_uri()


def register(rule: Rule) -> Rule:
    """Add ``rule``, noting the module that registers it (where its doc lives)."""
    if rule.id in REGISTRY:
        raise ValueError(f"duplicate rule id {rule.id}")
    caller = sys._getframe(1).f_globals.get("__name__", "")
    rule = replace(rule, module=caller)
    REGISTRY[rule.id] = rule
    return rule


def all_rules() -> dict[str, Rule]:
    return REGISTRY


def get(rule_id: str) -> Rule | None:
    return REGISTRY.get(rule_id)
