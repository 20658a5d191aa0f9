"""Write the rule pages shipped in the package (src/framevet/rules/pages/): one markdown
page per rule id, what SARIF viewers link to as the rule's help.

    python3 tools/rule_docs.py          # rewrite them
    python3 tools/rule_docs.py --check  # exit 1 if any is out of date (the tests do this)
"""

from __future__ import annotations

import sys

from framevet.rules import all_rules
from framevet.rules.registry import DOCS, doc_path


def pages() -> dict[str, str]:
    rules = all_rules()
    out = {f"{rid}.md": r.markdown() for rid, r in sorted(rules.items())}
    index = ["# framevet rules", "", "| id | family | severity | catches |", "|---|---|---|---|"]
    index += [f"| [`{rid}`]({rid}.md) | {r.family} | {r.severity} | {r.summary} |"
              for rid, r in sorted(rules.items())]
    out["index.md"] = "\n".join(index) + "\n"
    return out


def main() -> int:
    want = pages()
    if "--check" in sys.argv:
        stale = [n for n, text in want.items()
                 if not (DOCS / n).is_file() or (DOCS / n).read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)} (run python3 tools/rule_docs.py)")
        return 1 if stale else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, text in want.items():
        (DOCS / name).write_text(text)
    print(f"wrote {len(want)} pages to {DOCS} (e.g. {doc_path('stack-state-mismatch')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
