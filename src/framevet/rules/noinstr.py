"""noinstr validation (``--noinstr``; objtool 6.1 needs ``--link`` for it).

Raised during the CFA walk (:mod:`framevet.stack.walker`, helpers in
:mod:`framevet.cfg.noinstr`): a function in ``.noinstr.text`` or ``.entry.text``
runs where tracing, KASAN, KCOV and the like must not (early entry, idle, the
NMI path), so it may only call other noinstr code, except inside an
``instrumentation_begin()``/``instrumentation_end()`` window.
"""

from __future__ import annotations

from framevet.rules.registry import Rule, register

_WHY = ("noinstr code runs before RCU, lockdep or the context-tracking state is set up; "
        "an instrumented callee (tracing, KASAN, KCOV, kprobes) can recurse or crash there")
_K = ("kernel",)

LEAVES = register(Rule(
    "call-leaves-noinstr", "noinstr code calls instrumentable code (--noinstr)",
    "a call (or tail call) from a function in .noinstr.text/.entry.text to a function "
    "outside those sections, an indirect call, or a pv_ops call with an instrumentable "
    "target, outside an instrumentation_begin()/end() window; __ubsan_handle_* is allowed",
    _WHY, "mark the callee noinstr (or __always_inline), or wrap the call in "
    "instrumentation_begin()/instrumentation_end()",
    objtool="call to %s() leaves .noinstr.text section", switches="--noinstr --link",
    severity="warning", profiles=_K, family="noinstr"))
RETURN = register(Rule(
    "return-with-instrumentation-enabled", "return inside an instrumentation window (--noinstr)",
    "a ret reached in noinstr code after instrumentation_begin() without the matching "
    "instrumentation_end() on that path",
    "the caller is noinstr code that now runs with instrumentation allowed",
    "close the window (instrumentation_end()) on every path before returning",
    objtool="return with instrumentation enabled", switches="--noinstr --link",
    severity="warning", profiles=_K, family="noinstr"))
PV_OPS = register(Rule(
    "pv-ops-target-instrumented", "a pv_ops slot called from noinstr code has an "
    "instrumentable target (--noinstr)",
    "the object stores a function outside .noinstr.text/.entry.text into a pv_ops slot "
    "(pv_ops, xen_cpu_ops, xen_irq_ops, xen_mmu_ops) that noinstr code calls; printed once per "
    "target before the call's own warning",
    _WHY, "make the target noinstr", objtool="pv_ops[%d]: %s", switches="--noinstr --link",
    severity="warning", profiles=_K, family="noinstr"))
