"""Stage 2: decode executable bytes into compact per-instruction records.

:mod:`~framevet.decode.insn` holds the records and their stack effects;
:mod:`~framevet.decode.state` the stack-state record those effects act upon.
"""
