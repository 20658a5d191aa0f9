"""Stage 4: the stack-state walk.

The per-instruction CFA walk (:mod:`~framevet.stack.walker`), the kernel and user
stack models it applies, and the register dataflow the register rules use.
"""
