"""Stage 5: the rules, one module per rule family, registered by id in
:mod:`~framevet.rules.registry`.

Checks that happen during the CFA walk (most objtool rules) are raised by
:mod:`framevet.stack.walker` and only documented here; checks over the finished walk
live in one module each and expose ``check(ctx)``.  Importing this package registers
every rule.
"""

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
    write_order,
)
from framevet.rules.registry import REGISTRY, Rule, all_rules, get, register

__all__ = ["REGISTRY", "Rule", "all_rules", "get", "register"]
