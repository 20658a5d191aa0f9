"""Unwind tables beside the pipeline: ORC generation, reading and writing; DWARF CFI
reading, framevet's CFA table in DWARF terms, and the CFI check and its fixes."""
